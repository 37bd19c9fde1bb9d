"""``prx run RECIPE``: train (or, with --dry-run, validate and print the plan)."""
from __future__ import annotations

import argparse
from pathlib import Path

from prx_core.cli.common import add_recipe_arguments, load_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="train a recipe (or validate and plan it with --dry-run)",
        description=(
            "Train the recipe into a run folder (runs/NAME by default): resolved recipe, metrics.jsonl, "
            "checkpoints, sample grids, eval.json and summary.json. Ctrl-C writes a checkpoint; --resume "
            "continues exactly. Under torchrun (torchrun --nproc-per-node N -m prx_core run RECIPE) the same "
            "recipe trains on N processes."
        ),
        epilog="Example: prx run recipes/quickstart.toml --set train.steps=200   (plan a cluster run here: prx run "
        "recipes/speedrun.toml --dry-run --gpus 32 --skip-local-checks)",
    )
    add_recipe_arguments(p)
    p.add_argument("--run-dir", type=Path, help="run folder (default: [train] runs_dir / recipe name)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the recipe and print phases, batches, parameters, FLOPs and cost; train nothing")
    p.add_argument("--gpus", type=int, default=1, help="with --dry-run: processes (GPUs) to plan the batch split and "
                   "cost for")
    p.add_argument("--gpu", default="h200", choices=("h100", "h200", "a100"), help="with --dry-run: GPU type for the "
                   "cost estimate")
    p.add_argument("--price", type=float, default=2.0, help="with --dry-run: USD per GPU-hour")
    p.add_argument("--skip-local-checks", action="store_true",
                   help="with --dry-run: plan for another machine, leaving out the checks of this one (device, data "
                   "paths, text encoder and metric weights), e.g. a cluster run planned on a laptop")
    p.add_argument("--plain", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe, registry = load_from_args(args)
    if args.dry_run:
        from prx_core.measure.dry_run import print_plan

        print_plan(recipe, registry, gpus=args.gpus, gpu=args.gpu, price=args.price,
                   local_checks=not args.skip_local_checks)
        return 0
    from prx_core.train.loop import run_training

    run_dir = args.run_dir or Path(recipe.train.runs_dir) / recipe.name
    run_training(recipe, registry, run_dir, resume=args.resume, interactive=False if args.plain else None)
    return 0
