"""``prx bench RECIPE``: step throughput of the dense baseline, each technique alone and the full
recipe, on synthetic batches, in one process (a rich table and a JSON file)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prx_core.cli.common import add_recipe_arguments, load_from_args
from prx_core.distributed import pick_device
from prx_core.errors import UserError
from prx_core.measure.bench import COMBOS, BenchResult, default_shape, plugin_combos, run_bench


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the training step: dense baseline, each technique alone, the full recipe",
        description=(
            "Build the recipe's trainer (model, techniques, optimizers, [train] compile and precision) with random "
            "text embeddings and time its optimizer step on a synthetic batch already on the device: images/s, "
            "step ms, the ratio to the dense baseline timed in the same process, each optimizer's share and the "
            "peak memory (CUDA). The shape defaults to the first phase's resolution and micro-batch, with "
            "gradient accumulation up to its global batch on one device (which amortises Muon's once-per-step "
            "work as a real run does)."
        ),
        epilog="Example: prx bench recipes/quickstart.toml --steps 5 --combos baseline,full",
    )
    add_recipe_arguments(p)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per combination (default: 5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps of one micro-batch first: compilation, optimizer state (default: 2)")
    p.add_argument("--combos", default=",".join(COMBOS), metavar="LIST",
                   help="which rows, comma-separated from baseline, each, full (default: all three)")
    p.add_argument("--resolution", type=int, help="square image side in px (default: the first phase's)")
    p.add_argument("--micro-batch", type=int, help="images per forward pass (default: the recipe's micro-batch)")
    p.add_argument("--accumulation", type=int,
                   help="micro-batches per optimizer step (default: up to the phase's global batch)")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak of the card for MFU (default on CUDA: 989, H100)")
    p.add_argument("--out", type=Path, metavar="FILE.json",
                   help="where to write the results (default: RUNS_DIR/bench/NAME.json), which "
                        "`prx cost --measured` reads")
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    recipe, registry = load_from_args(args)
    combos = plugin_combos(recipe, registry, [c.strip() for c in args.combos.split(",") if c.strip()])
    shape = default_shape(recipe, registry, args.resolution, args.micro_batch, args.accumulation)
    device = pick_device(recipe.train.device)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # a file gets the whole table
    console.print(f"bench '{recipe.name}' on {device}: {shape.resolution}px, {shape.micro_batch} images x "
                  f"{shape.accumulation} micro-batches per step, {args.warmup} warm-up + {args.steps} timed steps, "
                  f"compile {'on' if recipe.train.compile else 'off'}")

    def done(result: BenchResult) -> None:
        what = f"failed: {result.failed}" if result.failed else f"{result.images_per_s:.1f} images/s"
        console.print(f"  {result.combo}: {what}", markup=False)

    results = run_bench(recipe, registry, combos, shape, steps=args.steps, warmup=args.warmup, device=device,
                        peak_tflops=args.peak_tflops, done=done)
    console.print(render_table(results))
    for result in results:
        for site in result.host_sync_sites:
            console.print(f"  host sync in {result.combo}: {site}", markup=False, soft_wrap=True)
    out = args.out or Path(recipe.train.runs_dir) / "bench" / f"{recipe.name}.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "recipe": recipe.name, "device": str(device), "torch": torch.__version__,
            "shape": {"resolution": shape.resolution, "micro_batch": shape.micro_batch,
                      "accumulation": shape.accumulation},
            "steps": args.steps, "warmup": args.warmup,
            "results": [r.to_json() for r in results],
        }, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"cannot write the bench results to {out}: {error.strerror}. Pass --out FILE.json.") from None
    console.print(f"results: {out}")
    return 0


def render_table(results: list[BenchResult]) -> Table:
    """One row per combination: throughput, time, ratio to the baseline, optimizer share, memory."""
    table = Table(title="training step", title_justify="left")
    for column in ("combination", "techniques", "images/s", "step ms", "x baseline", "optimizer ms (share)",
                   "loss terms ms", "host syncs", "peak MiB", "MFU", "warm-up s"):
        table.add_column(column, justify="left" if column in ("combination", "techniques") else "right")
    for r in results:
        techniques = ", ".join(r.plugins) or "(none)"
        if r.failed:
            table.add_row(r.combo, techniques, f"failed: {r.failed}", *[""] * 8)
            continue
        optimizers = ", ".join(f"{k} {v:.1f} ({v / r.step_ms:.0%})" for k, v in r.optimizer_ms.items())
        terms = ", ".join(f"{k} {v:.1f}" for k, v in r.term_ms.items()) or "-"
        table.add_row(
            r.combo, techniques, f"{r.images_per_s:.1f}", f"{r.step_ms:.1f}",
            f"{r.ratio:.2f}" if r.ratio is not None else "-", optimizers, terms,
            str(r.host_syncs) if r.host_syncs is not None else "-",
            f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-",
            f"{r.mfu:.1%}" if r.mfu is not None else "-", f"{r.warmup_s:.1f}",
        )
    return table
