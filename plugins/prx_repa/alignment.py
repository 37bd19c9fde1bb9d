"""The per-step REPA loss object the core calls on every training step of a phase."""
from __future__ import annotations

import torch
from torch import nn

from prx_core.model.tokens import gather_tokens
from prx_core.teachers import FeatureTeacher
from prx_core.types import StepTensors
from prx_repa.grid import teacher_tokens_on_grid
from prx_repa.loss import repa_loss


class RepaAlignment:
    """``weight * repa_loss(projector(h), target)`` for the captured output ``h`` of ``block``
    (the one block in ``blocks``, which the core captures for this loss).

    The target is the teacher's patch tokens of the clean image in [0, 1], aligned to the
    denoiser's token grid and computed without gradient. When the block ran inside a route,
    ``Captured.index`` names the full-grid position of every captured row, and the target rows
    are gathered with it. No host reads, no Python loop over tokens.
    """

    name = "repa"

    def __init__(self, projector: nn.Module, teacher: FeatureTeacher, block: int, weight: float,
                 input_scale: float | None, resize: str = "nearest"):
        self.projector = projector
        self.teacher = teacher
        self.block = block
        self.blocks = (block,)
        self.weight = weight
        self.input_scale = input_scale
        self.resize = resize

    def targets(self, x0: torch.Tensor, grid: tuple[int, int], index: torch.Tensor | None) -> torch.Tensor:
        """Teacher tokens (batch, tokens, teacher dim) on the (rows, cols) token ``grid`` for clean
        images ``x0`` in [-1, 1]; only the rows ``index`` picks when given."""
        with torch.no_grad():
            target = teacher_tokens_on_grid(self.teacher, (x0.detach() + 1) / 2, grid, self.input_scale, self.resize)
            return target if index is None else gather_tokens(target, index)

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        captured = step.captured[self.block]
        target = self.targets(step.x0, step.grid, captured.index)
        return {self.name: self.weight * repa_loss(self.projector(captured.hidden), target)}
