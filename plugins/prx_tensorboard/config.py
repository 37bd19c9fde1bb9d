"""The ``[tensorboard]`` recipe table."""
from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class TensorBoardConfig:
    """``log_dir``: where the event files go (default "": ``tensorboard/`` in the run folder, so
    ``tensorboard --logdir runs`` shows every run); a resumed run writes into the same folder.
    ``images``: also write each sample grid (with its prompts as text)."""

    log_dir: str = ""
    images: bool = True
