"""x-prediction with the loss measured in v-space (Li & He 2025, "Back to Basics"; docs/recipe.md §2).

Convention: t = 1 is pure noise, ``x_t = (1 - t) x0 + t eps``; the network predicts x0 and the
loss compares velocities ``v = (x_t - x0) / max(t, floor)``.
"""
from __future__ import annotations

import torch

from prx_core.recipe.schema import ObjectiveConfig


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift ``s t / (1 + (s - 1) t)``: s > 1 moves mass towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_time(normal: torch.Tensor, uniform: torch.Tensor, choice: torch.Tensor, config: ObjectiveConfig) -> torch.Tensor:
    """Training noise levels from three standard draws per sample (N(0,1), U[0,1), U[0,1)).

    ``shifted_logit_normal`` (PRX): sigmoid(N(mean, std)) then the shift; ``logit_normal`` (JiT):
    sigmoid(N(mean, std)) with no shift (JiT uses mean -0.8, std 0.8). In both, a
    ``uniform_fraction`` of the batch is replaced by unshifted U[t_min, t_max). The draws are
    passed in so that each sample's randomness can come from its own seed (see
    prx_core.train.randomness) and not depend on how the batch is split across processes.
    """
    t = torch.sigmoid(normal * config.logit_std + config.logit_mean)
    if config.time_sampling == "shifted_logit_normal":
        t = shift_time(t, config.shift)
    t_uniform = uniform * (config.t_max - config.t_min) + config.t_min
    t = torch.where(choice < config.uniform_fraction, t_uniform, t)
    return t.clamp(config.t_min, config.t_max - 1e-6)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise`` with ``t`` per sample."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - tt) * x0 + tt * noise


def velocity(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, floor: float) -> torch.Tensor:
    """``(x_t - x0) / max(t, floor)``: the velocity implied by an x0 (prediction or truth)."""
    tt = t.clamp(min=floor).view(-1, *([1] * (x_t.dim() - 1)))
    return (x_t - x0) / tt


def v_space_loss(x0_hat: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, floor: float) -> torch.Tensor:
    """``mean((v_hat - v)^2)`` with both velocities from the same x_t (fp32)."""
    v_hat = velocity(x_t.float(), x0_hat.float(), t, floor)
    v = velocity(x_t.float(), x0.float(), t, floor)
    return (v_hat - v).pow(2).mean()


def noise_gate(t: torch.Tensor, gate_t_clean: float) -> torch.Tensor:
    """Per-sample weight 1 where ``1 - t >= gate_t_clean`` (clean enough), else 0 (t = 1 is noise):
    for an auxiliary loss that applies only at low noise levels (PixelGen's perceptual losses use
    0.3); 0 keeps every sample."""
    return ((1 - t.float()) >= gate_t_clean).float()


def gated_mean(values: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``mean(values * gate)`` over the batch: gated-out samples count as zero, so a sample's
    weight in the loss does not depend on how many others the gate drops (and no host read or
    data-dependent indexing is needed)."""
    return (values * gate).mean()
