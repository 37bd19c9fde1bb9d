"""Per-sample randomness keyed by (run seed, step, sample id).

A sample's noise, noise level and caption-dropout draw depend only on its own key, never on
which process or micro-batch it landed in, so 2 processes x batch b and 1 process x batch 2b
see identical per-sample randomness (and the same losses), and a resumed run replays exactly.
"""
from __future__ import annotations

import hashlib

import attrs
import torch


def sample_seed(seed: int, step: int, sample_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{step}/{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@attrs.frozen
class SampleDraws:
    noise: torch.Tensor    # (B, 3, H, W) N(0, 1)
    normal: torch.Tensor   # (B,) N(0, 1) for the logit-normal time
    uniform: torch.Tensor  # (B,) U[0, 1) for the uniform time share
    choice: torch.Tensor   # (B,) U[0, 1) picks logit-normal vs uniform
    drop: torch.Tensor     # (B,) U[0, 1) for caption dropout


def draw(seed: int, step: int, sample_ids: list[str], image_shape: tuple[int, int, int],
         device: torch.device) -> SampleDraws:
    """Draw every random number a training sample needs from its own generator."""
    generator = torch.Generator(device=device)
    noise, scalars = [], []
    for sample_id in sample_ids:
        generator.manual_seed(sample_seed(seed, step, sample_id))
        noise.append(torch.randn(image_shape, generator=generator, device=device))
        scalars.append(torch.cat([torch.randn(1, generator=generator, device=device),
                                  torch.rand(3, generator=generator, device=device)]))
    s = torch.stack(scalars)
    return SampleDraws(torch.stack(noise), s[:, 0], s[:, 1], s[:, 2], s[:, 3])
