"""Min-SNR-style weighting of the x-prediction objective, as plain functions on tensors.

prx's objective (``prx_core.objective``) compares velocities ``v = (x_t - x0) / max(t, floor)``;
for one sample that is its mean squared x0 error times ``1 / max(t, floor)^2``. That weight grows
without bound as the noise level t goes to 0 (400 at the default floor 0.05), so nearly clean
samples dominate the gradient. Min-SNR-gamma (Hang et al., 2023, "Efficient Diffusion Training via
Min-SNR Weighting Strategy") clamps the per-noise-level weight at gamma; for small t the weight
``1 / t^2`` is the signal-to-noise ratio ``((1 - t) / t)^2`` up to a factor ``1 / (1 - t)^2``, so
capping it at gamma caps the SNR weight the same way.
"""
from __future__ import annotations

import torch


def x0_error(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of the x0 prediction, in fp32: shape (batch,)."""
    return (x0_hat.float() - x0.float()).pow(2).flatten(1).mean(dim=1)


def objective_weight(t: torch.Tensor, floor: float) -> torch.Tensor:
    """The weight ``1 / max(t, floor)^2`` that prx's v-space loss puts on a sample's x0 error."""
    return t.float().clamp(min=floor).pow(-2)


def min_snr_weight(t: torch.Tensor, gamma: float, floor: float) -> torch.Tensor:
    """The capped weight ``min(1 / max(t, floor)^2, gamma)``."""
    return objective_weight(t, floor).clamp(max=gamma)


def min_snr_correction(x0_hat: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, gamma: float,
                       floor: float) -> torch.Tensor:
    """What to add to prx's v-space loss so that the sum weights each sample by
    :func:`min_snr_weight`: ``mean((min_snr_weight - objective_weight) * x0_error)``, at most 0."""
    difference = min_snr_weight(t, gamma, floor) - objective_weight(t, floor)
    return (difference * x0_error(x0_hat, x0)).mean()
