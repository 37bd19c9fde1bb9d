"""The ``[tread_guidance]`` recipe table."""
from __future__ import annotations

import attrs

from prx_core.recipe.constraints import at_least, setting


@attrs.frozen(kw_only=True)
class TreadGuidanceConfig:
    """``scale``: w in ``routed + w * (dense - routed)``; 3.5 in the PRX recipe, 1 is plain dense."""

    scale: float = setting(3.5, at_least(0))
