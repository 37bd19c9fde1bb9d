"""The ``[wandb]`` recipe table."""
from __future__ import annotations

from typing import Literal

import attrs


@attrs.frozen(kw_only=True)
class WandbConfig:
    """``project``, ``entity`` (default "": your W&B default entity), ``name`` (default "": the
    run folder relative to ``[train] runs_dir``), ``group``, ``tags`` and ``notes`` as in
    ``wandb.init``. ``mode``: "online", "offline" (files only, upload later with ``wandb sync``) or
    "disabled"; "" leaves it to W&B (``WANDB_MODE``, else online). ``dir``: where W&B writes its
    local files (default "": the run folder, under ``wandb/``). ``images``: also log the sample grids."""

    project: str = "prx"
    entity: str = ""
    name: str = ""
    group: str = ""
    tags: tuple[str, ...] = ()
    notes: str = ""
    mode: Literal["", "online", "offline", "disabled"] = ""
    dir: str = ""
    images: bool = True
