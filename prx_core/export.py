"""A run's EMA weights as one safetensors file, for sampling on one device.

``prx export RUN --out ema.safetensors`` reads a checkpoint in either layout (one file, or the
FSDP2 shards of torch.distributed.checkpoint, consolidated here on the CPU of one process) and
writes the full EMA tensors, with the run's resolved recipe and the step in the file's metadata:
the file alone is enough for ``prx sample ema.safetensors`` (prx_core.inference), and any
safetensors reader gets plain tensors named like the denoiser's parameters.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prx_core.checkpoint import resolve_checkpoint
from prx_core.errors import CheckpointError
from prx_core.train.state import read_ema

RECIPE_KEY = "prx.recipe"  # the resolved recipe TOML of the run
STEP_KEY = "prx.step"


def export_ema(checkpoint: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, int]:
    """Write the EMA weights of ``checkpoint`` (a run folder, its checkpoints/ folder or a step
    folder) to ``out``; returns the file and the checkpoint's step. Written to a temporary name
    and renamed, so ``out`` is either complete or absent."""
    folder = resolve_checkpoint(checkpoint)
    recipe = folder.parent.parent / "recipe.toml"
    if not recipe.is_file():
        raise CheckpointError(f"{recipe} not found: an export carries the run's recipe.toml. Pass a checkpoint "
                              f"inside its run folder (runs/NAME/checkpoints/step_XXXXXXXX).")
    ema, step = read_ema(folder)
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in ema.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, tmp, metadata={RECIPE_KEY: recipe.read_text(), STEP_KEY: str(step)})
    os.replace(tmp, out)
    return out, step


def read_export(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str, int]:
    """The EMA tensors, recipe TOML text and step of a file written by :func:`export_ema`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a foreign or truncated file
        raise CheckpointError(f"{path} could not be read as a safetensors file ({err}).") from None
    if RECIPE_KEY not in metadata or STEP_KEY not in metadata:
        raise CheckpointError(f"{path} was not written by `prx export` (its metadata has no {RECIPE_KEY} and "
                              f"{STEP_KEY}); sample from the run folder instead.")
    return tensors, metadata[RECIPE_KEY], int(metadata[STEP_KEY])
