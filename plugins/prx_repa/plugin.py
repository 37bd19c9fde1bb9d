"""The "repa" technique: align a denoiser block's hidden states with a frozen teacher's tokens."""
from __future__ import annotations

from torch import nn

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.model.flops import TRAIN_MULTIPLIER
from prx_core.teachers import (
    ConvTeacher,
    load_teacher,
    teacher_architecture,
    teacher_forward_flops,
    teacher_spec_problems,
)
from prx_core.types import CostTerm, Phase, RunContext, Technique
from prx_repa.alignment import RepaAlignment
from prx_repa.config import RepaConfig
from prx_repa.grid import teacher_input_size
from prx_repa.loss import build_projector, projector_forward_flops

PROJECTOR = "repa_projector"


class Repa:
    """Adds the REPA loss on ``block``'s output; attaches the projector (stepped by the default
    Adam group, since no technique claims it). The teacher is loaded at model set-up, so missing
    weights stop the run before the first step. The loss reads ``block``'s output, which the core
    captures for it. In a phase that disables "repa" the core stops calling the per-phase hooks: no
    loss, no capture, and the projector keeps its weights."""

    def __init__(self, config: RepaConfig, context: RunContext):
        self.config = config
        self.context = context
        self.teacher = None

    @hookimpl
    def prx_check_recipe(self, model_config: DenoiserConfig) -> list[str]:
        c = self.config
        problems = []
        depth = model_config.depth
        if not 0 <= c.block < depth:
            problems.append(f"block = {c.block} is not a block of the {depth}-block model; use 0..{depth - 1} "
                            "(7, the 8th block, in the PRX recipe).")
        problems += teacher_spec_problems(c.teacher)
        return problems

    @hookimpl
    def prx_configure_model(self, model_config: DenoiserConfig) -> dict[str, nn.Module]:
        self.teacher = load_teacher(self.config.teacher, self.context.device)
        note = ""
        if isinstance(self.teacher, ConvTeacher):
            note = (" (an ImageNet CNN standing in for the recipe's ViT teacher: its stride-"
                    f"{self.teacher.patch} feature map gives the patch tokens)")
        self.context.log(f"repa: teacher {self.teacher.describe()}{note}")
        return {PROJECTOR: build_projector(model_config.hidden, self.config.projector_dim, self.teacher.dim)}

    @hookimpl
    def prx_auxiliary_losses(self, phase: Phase, model: nn.Module, model_config: DenoiserConfig) -> list[RepaAlignment]:
        c = self.config
        grid, size = self._teacher_input(model_config, phase)
        self.context.log(f"repa: phase '{phase.name}': teacher input {size[0]}x{size[1]} px for a "
                         f"{grid[0]}x{grid[1]} token grid at block {c.block}, weight {c.weight}")
        return [RepaAlignment(model.extras[PROJECTOR], self.teacher, c.block, c.weight, c.input_scale, c.resize)]

    @hookimpl
    def prx_cost(self, model_config: DenoiserConfig, phase: Phase, text_tokens: int) -> list[CostTerm]:
        """The teacher's forward on the clean image (no backward), and the projector's training
        FLOPs on every token (an upper bound under routing, where only kept tokens are captured)."""
        grid, size = self._teacher_input(model_config, phase)
        teacher_dim = teacher_architecture(self.config.teacher).dim
        per_token = projector_forward_flops(model_config.hidden, self.config.projector_dim, teacher_dim)
        return [
            CostTerm("repa_teacher", teacher_forward_flops(self.config.teacher, size), "teacher"),
            CostTerm("repa_projector", TRAIN_MULTIPLIER * grid[0] * grid[1] * per_token, "denoiser"),
        ]

    def _teacher_input(self, model_config: DenoiserConfig, phase: Phase) -> tuple[tuple[int, int], tuple[int, int]]:
        """(token grid, teacher input size) for a square image of the phase's resolution."""
        side = phase.resolution
        grid = (side // model_config.patch, side // model_config.patch)
        patch = teacher_architecture(self.config.teacher).patch
        return grid, teacher_input_size(patch, grid, (side, side), self.config.input_scale)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="repa",
            plugin=Repa,
            config=RepaConfig,
            summary="REPA: align a block's hidden states with a frozen teacher's patch tokens (projector + cosine).",
            effects=("loss_term:repa", f"adds_module:{PROJECTOR}"),
            tiny_settings={"teacher": "{vit}", "block": 1, "projector_dim": 16},
        )
    ]
