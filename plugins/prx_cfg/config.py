"""The ``[cfg]`` recipe table."""
from __future__ import annotations

from typing import ClassVar

import attrs

from prx_core.recipe.constraints import Rule, at_least, between, each, setting


@attrs.frozen(kw_only=True)
class CFGConfig:
    """``scale``: w in ``uncond + w * (cond - uncond)``. The default 4.0 sits in the usual range
    for text-to-image models at 512 px (about 3 to 7); 1 is plain conditional sampling.
    ``interval``: the noise levels [t_lo, t_hi] (t = 1 is noise) where guidance applies; the
    conditional prediction is used outside; e.g. ``[0.1, 0.9]`` leaves the first and last stretch
    of sampling unguided, where guidance mostly costs diversity and detail."""

    scale: float = setting(4.0, at_least(0))
    interval: tuple[float, float] = setting((0.0, 1.0), each(between(0, 1)))

    RULES: ClassVar = (
        Rule(("interval",), "interval = [t_lo, t_hi] with t_lo <= t_hi",
             lambda c: None if c.interval[0] <= c.interval[1] else
             "t_lo must not exceed t_hi (noise levels, 1 = noise); use [0.0, 1.0] to guide at every step."),
    )
