"""``prx cost RECIPE``: FLOPs per image per phase, projected throughput, GPU-hours and dollars."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from prx_core.cli.common import add_recipe_arguments, load_from_args
from prx_core.measure.cost import (
    DEFAULT_TEXT_DIM,
    PEAK_BF16_TFLOPS,
    estimate_cost,
    load_measurements,
    render_cost_report,
)
from prx_core.plan import model_config
from prx_core.techniques import TechniqueSet
from prx_core.types import RunContext


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cost",
        help="project the FLOPs, throughput, GPU-hours and dollars of a recipe",
        description=(
            "Count training FLOPs per image for each phase (the denoiser plus every active technique's cost "
            "terms), turn them into images/s with an assumed MFU or a measured throughput, and compare the "
            "GPU-hours and dollars with Photoroom's reference run (32 H200, 24 h)."
        ),
        epilog="Example: prx cost recipes/speedrun.toml --gpu h200 --gpus 32 --price 2 --mfu 0.35",
    )
    add_recipe_arguments(p)
    p.add_argument("--gpu", choices=sorted(PEAK_BF16_TFLOPS), default="h100", help="GPU kind (sets the bf16 peak)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (default: 1)")
    p.add_argument("--price", type=float, default=2.0, metavar="USD", help="dollars per GPU-hour (default: 2)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation, e.g. 0.35 (default 0.35)")
    source.add_argument("--measured", type=Path, metavar="BENCH.json",
                        help="measured images/s per GPU (`prx bench` output, or the reference step's JSON lines)")
    p.add_argument("--text-dim", type=int, help="text encoder width (default: [text] dim, else 2304)")
    p.set_defaults(func=cost)


def cost(args: argparse.Namespace) -> int:
    recipe, registry = load_from_args(args)
    config = model_config(recipe, args.text_dim or recipe.text.dim or DEFAULT_TEXT_DIM)
    techniques = TechniqueSet(recipe, registry, RunContext(recipe=recipe, seed=recipe.seed), config)
    measured = load_measurements(args.measured) if args.measured else ()
    report = estimate_cost(recipe, techniques, args.gpu, args.gpus, args.price, args.mfu, measured)
    Console(highlight=False).print(render_cost_report(report))
    return 0
