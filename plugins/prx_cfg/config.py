"""The ``[cfg]`` recipe table."""
from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class CFGConfig:
    """``scale``: w in ``uncond + w * (cond - uncond)``. The default 4.0 sits in the usual range
    for text-to-image models at 512 px (about 3 to 7); 1 is plain conditional sampling.
    ``interval``: the noise levels [t_lo, t_hi] (t = 1 is noise) where guidance applies; the
    conditional prediction is used outside; e.g. ``[0.1, 0.9]`` leaves the first and last stretch
    of sampling unguided, where guidance mostly costs diversity and detail."""

    scale: float = 4.0
    interval: tuple[float, float] = (0.0, 1.0)
