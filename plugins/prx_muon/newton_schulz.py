"""Newton–Schulz orthogonalisation, the core of Muon, as a plain function on tensors.

Muon replaces a weight matrix's momentum-updated gradient ``G = U S V^T`` by (approximately)
``U V^T``: every singular value is pushed towards 1, so the step moves all directions of the
matrix by the same amount. Five iterations of the quintic ``X <- a X + (b A + c A^2) X`` with
``A = X X^T`` and the coefficients below (Keller Jordan's, tuned for the largest slope at zero)
map singular values from (0, 1] into roughly [0.7, 1.2] rather than exactly 1, which trains as
well and costs far fewer iterations.

The arithmetic is the same as ``torch.optim.Muon``'s (bf16, Frobenius pre-normalisation, the
wide orientation so that ``A`` is the smaller Gram matrix, ``addmm`` fusions); a stack of
same-shape matrices runs as one chain of batched matmuls (``baddbmm``) with the same result.
"""
from __future__ import annotations

import torch

QUINTIC = (3.4445, -4.7750, 2.0315)
"""Coefficients (a, b, c) of the quintic iteration."""

EPS = 1e-7
"""Floor of the Frobenius norm in the pre-normalisation (a zero gradient stays zero)."""


def newton_schulz(
    g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = QUINTIC, eps: float = EPS
) -> torch.Tensor:
    """Orthogonalise ``g`` of shape (m, n) or a stack (..., m, n); returns bf16 of the same shape.

    Each matrix of a stack is normalised and iterated independently (batched matmuls).
    ``g`` itself is never modified.
    """
    if g.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    shape = g.shape
    x = g.to(torch.bfloat16)
    if x.ndim > 3:
        x = x.reshape(-1, *shape[-2:])
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    # Frobenius norm >= spectral norm, so after this every singular value lies in [0, 1].
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    fused = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        poly = fused(gram, gram, gram, beta=b, alpha=c)
        x = fused(x, poly, x, beta=a)
    if tall:
        x = x.mT
    return x.reshape(shape)


def newton_schulz_flops(shape: tuple[int, int], steps: int = 5) -> float:
    """Matmul FLOPs of :func:`newton_schulz` on one (m, n) matrix.

    With ``s = min(m, n)`` and ``l = max(m, n)``, each iteration computes ``X X^T`` (2 s² l),
    ``A·A`` (2 s³) and ``B·X`` (2 s² l).
    """
    s, l = sorted(shape)
    return float(steps * (4 * s * s * l + 2 * s**3))
