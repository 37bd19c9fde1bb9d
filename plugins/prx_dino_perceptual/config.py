"""The ``[dino_perceptual]`` recipe table (defaults: the PRX recipe's)."""
from __future__ import annotations

from typing import Literal

import attrs

from prx_core.recipe.constraints import NON_EMPTY_STRING, at_least, between, setting


@attrs.frozen(kw_only=True)
class DinoPerceptualConfig:
    """``teacher``: DINOv2 ViT-B/14 with registers by default; a CNN such as
    ``"efficientnet-lite0"`` stands in on machines without it (its stride-16 feature map gives
    the tokens). Both images are resized to ``size`` x ``size`` ("pooled full image") by
    ``resize`` (PRX: ``"bilinear"``, no antialias), then with ``clamp`` (PRX: true) mapped to [0, 1]
    and clipped there, so the prediction's out-of-range values reach the teacher as black or white
    (and pass no gradient). ``gate_t_clean`` as for LPIPS."""

    teacher: str = setting("hf:facebook/dinov2-with-registers-base", NON_EMPTY_STRING)
    weight: float = setting(0.01, at_least(0))
    size: int = setting(224, at_least(1))
    gate_t_clean: float = setting(0.0, between(0, 1))
    resize: Literal["bilinear", "bilinear-antialias", "nearest"] = "bilinear"
    clamp: bool = True
