"""The ``[lpips]`` and ``[dino_perceptual]`` recipe tables (defaults: docs/recipe.md §6)."""
from __future__ import annotations

from typing import Literal

import attrs


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

    teacher: str = "lpips:vgg"
    weight: float = 0.1
    scale: float = 0.5
    min_side: int = 32
    gate_t_clean: float = 0.0
    resize: Literal["bilinear", "bilinear-antialias", "nearest"] = "bilinear"


@attrs.frozen(kw_only=True)
class DinoPerceptualConfig:
    """``teacher``: DINOv2 ViT-B/14 with registers by default; a CNN such as
    ``"efficientnet-lite0"`` stands in on machines without it (its stride-16 feature map gives
    the tokens). Both images are resized to ``size`` x ``size`` ("pooled full image") by
    ``resize`` (PRX: ``"bilinear"``, no antialias), then with ``clamp`` (PRX: true) mapped to [0, 1]
    and clipped there, so the prediction's out-of-range values reach the teacher as black or white
    (and pass no gradient). ``gate_t_clean`` as for LPIPS."""

    teacher: str = "hf:facebook/dinov2-with-registers-base"
    weight: float = 0.01
    size: int = 224
    gate_t_clean: float = 0.0
    resize: Literal["bilinear", "bilinear-antialias", "nearest"] = "bilinear"
    clamp: bool = True
