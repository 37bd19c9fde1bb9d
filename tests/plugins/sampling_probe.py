"""What the guidance techniques' tests sample with: a real random-weight denoiser behind the
sampler's ``predict`` that records each call, and one sampling step's inputs."""
from __future__ import annotations

import torch
from random_denoiser import SMALL, random_denoiser

from prx_core.types import Conditioning


class Recorder:
    """A real (random-weight) denoiser behind the sampler's ``predict``, recording each call."""

    def __init__(self):
        self.model = random_denoiser(SMALL)
        self.calls = []

    def __call__(self, x_t, t, cond, plan):
        self.calls.append((cond, plan))
        return self.model(x_t, t, cond.tokens, cond.mask, route=plan)[0]


def inputs(batch: int = 2):
    """(x_t, t, cond, uncond) of a 16 x 24 px sampling step (a 4 x 6 token grid)."""
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(batch, 3, 16, 24, generator=generator)
    t = torch.full((batch,), 0.6)
    text = torch.randn(batch, 5, SMALL.text_dim, generator=generator)
    cond = Conditioning(text, torch.ones(batch, 5, dtype=torch.bool))
    uncond = Conditioning(torch.zeros(batch, 5, SMALL.text_dim), torch.tensor([[True] + [False] * 4] * batch))
    return x_t, t, cond, uncond
