"""What a teacher costs, counted on its architecture alone: no weights, no network, no compute
(the ``meta`` device), so ``--dry-run`` and ``prx cost`` work on machines without the weights.
These are the helpers a technique's ``prx_cost`` hook uses for its teacher passes."""
from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from prx_core.teachers.interface import FeatureTeacher
from prx_core.teachers.load import build_teacher
from prx_core.teachers.spec import parse_teacher_spec

LOSS_PASSES = 3
"""Teacher forwards per image of a loss that compares the prediction with the clean image in the
teacher's feature space, in units of one forward: the clean branch, the prediction branch, and the
prediction branch's backward to its input (about one forward: the frozen weights need no gradient)."""


@functools.lru_cache(maxsize=16)
def teacher_architecture(spec: str) -> FeatureTeacher:
    """The teacher's architecture on the ``meta`` device, without weights (for planning): its
    ``dim``, ``patch`` and ``grid_for`` are those of the loaded teacher."""
    with torch.device("meta"):
        return build_teacher(parse_teacher_spec(spec), weights=False).eval().requires_grad_(False)


@functools.lru_cache(maxsize=64)
def teacher_forward_flops(spec: str, image_hw: tuple[int, int], output: str = "patch_tokens") -> float:
    """FLOPs of one teacher forward for one image of ``image_hw`` pixels.

    ``output`` is "patch_tokens" or, for CNN teachers, "stages" (every feature stage). Counted
    by ``torch.utils.flop_counter`` on the meta device (matmuls, convolutions, attention).
    """
    teacher = teacher_architecture(spec)
    images = torch.zeros(1, 3, *image_hw, device="meta")
    with FlopCounterMode(display=False) as counter:
        getattr(teacher, output)(images)
    return float(counter.get_total_flops())


def teacher_loss_flops(spec: str, image_hw: tuple[int, int], output: str = "patch_tokens") -> float:
    """FLOPs per image of a loss between the prediction and the clean image through the teacher
    at ``image_hw``: :data:`LOSS_PASSES` forwards (see :func:`teacher_forward_flops`)."""
    return LOSS_PASSES * teacher_forward_flops(spec, image_hw, output)
