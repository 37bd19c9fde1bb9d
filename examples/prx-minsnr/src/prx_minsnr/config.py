"""The ``[minsnr]`` recipe table."""
from __future__ import annotations

import attrs

from prx_core.recipe.constraints import greater_than, setting


@attrs.frozen(kw_only=True)
class MinSnrConfig:
    """``[minsnr]``: ``gamma`` is the largest weight a sample's x0 error may get (Min-SNR's
    default, 5, caps every noise level below t = 0.45)."""

    gamma: float = setting(5.0, greater_than(0))
