"""Reading a diffusers ``PRXTransformer2DModel`` checkpoint: its config and weights.

``[model] init = "diffusers:PATH_OR_ID"`` starts a run from one. ``PATH_OR_ID`` is a local
folder or a Hugging Face Hub id, and may be a transformer folder (``config.json`` and
``diffusion_pytorch_model.safetensors``, possibly sharded) or a whole pipeline folder, whose
``transformer/`` sub-folder is used. Only ``json`` and ``safetensors`` are needed to read it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import torch
from safetensors.torch import load_file

from prx_core.diffusers_format.mapping import denoiser_config_of, from_diffusers_state
from prx_core.errors import CheckpointError, WeightsNotFoundError
from prx_core.model.config import DenoiserConfig

PREFIX = "diffusers:"
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = WEIGHTS + ".index.json"


@attrs.frozen
class DiffusersCheckpoint:
    """A located checkpoint: its folder, its prx shape, and the raw ``config.json``."""

    folder: Path
    config: DenoiserConfig
    raw_config: dict

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under prx's names (fp32), read from the (possibly sharded) safetensors."""
        index = self.folder / WEIGHTS_INDEX
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / WEIGHTS).is_file():
            files = [WEIGHTS]
        else:
            raise CheckpointError(f"{self.folder} has a config.json but no {WEIGHTS} (nor a sharded {WEIGHTS_INDEX}).")
        tensors: dict[str, torch.Tensor] = {}
        for name in files:
            tensors.update(load_file(str(self.folder / name)))
        state = from_diffusers_state(tensors, str(self.folder))
        return {k: v.float() for k, v in state.items()}


def is_diffusers_spec(init: str) -> bool:
    return init.startswith(PREFIX)


def _hub_folder(repo_id: str, download: bool) -> Path | None:
    """The snapshot folder of a Hub id (downloaded when allowed), None when not available."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline or not download,
                                      allow_patterns=["*.json", "*.safetensors", "transformer/*"]))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def locate(spec: str, download: bool = True) -> DiffusersCheckpoint | None:
    """Find and read the config of ``diffusers:PATH_OR_ID``. Returns None only for a Hub id that
    is not on this machine when ``download`` is False (``--dry-run`` checks what it can)."""
    where = spec[len(PREFIX):]
    if not where:
        raise CheckpointError(f'[model] init = "{spec}" names no checkpoint: write "diffusers:/path/to/folder" or '
                              '"diffusers:ORG/NAME" (a Hugging Face Hub id).')
    path = Path(where).expanduser()
    if path.exists() or where.startswith((".", "/", "~")):
        if not path.is_dir():
            raise CheckpointError(f'[model] init = "{spec}": {path} is not a folder. Point it at a folder written by '
                                  "`prx export --format diffusers` or a diffusers PRXTransformer2DModel folder.")
        folder = path
    else:
        folder = _hub_folder(where, download)
        if folder is None:
            if not download:
                return None
            raise WeightsNotFoundError(
                f'[model] init = "{spec}": {where} is neither a local folder nor a Hub id available on this machine. '
                f"Download it with `hf download {where}` or point init at a local folder."
            )
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f'[model] init = "{spec}": {folder} has no config.json (nor transformer/config.json); it '
                              "is not a diffusers model folder.")
    raw = json.loads(config_file.read_text())
    return DiffusersCheckpoint(folder, denoiser_config_of(raw, str(folder)), raw)
