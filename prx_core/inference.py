"""Loading a trained run for sampling and evaluation on one device."""
from __future__ import annotations

import tempfile
from pathlib import Path

import attrs
import torch

from prx_core.checkpoint import resolve_checkpoint
from prx_core.distributed import pick_device
from prx_core.errors import CheckpointError
from prx_core.export import read_export
from prx_core.model.denoiser import PRXDenoiser
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.loader import load_recipe
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry, discover
from prx_core.techniques import TechniqueSet
from prx_core.text import TextEncoder, load_text_encoder
from prx_core.train.state import read_ema
from prx_core.train.trainer import autocast_dtype
from prx_core.types import Guidance, RunContext


@attrs.frozen
class Inference:
    recipe: Recipe
    model: PRXDenoiser
    text_encoder: TextEncoder
    guidance: Guidance | None
    autocast: torch.dtype | None
    resolution: int
    step: int


def load_for_sampling(checkpoint: str | Path, overrides: tuple[str, ...] = (), device: str = "auto",
                      registry: Registry | None = None) -> Inference:
    """EMA weights of the checkpoint, the run's recipe (from the run folder), its text encoder and
    the guidance its techniques define. ``checkpoint`` is a run folder, a checkpoint in it (one
    file or FSDP2 shards) or a ``prx export`` safetensors file, which carries its recipe.
    ``overrides`` (``table.key=value``) adjust the recipe, e.g. ``sample.steps=50`` or
    ``plugins=[...]`` to try another guidance."""
    registry = registry or discover()
    if Path(checkpoint).suffix == ".safetensors":
        folder = Path(checkpoint)
        weights, recipe_text, step = read_export(folder)
        with tempfile.TemporaryDirectory() as tmp:  # recipes are read from files
            recipe_path = Path(tmp) / "recipe.toml"
            recipe_path.write_text(recipe_text)
            recipe = load_recipe(recipe_path, overrides, registry)
    else:
        folder = resolve_checkpoint(checkpoint)
        recipe_path = folder.parent.parent / "recipe.toml"
        if not recipe_path.is_file():
            raise CheckpointError(f"{recipe_path} not found: a checkpoint is read together with the recipe.toml of "
                                  f"its run folder. Pass the run folder (runs/NAME) or a checkpoint inside it.")
        recipe = load_recipe(recipe_path, overrides, registry)
        weights, step = read_ema(folder)
    dev = pick_device(device if device != "auto" else recipe.train.device)
    text_encoder = load_text_encoder(recipe.text, dev)
    config = model_config(recipe, text_encoder.dim)
    model = PRXDenoiser(config, init=recipe.model.init_scheme).to(dev)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith("extras.") for k in missing):
        raise CheckpointError(f"checkpoint {folder} does not match the recipe's model ({recipe.model.preset}): "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}.")
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, device=dev), config)
    phases = plan_phases(recipe, techniques)
    last = phases[-1]
    _, router = techniques.call_one("prx_routing", phase=last, model_config=config)
    _, guidance = techniques.call_one("prx_guidance", sample_config=recipe.sample, model_config=config, router=router)
    return Inference(recipe, model.eval(), text_encoder, guidance, autocast_dtype(recipe.train.precision, dev),
                     last.resolution, step)


def run_folder_of(checkpoint: str | Path) -> Path:
    """The folder where outputs for ``checkpoint`` go: its run folder, or beside an export."""
    source = Path(checkpoint)
    return source.parent if source.suffix == ".safetensors" else resolve_checkpoint(source).parent.parent
