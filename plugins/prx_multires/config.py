"""The ``[multires]`` recipe table: the ordered phases of a resolution schedule."""
from __future__ import annotations

from typing import ClassVar

import attrs

from prx_core.recipe.constraints import DISTINCT, NON_EMPTY_ARRAY, NON_EMPTY_STRING, Rule, at_least, setting


@attrs.define(kw_only=True)
class PhaseConfig:
    """One phase: ``resolution`` (px, a multiple of the patch), ``batch_size`` (global),
    ``steps``, and ``disabled`` techniques (names from ``plugins``) that are off in it."""

    name: str = setting(attrs.NOTHING, NON_EMPTY_STRING)
    resolution: int = setting(attrs.NOTHING, at_least(1))
    batch_size: int = setting(attrs.NOTHING, at_least(1))
    steps: int = setting(attrs.NOTHING, at_least(1))
    disabled: list[str] = setting(attrs.Factory(list), DISTINCT)


@attrs.define(kw_only=True)
class MultiresConfig:
    """``[multires]``: the ordered list of phases; the run's length is the sum of their steps."""

    phases: list[PhaseConfig] = setting(attrs.Factory(list), NON_EMPTY_ARRAY)

    RULES: ClassVar = (
        Rule(("phases",), "phase names are distinct",
             lambda c: None if len({p.name for p in c.phases}) == len(c.phases) else
             f"names must be distinct, got {[p.name for p in c.phases]}."),
    )
