"""Building blocks of the PRX denoiser (docs/recipe.md §1): norms, 2-D RoPE, attention, block."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learnable scale, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.scale.float()).to(dtype)


def rope_tables(rows: int, cols: int, head_dim: int, theta: float, device: torch.device | None = None):
    """cos and sin tables of shape (rows*cols, head_dim/2) for 2-D RoPE on a row-major grid.

    The first half of each head's rotation pairs encodes the row, the second half the column,
    at integer grid positions with frequencies ``theta ** (-k / (head_dim/4))``.
    """
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    r = torch.arange(rows, device=device, dtype=torch.float32).repeat_interleave(cols)
    c = torch.arange(cols, device=device, dtype=torch.float32).repeat(rows)
    angles = torch.cat([r[:, None] * freqs, c[:, None] * freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (batch, heads, tokens, head_dim) by the tables.

    ``cos``/``sin`` broadcast against (batch, heads, tokens, head_dim/2): (1, 1, N, P) dense or
    (batch, 1, K, P) after routing gathered them per sample.
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 1e4) -> torch.Tensor:
    """Sinusoidal embedding of ``1000 * t`` as [cos, sin] (docs/recipe.md §1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class Block(nn.Module):
    """One PRX block: adaLN-Zero modulated attention over [text; image] keys, then a GeGLU MLP.

    Image tokens give queries, keys and values; the (never-updated) text tokens give extra keys
    and values through ``text_kv``. QK-RMSNorm per head, RMSNorm on text keys, RoPE on image
    queries and keys only.
    """

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        head_dim = hidden // heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=eps)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=eps)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.text_kv = nn.Linear(hidden, 2 * hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.text_k_norm = RMSNorm(head_dim, eps)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.gate = nn.Linear(hidden, mlp_hidden, bias=False)
        self.up = nn.Linear(hidden, mlp_hidden, bias=False)
        self.down = nn.Linear(mlp_hidden, hidden, bias=False)
        self.modulation = nn.Linear(hidden, 6 * hidden)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        b, n, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(vec))[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        tk, tv = self.text_kv(text).view(b, text.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        k = torch.cat([self.text_k_norm(tk), k], dim=2)
        v = torch.cat([tv, v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x = x + gate1 * self.attn_out(a.transpose(1, 2).reshape(b, n, d))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.down(F.gelu(self.gate(h), approximate="tanh") * self.up(h))
