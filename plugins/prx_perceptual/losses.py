"""Perceptual losses as plain functions (after PixelGen, docs/recipe.md §6).

Each returns one value per sample, so that a noise gate can weight samples without
data-dependent control flow; average them (or use :func:`gated_mean`) for a scalar.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def dino_perceptual_loss(pred_tokens: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos)`` over the patch tokens of each sample: (batch, tokens, dim) -> (batch,).

    The gradient should flow through ``pred_tokens`` only: compute ``target_tokens`` without one.
    """
    return (1 - F.cosine_similarity(pred_tokens.float(), target_tokens.float(), dim=-1)).mean(dim=1)


def noise_gate(t: torch.Tensor, gate_t_clean: float) -> torch.Tensor:
    """Per-sample weight 1 where ``1 - t >= gate_t_clean`` (clean enough), else 0 (t = 1 is noise).

    PixelGen applies its perceptual losses at ``t_clean >= 0.3`` only; 0 keeps every sample.
    """
    return ((1 - t.float()) >= gate_t_clean).float()


def gated_mean(values: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``mean(values * gate)`` over the batch: gated-out samples count as zero, so a sample's
    weight in the loss does not depend on how many others the gate drops."""
    return (values * gate).mean()


def downsampled_size(image_hw: tuple[int, int], scale: float, min_side: int) -> tuple[int, int]:
    """``image_hw`` scaled by ``scale``, but with the short side not below ``min_side`` (the
    deepest VGG / EfficientNet stages need a few pixels) and never larger than the image."""
    h, w = image_hw
    factor = max(scale, min(1.0, min_side / min(h, w)))
    return max(1, round(h * factor)), max(1, round(w * factor))
