"""Gathering a subset of tokens per sample and putting them back: the seam routing needs."""
from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (batch, kept) of ``x`` (batch, tokens, ...) per sample: (batch, kept, ...)."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, expanded)


def scatter_tokens(base: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``base`` (batch, tokens, dim) with rows ``index`` replaced by ``values``.

    Out of place, so gradients flow into ``values`` at the kept rows and into ``base`` at the
    others.
    """
    expanded = index[..., None].expand(-1, -1, base.shape[-1])
    return base.scatter(1, expanded, values)
