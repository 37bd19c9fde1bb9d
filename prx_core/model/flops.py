"""Analytic training FLOPs of the denoiser (matmuls and attention; elementwise work ignored).

Training counts 3x the forward pass (forward + backward of activations and weights), the
convention of the plain reference step in ``shared/bench`` and of MFU figures in the field.
"""
from __future__ import annotations

from prx_core.model.config import DenoiserConfig

TRAIN_MULTIPLIER = 3


def block_forward_flops(c: DenoiserConfig, image_tokens: int, text_tokens: int) -> float:
    """Forward FLOPs of one block for one image with ``image_tokens`` queries."""
    per_token = 2 * (c.hidden * 3 * c.hidden + c.hidden * c.hidden + 3 * c.hidden * c.mlp_hidden)
    text_kv = 2 * text_tokens * c.hidden * 2 * c.hidden
    attention = 2 * 2 * image_tokens * (image_tokens + text_tokens) * c.hidden
    return image_tokens * per_token + text_kv + attention


def forward_flops(c: DenoiserConfig, image_tokens: int, text_tokens: int) -> float:
    """Forward FLOPs of the dense denoiser for one image."""
    blocks = c.depth * block_forward_flops(c, image_tokens, text_tokens)
    patches = 2 * image_tokens * (c.patch_dim * c.bottleneck + c.bottleneck * c.hidden + c.hidden * c.patch_dim)
    text = 2 * text_tokens * c.text_dim * c.hidden
    return blocks + patches + text


def train_flops_per_image(c: DenoiserConfig, image_tokens: int, text_tokens: int) -> float:
    """Training FLOPs (forward and backward) of the dense denoiser for one image."""
    return TRAIN_MULTIPLIER * forward_flops(c, image_tokens, text_tokens)


def tokens_for(resolution: int | tuple[int, int], patch: int) -> int:
    """Image tokens of a square side or an (height, width) image."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    return (h // patch) * (w // patch)
