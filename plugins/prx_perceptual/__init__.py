"""Perceptual losses on the x0 prediction (after PixelGen): LPIPS and a DINO feature loss, as
plain functions, and the "lpips" and "dino_perceptual" techniques (``prx_perceptual.plugin``)."""
from prx_perceptual.losses import (
    dino_perceptual_loss,
    downsampled_size,
    gated_mean,
    lpips_distance,
    noise_gate,
)

__all__ = ["dino_perceptual_loss", "downsampled_size", "gated_mean", "lpips_distance", "noise_gate"]
