"""``prx export RUN --out ...``: a run's EMA weights as one safetensors file or as diffusers models."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's EMA weights to a safetensors file or a diffusers folder",
        description="Write the EMA weights of a checkpoint (one file, or FSDP2 shards, consolidated here on one "
                    "process). --format safetensors (default): full tensors in one file that also carries the run's "
                    "recipe and step; `prx sample FILE.safetensors` samples from it. --format diffusers: a folder "
                    "that Hugging Face diffusers loads: a PRXPixelPipeline (transformer, scheduler with the run's "
                    "time shift, text encoder, tokenizer) when the run's text encoder can be saved on its own, "
                    "otherwise the PRXTransformer2DModel alone. Needs pip install 'prx[diffusers]'.",
        epilog="Example: prx export runs/quickstart --out ema.safetensors\n"
               "Example: prx export runs/quickstart --format diffusers --out quickstart-diffusers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="run folder (runs/NAME), its checkpoints/ folder or one step folder")
    p.add_argument("--out", type=Path, required=True,
                   help="the safetensors file (--format safetensors) or the new folder (--format diffusers) to write")
    p.add_argument("--format", choices=("safetensors", "diffusers"), default="safetensors",
                   help="safetensors: one file for prx (default); diffusers: a folder for diffusers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "safetensors":
        from prx_core.export import export_ema

        out, step = export_ema(args.checkpoint, args.out)
        print(f"wrote the EMA weights of step {step} to {out}")
        return 0
    from prx_core.diffusers_format.export import export_diffusers
    from prx_core.diffusers_format.usage import describe

    print(describe(export_diffusers(args.checkpoint, args.out)))
    return 0
