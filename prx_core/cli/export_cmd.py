"""``prx export RUN --out ema.safetensors``: the consolidated EMA weights of a run."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's EMA weights to one safetensors file",
        description="Write the EMA weights of a checkpoint (one file, or FSDP2 shards, consolidated here on one "
                    "process) as full tensors to a safetensors file that also carries the run's recipe and step. "
                    "`prx sample FILE.safetensors` samples from it on one device.",
        epilog="Example: prx export runs/quickstart --out ema.safetensors",
    )
    p.add_argument("checkpoint", help="run folder (runs/NAME), its checkpoints/ folder or one step folder")
    p.add_argument("--out", type=Path, required=True, help="the safetensors file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prx_core.export import export_ema

    out, step = export_ema(args.checkpoint, args.out)
    print(f"wrote the EMA weights of step {step} to {out}")
    return 0
