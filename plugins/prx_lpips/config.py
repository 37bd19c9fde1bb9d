"""The ``[lpips]`` recipe table (defaults: the PRX recipe's)."""
from __future__ import annotations

from typing import Literal

import attrs

from prx_core.recipe.constraints import NON_EMPTY_STRING, at_least, between, setting


@attrs.frozen(kw_only=True)
class LpipsConfig:
    """``teacher``: ``"lpips:vgg"`` is calibrated LPIPS (VGG16 + the lpips package's linear
    heads); a CNN such as ``"efficientnet-lite0"`` gives an uncalibrated LPIPS-style distance
    (uniform channel weights on its normalised multi-stage features; not LPIPS' numbers).
    ``scale``: both images are bilinearly downsampled by it, the short side kept at least
    ``min_side`` px so that the deepest stages stay non-empty at tiny resolutions.
    ``gate_t_clean``: apply only to samples with ``1 - t >= gate_t_clean`` (PixelGen: 0.3; 0: always).
    ``resize``: ``"bilinear"`` halves without antialias as PRX does (``F.interpolate(scale_factor=
    0.5, mode="bilinear")``); ``"bilinear-antialias"`` low-pass filters first.
    """

    teacher: str = setting("lpips:vgg", NON_EMPTY_STRING)
    weight: float = setting(0.1, at_least(0))
    scale: float = setting(0.5, between(0, 1, low_strict=True))
    min_side: int = setting(32, at_least(1))
    gate_t_clean: float = setting(0.0, between(0, 1))
    resize: Literal["bilinear", "bilinear-antialias", "nearest"] = "bilinear"
