"""The per-step DINO perceptual loss object: the prediction x0_hat against the clean x0 in a frozen
teacher's patch tokens.

The clean branch runs without gradient, the prediction branch with it (the teacher's weights never
get one). Every sample is computed and the noise gate weights the per-sample values: no host
reads, no data-dependent Python control flow.
"""
from __future__ import annotations

import torch

from prx_core.objective import gated_mean, noise_gate
from prx_core.teachers import FeatureTeacher, resize_images
from prx_core.types import StepTensors
from prx_dino_perceptual.loss import dino_perceptual_loss


class DinoPerceptualTerm:
    """``weight * mean(gate * mean_tokens(1 - cos))`` of teacher patch tokens at ``size`` x ``size``."""

    name = "dino_perceptual"

    def __init__(self, teacher: FeatureTeacher, weight: float, size: int, gate_t_clean: float,
                 resize: str = "bilinear", clamp: bool = True):
        self.teacher = teacher
        self.weight = weight
        self.size = (size, size)
        self.gate_t_clean = gate_t_clean
        self.resize = resize
        self.clamp = clamp

    def teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] resized, then in [0, 1] (clipped there with ``clamp``, as PRX does)."""
        images_01 = (resize_images(images, self.size, self.resize) + 1) / 2
        return images_01.clamp(0, 1) if self.clamp else images_01

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = self.teacher.patch_tokens(self.teacher_input(step.x0.detach()))
        predicted = self.teacher.patch_tokens(self.teacher_input(step.x0_hat))
        loss = dino_perceptual_loss(predicted, target)
        return {self.name: self.weight * gated_mean(loss, noise_gate(step.t, self.gate_t_clean))}
