"""The "minsnr" technique: an auxiliary loss that caps each sample's weight in prx's objective.

Select it in a recipe::

    plugins = ["minsnr"]
    [minsnr]
    gamma = 5.0

The step's total loss becomes ``diffusion + minsnr``, which weights each sample's x0 error by
``min(1 / max(t, floor)^2, gamma)``; ``loss/minsnr`` in metrics.jsonl is the (negative) correction.
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from prx_core.hookspecs import hookimpl
from prx_core.types import Phase, RunContext, StepTensors, Technique
from prx_minsnr.weighting import min_snr_correction


@attrs.frozen(kw_only=True)
class MinSnrConfig:
    """``[minsnr]``: ``gamma`` is the largest weight a sample's x0 error may get (Min-SNR's
    default, 5, caps every noise level below t = 0.45)."""

    gamma: float = 5.0


@attrs.frozen
class MinSnrLoss:
    """The per-step loss object: cheap, no host reads."""

    gamma: float
    floor: float
    name: str = "minsnr"

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        return {self.name: min_snr_correction(step.x0_hat, step.x0, step.t, self.gamma, self.floor)}


class MinSnr:
    """Built by prx as ``MinSnr(config, context)`` for a run that selects "minsnr"."""

    def __init__(self, config: MinSnrConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        gamma = self.config.gamma
        if math.isfinite(gamma) and gamma > 0:
            return []
        return [f"gamma = {gamma} must be a finite number > 0 (5 in the Min-SNR paper)."]

    @hookimpl
    def prx_auxiliary_losses(self, phase: Phase, model: nn.Module) -> list[MinSnrLoss]:
        return [MinSnrLoss(self.config.gamma, self.context.recipe.objective.loss_t_floor)]


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="minsnr",
            plugin=MinSnr,
            config=MinSnrConfig,
            summary="Min-SNR-style weighting: caps each sample's weight in the x-prediction objective at gamma.",
            effects=("loss_term:minsnr",),
        )
    ]
