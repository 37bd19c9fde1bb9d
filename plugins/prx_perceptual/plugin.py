"""The "lpips" and "dino_perceptual" techniques: perceptual losses on the x0 prediction."""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.teachers import ConvTeacher, load_teacher, parse_teacher_spec, teacher_loss_flops, teacher_spec_problems
from prx_core.types import CostTerm, Phase, RunContext, Technique
from prx_perceptual.config import DinoPerceptualConfig, LpipsConfig
from prx_perceptual.losses import downsampled_size
from prx_perceptual.terms import DinoPerceptualTerm, LpipsTerm


class _Perceptual:
    """What both techniques share: recipe checks, and the teacher loaded at model set-up (so
    missing weights stop the run before the first step)."""

    def __init__(self, config: LpipsConfig | DinoPerceptualConfig, context: RunContext):
        self.config = config
        self.context = context
        self.teacher = None

    def _problems(self) -> list[str]:
        c = self.config
        problems = teacher_spec_problems(c.teacher)
        if not (math.isfinite(c.weight) and c.weight >= 0):
            problems.append(f"weight = {c.weight} must be a finite number >= 0.")
        if not 0 <= c.gate_t_clean <= 1:
            problems.append(f"gate_t_clean = {c.gate_t_clean} must lie in [0, 1] (0: every noise level; "
                            "PixelGen uses 0.3).")
        return problems

    def _load(self, recipe: Any) -> None:
        self.teacher = load_teacher(self.config.teacher, self.context.device)


class Lpips(_Perceptual):
    """LPIPS between x0_hat and x0, both downsampled (0.5 by default)."""

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        c = self.config
        problems = self._problems()
        if not any(p.startswith("teacher:") for p in problems) and parse_teacher_spec(c.teacher).kind == "hf":
            problems.append(f"teacher = '{c.teacher}' is a ViT; LPIPS needs a CNN's feature stages: use "
                            "'lpips:vgg', or 'efficientnet-lite0' for an offline, uncalibrated stand-in.")
        if not 0 < c.scale <= 1:
            problems.append(f"scale = {c.scale} must lie in (0, 1] (0.5 in the PRX recipe).")
        if c.min_side < 1:
            problems.append(f"min_side = {c.min_side} must be at least 1 px.")
        return problems

    @hookimpl
    def prx_configure_model(self, model: nn.Module, recipe: Any) -> dict[str, nn.Module]:
        self._load(recipe)
        if self.teacher.calibrated:
            kind = "calibrated LPIPS (VGG16 trunk + the lpips package's linear heads)"
        else:
            kind = ("an LPIPS-style distance with uniform channel weights on this CNN's normalised stage "
                    "features: not calibrated LPIPS, its values are not comparable with LPIPS numbers")
        self.context.log(f"lpips: {kind}; network {self.teacher.describe()}")
        return {}

    @hookimpl
    def prx_auxiliary_losses(self, phase: Phase, model: nn.Module) -> list[LpipsTerm]:
        c = self.config
        return [LpipsTerm(self.teacher, c.weight, c.scale, c.min_side, c.gate_t_clean, c.resize)]

    @hookimpl
    def prx_cost(self, model_config: DenoiserConfig, phase: Phase, text_tokens: int) -> list[CostTerm]:
        size = downsampled_size((phase.resolution, phase.resolution), self.config.scale, self.config.min_side)
        return [CostTerm("lpips_teacher", teacher_loss_flops(self.config.teacher, size, "stages"), "teacher")]


class DinoPerceptual(_Perceptual):
    """1 - cos between the teacher's patch tokens of x0_hat and x0, both resized to ``size``."""

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        problems = self._problems()
        if self.config.size < 1:
            problems.append(f"size = {self.config.size} must be a positive side in px (224 in the PRX recipe).")
        return problems

    @hookimpl
    def prx_configure_model(self, model: nn.Module, recipe: Any) -> dict[str, nn.Module]:
        self._load(recipe)
        note = " (a CNN standing in for the recipe's DINOv2)" if isinstance(self.teacher, ConvTeacher) else ""
        self.context.log(f"dino_perceptual: teacher {self.teacher.describe()}{note}")
        return {}

    @hookimpl
    def prx_auxiliary_losses(self, phase: Phase, model: nn.Module) -> list[DinoPerceptualTerm]:
        c = self.config
        return [DinoPerceptualTerm(self.teacher, c.weight, c.size, c.gate_t_clean, c.resize, c.clamp)]

    @hookimpl
    def prx_cost(self, model_config: DenoiserConfig, phase: Phase, text_tokens: int) -> list[CostTerm]:
        size = (self.config.size, self.config.size)
        return [CostTerm("dino_perceptual_teacher", teacher_loss_flops(self.config.teacher, size), "teacher")]


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="lpips",
            plugin=Lpips,
            config=LpipsConfig,
            summary="LPIPS (VGG) between the x0 prediction and the clean image, at half size.",
            effects=("loss_term:lpips",),
            tiny_settings={"teacher": "{cnn}", "min_side": 16},
        ),
        Technique(
            name="dino_perceptual",
            plugin=DinoPerceptual,
            config=DinoPerceptualConfig,
            summary="DINOv2 patch-token cosine loss between the x0 prediction and the clean image, at 224 px.",
            effects=("loss_term:dino_perceptual",),
            tiny_settings={"teacher": "{vit}", "size": 28},
        ),
    ]
