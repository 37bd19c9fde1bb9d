"""What the CPU benchmark scripts share: the model-shape arguments and a synthetic batch."""
from __future__ import annotations

import argparse

import torch

from prx_core.model.config import PRESETS, DenoiserConfig

TEXT_DIM = 384


def add_model_arguments(parser: argparse.ArgumentParser, resolution: int, reps: int, warmup: int) -> None:
    parser.add_argument("--preset", default="prx-small", choices=sorted(PRESETS))
    parser.add_argument("--resolution", type=int, default=resolution)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=reps, help="timed repetitions of each configuration")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")


def model_config(args: argparse.Namespace) -> DenoiserConfig:
    """Apply ``--threads`` and seed torch, then the denoiser shape of ``--preset``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return DenoiserConfig(**PRESETS[args.preset], text_dim=TEXT_DIM)


def synthetic_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean images in [-1, 1], random text embeddings and an all-true text mask."""
    x0 = torch.rand(args.batch, 3, args.resolution, args.resolution) * 2 - 1
    text = torch.randn(args.batch, args.text_tokens, TEXT_DIM)
    mask = torch.ones(args.batch, args.text_tokens, dtype=torch.bool)
    return x0, text, mask
