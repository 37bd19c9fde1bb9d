"""``prx ablate RECIPE --vary ...``: plan, run (resumably, several at a time) and report an ablation."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prx_core.ablation.design import (
    DESIGNS,
    PLAN_FILE,
    AblationPlan,
    budget_overrides,
    check_common,
    design_variants,
    parse_vary,
    split_valid,
)
from prx_core.ablation.report import build_report
from prx_core.ablation.runner import DEFAULT_LAUNCHER, run_ablation
from prx_core.cli.common import add_set_argument
from prx_core.errors import PluginError, RecipeError, UserError
from prx_core.plugins import TechniqueSet, discover, selection_problems, unknown_technique_problems
from prx_core.recipe.loader import load_recipe
from prx_core.recipe.schema import Recipe
from prx_core.types import RunContext


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate",
        help="run a recipe with techniques or settings varied, over seeds, and report against a reference",
        description=(
            "Plan the runs of a design (factorial, one-at-a-time from a baseline without the varied techniques, "
            "or leave-one-out from the full recipe), run each as `python -m prx_core run` into one ablation "
            "folder, and write results.csv, results.json, report.md and plots/. Finished runs (summary.json "
            "present) are skipped, so the same command continues an ablation; --resume also continues runs "
            "that were killed."
        ),
        epilog="Example: prx ablate recipes/quickstart.toml --vary tread,repa --design leave-one-out --seeds 3",
    )
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--vary", action="append", default=[], required=True, metavar="SPEC",
                   help="techniques to switch (tread,repa; tread+tread_guidance switches both together) or a "
                        "key with values (optim.lr=1e-4,3e-4); repeatable")
    p.add_argument("--design", choices=DESIGNS, default="one-at-a-time",
                   help="which combinations run (default: one-at-a-time)")
    p.add_argument("--pairs", action="store_true",
                   help="one-at-a-time / leave-one-out: also run every pair of changes (for the interaction table)")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="seeds per variant: the recipe's seed + 0..K-1")
    p.add_argument("--budget", default="steps", metavar="steps|wall:SECONDS",
                   help="equal steps ([train] steps) or equal wall-clock per run (default: steps)")
    add_set_argument(p, "override a recipe value in every run (repeatable), e.g. --set train.steps=300")
    p.add_argument("--out", type=Path, help="ablation folder (default: [train] runs_dir/ablate-NAME-DESIGN)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at once; each gets cores/N CPU threads and cores (default: 1)")
    p.add_argument("--resume", action="store_true", help="continue runs that were interrupted (prx run --resume)")
    p.add_argument("--launcher", default=" ".join(DEFAULT_LAUNCHER), metavar="CMD",
                   help="command that runs `run RECIPE ...` (default: this python -m prx_core; e.g. "
                        "'torchrun --nproc-per-node 8 -m prx_core' for multi-GPU runs)")
    p.add_argument("--plan-only", action="store_true", help="print the planned runs and stop")
    p.set_defaults(func=ablate)


def make_plan(args: argparse.Namespace) -> tuple[AblationPlan, Recipe]:
    """Validate everything before the first run: the recipe, the factors, every variant's recipe."""
    registry = discover()
    recipe = load_recipe(args.recipe, args.overrides, registry)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1 (got {args.seeds}).")
    factors = parse_vary(args.vary)
    check_common(args.overrides, factors)
    unknown = unknown_technique_problems(sorted({n for f in factors for n in f.plugins}), registry, "--vary")
    if unknown:
        raise UserError("\n\n".join(unknown))
    trackers = sorted({n for f in factors for n in f.plugins} & set(registry.trackers))
    if trackers:
        raise UserError(f"--vary names {', '.join(trackers)}: {'it is a tracker' if len(trackers) == 1 else 'trackers'}"
                        f", which records runs and cannot change training, so there is nothing to compare. Put "
                        f"trackers in the recipe's plugins (or --set plugins=[...]): every variant keeps them.")
    if args.pairs and args.design == "factorial":
        raise UserError("--pairs adds pair runs to one-at-a-time and leave-one-out designs; factorial has them.")
    variants, skipped = split_valid(design_variants(recipe.plugins, factors, args.design, args.pairs),
                                    lambda plugins: selection_problems(plugins, registry, "the variant's plugins"))
    budget = budget_overrides(args.budget)
    for variant in variants:
        try:
            resolved = load_recipe(args.recipe, [*args.overrides, *variant.overrides, *budget], registry)
            TechniqueSet(resolved, registry, RunContext(recipe=resolved, seed=resolved.seed))
        except (RecipeError, PluginError) as err:
            raise UserError(f"variant '{variant.name}' is not a valid recipe:\n{err}") from None
    seeds = tuple(recipe.seed + i for i in range(args.seeds))
    plan = AblationPlan(str(Path(args.recipe).resolve()), args.design, tuple(factors), seeds, args.budget,
                        tuple(args.overrides), tuple(variants), tuple(skipped))
    return plan, recipe


def ablate(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    plan, recipe = make_plan(args)
    folder = args.out or Path(recipe.train.runs_dir) / f"ablate-{recipe.name}-{args.design}"
    stored = folder / PLAN_FILE
    if stored.is_file():
        previous = AblationPlan.from_json(stored.read_text())
        if previous != plan:
            raise UserError(f"{folder} holds a different ablation ({previous.design} of {previous.recipe}, "
                            f"{len(previous.variants)} variants, seeds {list(previous.seeds)}). Repeat its arguments "
                            f"to continue it, or choose another --out.")
    specs = plan.runs()
    table = Table(title=f"{len(specs)} runs: {len(plan.variants)} variants x {len(plan.seeds)} seeds ({plan.design})",
                  title_justify="left")
    for column in ("variant", "plugins", "overrides"):
        table.add_column(column)
    for v in plan.variants:
        table.add_row(v.name, ", ".join(v.plugins) or "(none)", " ".join(v.overrides[1:]))
    console.print(table)
    for name, why in plan.skipped:
        console.print(f"skipped variant {name}: {why}", markup=False)
    if args.plan_only:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    stored.write_text(plan.to_json())
    outcomes = run_ablation(folder, plan.recipe, specs, args.parallel, args.resume, shlex.split(args.launcher),
                            console)
    report = build_report(folder)
    failed = [o for o in outcomes if o.status in ("failed", "interrupted")]
    console.print(f"report: {report}", markup=False)
    for outcome in failed:
        console.print(f"{outcome.status}: {outcome.spec.variant} seed {outcome.spec.seed} (log: {outcome.log}); "
                      f"rerun with --resume to continue it", markup=False)
    return 1 if failed else 0
