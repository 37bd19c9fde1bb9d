"""The ``[data]`` table: where training images and captions come from and how they are batched."""
from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class DataConfig:
    """``resolution`` is the target side (the token count of a square image of that side);
    ``source = "scenes"`` uses the embedded procedural scene generator."""

    source: str = "scenes"
    resolution: int = 512
    workers: int = 0
