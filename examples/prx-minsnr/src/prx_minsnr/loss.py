"""The per-step loss object prx calls on every training step: the plain function on the step's tensors."""
from __future__ import annotations

import attrs
import torch

from prx_core.types import StepTensors
from prx_minsnr.weighting import min_snr_correction


@attrs.frozen
class MinSnrLoss:
    """The per-step loss object: cheap, no host reads."""

    gamma: float
    floor: float
    name: str = "minsnr"

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        return {self.name: min_snr_correction(step.x0_hat, step.x0, step.t, self.gamma, self.floor)}
