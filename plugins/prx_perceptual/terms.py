"""The per-step loss objects of "lpips" and "dino_perceptual".

Both compare the prediction x0_hat with the clean x0 through a frozen teacher: the clean branch
runs without gradient, the prediction branch with it (the teacher's weights never get one).
Every sample is computed and the noise gate weights the per-sample values: no host reads, no
data-dependent Python control flow.
"""
from __future__ import annotations

import torch

from prx_core.teachers import ConvTeacher, FeatureTeacher, resize_images
from prx_core.types import StepTensors
from prx_perceptual.losses import dino_perceptual_loss, downsampled_size, gated_mean, lpips_distance, noise_gate


def _to_01(images: torch.Tensor) -> torch.Tensor:
    return (images + 1) / 2


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
            clean = self.teacher.stages(resize_images(_to_01(step.x0.detach()), size, self.resize))
        predicted = self.teacher.stages(resize_images(_to_01(step.x0_hat), size, self.resize))
        distance = lpips_distance(predicted, clean, self.stage_weights)
        return {self.name: self.weight * gated_mean(distance, noise_gate(step.t, self.gate_t_clean))}


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
        images_01 = _to_01(resize_images(images, self.size, self.resize))
        return images_01.clamp(0, 1) if self.clamp else images_01

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = self.teacher.patch_tokens(self.teacher_input(step.x0.detach()))
        predicted = self.teacher.patch_tokens(self.teacher_input(step.x0_hat))
        loss = dino_perceptual_loss(predicted, target)
        return {self.name: self.weight * gated_mean(loss, noise_gate(step.t, self.gate_t_clean))}
