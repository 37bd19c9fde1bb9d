"""REPA as plain functions: the projector and the alignment loss (Yu et al. 2024, docs/recipe.md §5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_projector(hidden: int, projector_dim: int, teacher_dim: int) -> nn.Sequential:
    """Linear(hidden→proj)–SiLU–Linear(proj→proj)–SiLU–Linear(proj→teacher_dim), per token."""
    return nn.Sequential(
        nn.Linear(hidden, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, teacher_dim),
    )


def projector_forward_flops(hidden: int, projector_dim: int, teacher_dim: int) -> float:
    """Matmul FLOPs of the projector's forward for one token."""
    return 2.0 * (hidden * projector_dim + projector_dim * projector_dim + projector_dim * teacher_dim)


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean(cos(projected, target))`` over every token of every sample, in fp32.

    ``projected`` and ``target`` are (..., dim) with matching shapes; the target carries no
    gradient in REPA (compute it without one).
    """
    return -F.cosine_similarity(projected.float(), target.float(), dim=-1).mean()
