"""A small PRX denoiser with every weight random, for the technique tests: with the real
initialisation (adaLN-Zero's zeros) each block would be the identity and a test could not see
what a technique does to the blocks."""
from __future__ import annotations

import torch

from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser

SMALL = DenoiserConfig(hidden=32, depth=4, heads=2, mlp_ratio=2.0, patch=4, bottleneck=16, text_dim=8)


def random_denoiser(config: DenoiserConfig = SMALL, seed: int = 0) -> PRXDenoiser:
    """``PRXDenoiser(config)`` with every weight drawn from N(0, 0.2^2) by a generator seeded ``seed``."""
    model = PRXDenoiser(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model
