"""The "dino_perceptual" technique: the thin plugin around the DINO perceptual loss (config in
``config.py``, the loss in ``loss.py``, the per-step loss in ``term.py``)."""
from __future__ import annotations

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.teachers import ConvTeacher, load_teacher, teacher_loss_flops, teacher_spec_problems
from prx_core.types import CostTerm, Phase, RunContext, Technique
from prx_dino_perceptual.config import DinoPerceptualConfig
from prx_dino_perceptual.term import DinoPerceptualTerm


class DinoPerceptual:
    """1 - cos between the teacher's patch tokens of x0_hat and x0, both resized to ``size``. The
    teacher is loaded at model set-up, so missing weights stop the run before the first step."""

    def __init__(self, config: DinoPerceptualConfig, context: RunContext):
        self.config = config
        self.context = context
        self.teacher = None

    @hookimpl
    def prx_check_recipe(self) -> list[str]:
        return teacher_spec_problems(self.config.teacher)

    @hookimpl
    def prx_configure_model(self) -> dict:
        self.teacher = load_teacher(self.config.teacher, self.context.device)
        note = " (a CNN standing in for the recipe's DINOv2)" if isinstance(self.teacher, ConvTeacher) else ""
        self.context.log(f"dino_perceptual: teacher {self.teacher.describe()}{note}")
        return {}

    @hookimpl
    def prx_auxiliary_losses(self) -> list[DinoPerceptualTerm]:
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
            name="dino_perceptual",
            plugin=DinoPerceptual,
            config=DinoPerceptualConfig,
            summary="DINOv2 patch-token cosine loss between the x0 prediction and the clean image, at 224 px.",
            effects=("loss_term:dino_perceptual",),
            tiny_settings={"teacher": "{vit}", "size": 28},
        ),
    ]
