"""The DINO perceptual loss as a plain function: one value per sample, so that a noise gate can
weight samples without data-dependent control flow."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dino_perceptual_loss(pred_tokens: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos)`` over the patch tokens of each sample: (batch, tokens, dim) -> (batch,).

    The gradient should flow through ``pred_tokens`` only: compute ``target_tokens`` without one.
    """
    return (1 - F.cosine_similarity(pred_tokens.float(), target_tokens.float(), dim=-1)).mean(dim=1)
