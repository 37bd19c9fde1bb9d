"""TREAD token routing as plain functions, usable without the framework (docs/recipe.md §3).

Routing is three small steps: pick a random subset of each sample's image tokens
(:func:`select_tokens`), run the routed blocks on the kept tokens only
(``prx_core.model.tokens.gather_tokens``), and put them back at the route's end
(``prx_core.model.tokens.scatter_tokens``); skipped tokens keep their value from the route's
start. The PRX block loop does the gathering and scattering; this module decides which tokens.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from prx_core.model.config import DenoiserConfig
from prx_core.model.flops import TRAIN_MULTIPLIER, block_forward_flops


def kept_count(tokens: int, keep: float) -> int:
    """How many of ``tokens`` a route keeps: ``keep * tokens`` rounded half up, at least one."""
    return min(tokens, max(1, math.floor(keep * tokens + 0.5)))


def select_tokens(
    batch: int, tokens: int, keep: float, generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    """A fresh random subset of ``kept_count(tokens, keep)`` token positions per sample.

    Returns int64 of shape (batch, kept), each row sorted ascending (sorted rows keep the kept
    tokens in raster order, which makes the gathered sequence a sub-image in reading order).
    ``generator`` must live on ``device``; no global random state is touched.
    """
    scores = torch.rand(batch, tokens, generator=generator, device=device)
    chosen = scores.argsort(dim=1)[:, : kept_count(tokens, keep)]
    return chosen.sort(dim=1).values


def route_seed(seed: int, step: int, rank: int) -> int:
    """A 64-bit generator seed for one (run seed, step, rank).

    Hashed rather than summed so that nearby triples (seed 1 step 0 vs seed 0 step 1) give
    unrelated streams, the same on every machine and Python version.
    """
    digest = hashlib.blake2b(f"prx-tread:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def step_generator(seed: int, step: int, rank: int, device: torch.device | str) -> torch.Generator:
    """A private generator on ``device`` seeded for (seed, step, rank)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(route_seed(seed, step, rank))
    return generator


def routed_flops_saved(
    config: DenoiserConfig, image_tokens: int, text_tokens: int, routes: Sequence[tuple[int, int, float]]
) -> float:
    """Training FLOPs per image that ``routes`` ((start, end, keep), blocks inclusive) remove."""
    saved = 0.0
    for start, end, keep in routes:
        per_block = block_forward_flops(config, image_tokens, text_tokens) - block_forward_flops(
            config, kept_count(image_tokens, keep), text_tokens
        )
        saved += (end - start + 1) * per_block
    return TRAIN_MULTIPLIER * saved
