"""The ``[multires]`` recipe table: the ordered phases of a resolution schedule."""
from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class PhaseConfig:
    """One phase: ``resolution`` (px, a multiple of the patch), ``batch_size`` (global),
    ``steps``, and ``disabled`` techniques (names from ``plugins``) that are off in it."""

    name: str
    resolution: int
    batch_size: int
    steps: int
    disabled: list[str] = attrs.Factory(list)


@attrs.define(kw_only=True)
class MultiresConfig:
    """``[multires]``: the ordered list of phases; the run's length is the sum of their steps."""

    phases: list[PhaseConfig] = attrs.Factory(list)
