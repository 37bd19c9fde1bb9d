"""The per-step LPIPS loss object: the prediction x0_hat against the clean x0 through a frozen CNN.

The clean branch runs without gradient, the prediction branch with it (the teacher's weights never
get one). Every sample is computed and the noise gate weights the per-sample values: no host
reads, no data-dependent Python control flow.
"""
from __future__ import annotations

import torch

from prx_core.objective import gated_mean, noise_gate
from prx_core.teachers import ConvTeacher, resize_images
from prx_core.types import StepTensors
from prx_lpips.distance import downsampled_size, lpips_distance


class LpipsTerm:
    """``weight * mean(gate * lpips_distance(x0_hat, x0))`` at ``scale`` of the image size."""

    name = "lpips"

    def __init__(self, teacher: ConvTeacher, weight: float, scale: float, min_side: int, gate_t_clean: float,
                 resize: str = "bilinear"):
        self.teacher = teacher
        self.weight = weight
        self.scale = scale
        self.min_side = min_side
        self.gate_t_clean = gate_t_clean
        self.resize = resize
        self.stage_weights = list(teacher.stage_weights) if teacher.calibrated else None

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        size = downsampled_size(tuple(step.x0.shape[-2:]), self.scale, self.min_side)
        with torch.no_grad():
            clean = self.teacher.stages(resize_images((step.x0.detach() + 1) / 2, size, self.resize))
        predicted = self.teacher.stages(resize_images((step.x0_hat + 1) / 2, size, self.resize))
        distance = lpips_distance(predicted, clean, self.stage_weights)
        return {self.name: self.weight * gated_mean(distance, noise_gate(step.t, self.gate_t_clean))}
