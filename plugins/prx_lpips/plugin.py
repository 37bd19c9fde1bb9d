"""The "lpips" technique: the thin plugin around the LPIPS loss (config in ``config.py``, the distance
in ``distance.py``, the per-step loss in ``term.py``)."""
from __future__ import annotations

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.teachers import load_teacher, parse_teacher_spec, teacher_loss_flops, teacher_spec_problems
from prx_core.types import CostTerm, Phase, RunContext, Technique
from prx_lpips.config import LpipsConfig
from prx_lpips.distance import downsampled_size
from prx_lpips.term import LpipsTerm


class Lpips:
    """LPIPS between x0_hat and x0, both downsampled (0.5 by default). The teacher is loaded at
    model set-up, so missing weights stop the run before the first step."""

    def __init__(self, config: LpipsConfig, context: RunContext):
        self.config = config
        self.context = context
        self.teacher = None

    @hookimpl
    def prx_check_recipe(self) -> list[str]:
        c = self.config
        unreadable = teacher_spec_problems(c.teacher)
        problems = list(unreadable)
        if not unreadable and parse_teacher_spec(c.teacher).kind == "hf":
            problems.append(f"teacher = '{c.teacher}' is a ViT; LPIPS needs a CNN's feature stages: use "
                            "'lpips:vgg', or 'efficientnet-lite0' for an offline, uncalibrated stand-in.")
        return problems

    @hookimpl
    def prx_configure_model(self) -> dict:
        self.teacher = load_teacher(self.config.teacher, self.context.device)
        if self.teacher.calibrated:
            kind = "calibrated LPIPS (VGG16 trunk + the lpips package's linear heads)"
        else:
            kind = ("an LPIPS-style distance with uniform channel weights on this CNN's normalised stage "
                    "features: not calibrated LPIPS, its values are not comparable with LPIPS numbers")
        self.context.log(f"lpips: {kind}; network {self.teacher.describe()}")
        return {}

    @hookimpl
    def prx_auxiliary_losses(self) -> list[LpipsTerm]:
        c = self.config
        return [LpipsTerm(self.teacher, c.weight, c.scale, c.min_side, c.gate_t_clean, c.resize)]

    @hookimpl
    def prx_cost(self, model_config: DenoiserConfig, phase: Phase, text_tokens: int) -> list[CostTerm]:
        size = downsampled_size((phase.resolution, phase.resolution), self.config.scale, self.config.min_side)
        return [CostTerm("lpips_teacher", teacher_loss_flops(self.config.teacher, size, "stages"), "teacher")]


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
    ]
