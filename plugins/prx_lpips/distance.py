"""LPIPS as plain functions: the distance between two images' multi-stage features, and the
size both images are compared at. Each returns one value per sample, so that a noise gate can
weight samples without data-dependent control flow."""
from __future__ import annotations

import torch

_EPS = 1e-10  # lpips.normalize_tensor's epsilon


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    """Each spatial position's channel vector scaled to unit length (as LPIPS does)."""
    features = features.float()
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)


def lpips_distance(features_x: list[torch.Tensor], features_y: list[torch.Tensor],
                   weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """LPIPS between two images' multi-stage feature maps: one value per sample, shape (batch,).

    For every stage: unit-normalise each position's channel vector, square the difference,
    take the channel sum weighted by ``weights[stage]`` (C,), average over positions; then sum the
    stages. With the calibrated linear heads of the ``lpips`` package as ``weights`` this is
    LPIPS; with ``weights=None`` every channel weighs 1, lpips' uncalibrated "baseline" variant
    (``lpips.LPIPS(lpips=False)``), each stage contributing ``2 - 2 cos`` averaged over positions.
    """
    total = 0.0
    for stage, (x, y) in enumerate(zip(features_x, features_y, strict=True)):
        squared = (_unit_channels(x) - _unit_channels(y)).pow(2)
        if weights is None:
            per_position = squared.sum(dim=1)
        else:
            per_position = torch.einsum("bchw,c->bhw", squared, weights[stage].float())
        total = total + per_position.mean(dim=(1, 2))
    return total


def downsampled_size(image_hw: tuple[int, int], scale: float, min_side: int) -> tuple[int, int]:
    """``image_hw`` scaled by ``scale``, but with the short side not below ``min_side`` (the
    deepest VGG / EfficientNet stages need a few pixels) and never larger than the image."""
    h, w = image_hw
    factor = max(scale, min(1.0, min_side / min(h, w)))
    return max(1, round(h * factor)), max(1, round(w * factor))
