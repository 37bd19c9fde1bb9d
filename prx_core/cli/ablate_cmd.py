"""``prx ablate RECIPE --vary ...``: plan, run (resumably, several at a time) and report an ablation."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prx_core.ablation.bench_budget import BENCH_FILE, Throughput, load_throughput
from prx_core.ablation.design import (
    DESIGNS,
    PLAN_FILE,
    AblationPlan,
    budget_overrides,
    budget_seconds,
    check_common,
    design_variants,
    parse_vary,
    split_valid,
)
from prx_core.ablation.cluster import SlurmOptions, run_cluster
from prx_core.ablation.report import build_report
from prx_core.ablation.runner import DEFAULT_LAUNCHER, run_ablation
from prx_core.cli.common import add_set_argument
from prx_core.distributed import pick_device
from prx_core.errors import PluginError, RecipeError, UserError
from prx_core.measure.throughput import CLOCKS, measure_quietly
from prx_core.plan import model_config
from prx_core.recipe.loader import load_recipe
from prx_core.recipe.schema import Recipe
from prx_core.registry import discover, selection_problems, unknown_technique_problems
from prx_core.techniques import TechniqueSet
from prx_core.types import RunContext


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate",
        help="run a recipe with techniques or settings varied, over seeds, and report against a reference",
        description=(
            "Plan the runs of a design (factorial; one-at-a-time from a baseline without the varied techniques; "
            "leave-one-out from the full recipe; add-and-remove: the baseline, each technique added alone, the "
            "full recipe and the full recipe without each), run each as `python -m prx_core run` into one "
            "ablation folder, and write results.csv, results.json, report.md and plots/. Finished runs "
            "(summary.json present) are skipped, so the same command continues an ablation; --resume also "
            "continues runs that were killed. Budgets: steps (every run trains the recipe's steps), "
            "bench:SECONDS (equal wall-clock, also on a shared machine: see the bench budget options) or "
            "wall:SECONDS (every run stops after SECONDS; fair on a quiet machine only). With [eval] every set "
            "in the recipe, the report plots prompt following against training time."
        ),
        epilog="Example: prx ablate recipes/quickstart.toml --vary tread,repa --seeds 2 (baseline, +tread, +repa)",
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
    p.add_argument("--anchor-seeds", type=int, metavar="K",
                   help="seeds for the anchors (the reference, and in add-and-remove also the full recipe), which "
                        "every comparison involves (default: --seeds)")
    p.add_argument("--budget", default="steps", metavar="steps|bench:SECONDS|wall:SECONDS",
                   help="equal steps (the recipe's), equal wall-clock from measured throughput (bench:480) or "
                        "a wall-clock limit per run (wall:480) (default: steps)")
    add_set_argument(p, "override a recipe value in every run (repeatable), e.g. --set train.steps=300")
    p.add_argument("--out", type=Path, help="ablation folder (default: [train] runs_dir/ablate-NAME-DESIGN)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at once; each gets cores/N CPU threads and cores (default: 1)")
    p.add_argument("--resume", action="store_true", help="continue runs that were interrupted (prx run --resume)")
    p.add_argument("--launcher", default=" ".join(DEFAULT_LAUNCHER), metavar="CMD",
                   help="command that runs `run RECIPE ...` (default: this python -m prx_core; e.g. "
                        "'torchrun --nproc-per-node 8 -m prx_core' for multi-GPU runs)")
    p.add_argument("--plan-only", action="store_true", help="print the planned runs and stop")
    bench = p.add_argument_group(
        "bench budget (--budget bench:SECONDS)",
        "Before the first run, every variant's real training step (its recipe, data and text encoder) is timed "
        "side by side in this process, in interleaved rounds with the 1-minute load average recorded; each "
        "variant then trains the steps its throughput buys in SECONDS ([train] phase_steps), whatever the load "
        "while it trains. The measurement is kept in ABLATION/bench.json and reused when the ablation continues. "
        "Example: prx ablate recipes/quickstart.toml --vary tread+tread_guidance,repa,muon --design add-and-remove "
        "--seeds 2 --anchor-seeds 3 --budget bench:480 --parallel 2")
    bench.add_argument("--bench-clock", choices=CLOCKS,
                       help="wall: the wall-clock of this process's threads, what a user sees on a quiet machine "
                            "(the measurement waits for one); cpu: the CPU time of one thread, which a busy machine "
                            "does not inflate, so the budget is seconds of one core (default: wall)")
    bench.add_argument("--bench-rounds", type=int, metavar="R",
                       help="interleaved rounds; each phase's step time is the median over them (default: 5)")
    bench.add_argument("--bench-steps", type=int, metavar="N",
                       help="timed optimizer steps per phase and round (default: 3)")
    bench.add_argument("--bench-max-load", type=float, metavar="LOAD",
                       help="a measurement during which the 1-minute load average exceeded LOAD is repeated after "
                            "waiting for a quieter machine (default: this process's threads + 1)")
    bench.add_argument("--bench-attempts", type=int, metavar="N",
                       help="measurements at most; the one under the lowest load is kept (default: 3)")
    bench.add_argument("--bench-wait", type=float, metavar="MINUTES",
                       help="how long to wait for a quieter machine between attempts (default: 10)")
    cluster = p.add_argument_group(
        "cluster (--executor slurm)",
        "Each unfinished run becomes one task of one SLURM array job (submitit), with torchrun inside for several "
        "GPUs. The job ids are kept in ABLATION/slurm/jobs.json: run the same command again (after the submitting "
        "process died, or with --detach) to wait for queued and running jobs without resubmitting them; jobs that "
        "ended without finishing are resubmitted with prx run --resume only when --resume is given. The ablation "
        "folder must be on storage every node sees. Example: prx ablate recipes/quickstart.toml --vary tread,repa "
        "--executor slurm --partition gpu --time 4:00:00 --gpus-per-job 8 --account mylab --detach")
    cluster.add_argument("--executor", choices=("local", "slurm"), default="local",
                         help="local: subprocesses on this machine (default); slurm: one array job through submitit")
    cluster.add_argument("--partition", default="", help="SLURM partition (sbatch --partition)")
    cluster.add_argument("--time", default="24:00:00", metavar="[D-]HH:MM:SS|MINUTES",
                         help="time limit per job (default: 24:00:00); a job that reaches it is requeued and resumes")
    cluster.add_argument("--gpus-per-job", type=int, default=1, metavar="G",
                         help="GPUs per node for each run (default: 1); above 1 the run is launched with torchrun")
    cluster.add_argument("--nodes-per-job", type=int, default=1, metavar="N",
                         help="nodes per run (default: 1); torchrun's rendezvous is on the job's first node")
    cluster.add_argument("--cpus-per-gpu", type=int, default=8, metavar="C",
                         help="CPU cores per GPU, for the data loader workers (default: 8; with 0 GPUs, per job)")
    cluster.add_argument("--mem-gb", type=int, metavar="GB", help="memory per node (default: the partition's)")
    cluster.add_argument("--account", default="", help="SLURM account to charge (sbatch --account)")
    cluster.add_argument("--qos", default="", help="SLURM quality of service (sbatch --qos)")
    cluster.add_argument("--constraint", default="", help="node features, e.g. h100 (sbatch --constraint)")
    cluster.add_argument("--max-running", type=int, default=0, metavar="K",
                         help="at most K runs of the array at once (sbatch --array=...%%K; default: all)")
    cluster.add_argument("--sbatch", action="append", default=[], metavar="KEY[=VALUE]",
                         help="any other sbatch option, repeatable, e.g. --sbatch mail-type=END --sbatch exclusive")
    cluster.add_argument("--setup", action="append", default=[], metavar="LINE",
                         help="a shell line run in each job before prx, repeatable, e.g. --setup 'module load cuda'")
    cluster.add_argument("--detach", action="store_true",
                         help="submit and return; run the same command again later to collect the runs and report")
    cluster.add_argument("--slurm-cluster", choices=("slurm", "local"), default="slurm",
                         help="local: submitit's local executor runs the same jobs as processes on this machine "
                              "(to try the pipeline without a cluster)")
    p.set_defaults(func=ablate)


def parse_time(text: str) -> int:
    """``[D-]HH:MM[:SS]`` or minutes -> minutes (rounded up), as sbatch --time reads it."""
    try:
        if ":" not in text:
            minutes = float(text)
        else:
            days, _, clock = text.rpartition("-")
            parts = [float(part) for part in clock.split(":")]
            hours, mins, secs = (parts + [0.0])[:3] if len(parts) == 2 else parts
            minutes = (float(days or 0) * 24 + hours) * 60 + mins + secs / 60
    except ValueError:
        minutes = -1
    if minutes <= 0:
        raise UserError(f"--time '{text}': give the time limit per job as HH:MM:SS, D-HH:MM:SS or minutes, "
                        "e.g. --time 4:00:00.")
    return int(-(-minutes // 1))


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    if args.parallel != 1:
        raise UserError("--parallel sets local runs at once; with --executor slurm use --max-running.")
    if budget_seconds(args.budget)[0] == "bench":
        raise UserError(f"--budget {args.budget} times every variant on this machine, which with --executor slurm is "
                        f"not where the runs train. On a cluster's own nodes use --budget wall:SECONDS (each run "
                        f"stops after SECONDS of training) or --budget steps.")
    for name in ("gpus_per_job", "cpus_per_gpu", "max_running"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(args, name)}).")
    if args.nodes_per_job < 1:
        raise UserError(f"--nodes-per-job must be at least 1 (got {args.nodes_per_job}).")
    return SlurmOptions(
        cluster=args.slurm_cluster, partition=args.partition, time_min=parse_time(args.time),
        gpus_per_job=args.gpus_per_job, nodes=args.nodes_per_job, cpus_per_gpu=args.cpus_per_gpu,
        mem_gb=args.mem_gb, account=args.account, qos=args.qos, constraint=args.constraint,
        max_running=args.max_running, sbatch=tuple(args.sbatch), setup=tuple(args.setup),
        poll_s=30.0 if args.slurm_cluster == "slurm" else 0.5,
    )


CLUSTER_ONLY = ("partition", "account", "qos", "constraint", "sbatch", "setup", "detach", "mem_gb")


BENCH_DEFAULTS = {"bench_clock": "wall", "bench_rounds": 5, "bench_steps": 3, "bench_max_load": None,
                  "bench_attempts": 3, "bench_wait": 10.0}
"""The bench budget's options and their defaults (None: derived from the clock when measuring)."""


def check_bench_options(args: argparse.Namespace, kind: str) -> None:
    """Refuse bench options without a bench budget (they would be ignored), then fill in the defaults."""
    given = [f"--{name.replace('_', '-')}" for name in BENCH_DEFAULTS if getattr(args, name) is not None]
    if given and kind != "bench":
        raise UserError(f"{', '.join(given)} {'sets' if len(given) == 1 else 'set'} how a bench budget measures each "
                        f"variant's throughput, but --budget is {args.budget}, which measures nothing. Use --budget "
                        f"bench:SECONDS (e.g. bench:480) or drop {'it' if len(given) == 1 else 'them'}.")
    for name, default in BENCH_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def check_local_options(args: argparse.Namespace) -> None:
    given = [name for name in CLUSTER_ONLY if getattr(args, name)]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} applies to --executor slurm; add --executor slurm or drop it.")


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
    if args.pairs and args.design in ("factorial", "add-and-remove"):
        raise UserError("--pairs adds pair runs to one-at-a-time and leave-one-out designs; factorial has them, "
                        "and add-and-remove measures each technique against all the others instead.")
    variants, skipped = split_valid(design_variants(recipe.plugins, factors, args.design, args.pairs),
                                    lambda plugins: selection_problems(plugins, registry, "the variant's plugins"))
    kind, _ = budget_seconds(args.budget)
    check_bench_options(args, kind)
    if kind == "bench" and any(item.partition("=")[0].strip() == "train.phase_steps" for item in args.overrides):
        raise UserError("--set train.phase_steps: a bench budget sets each variant's phase steps itself; drop "
                        "the --set, or use --budget steps.")
    variant_recipes(args.recipe, args.overrides, variants, registry, budget_overrides(args.budget))
    seeds = tuple(recipe.seed + i for i in range(args.seeds))
    anchor_seeds = ()
    if args.anchor_seeds is not None:
        if args.anchor_seeds < args.seeds:
            raise UserError(f"--anchor-seeds ({args.anchor_seeds}) must be at least --seeds ({args.seeds}).")
        anchor_seeds = tuple(recipe.seed + i for i in range(args.anchor_seeds))
    plan = AblationPlan(str(Path(args.recipe).resolve()), args.design, tuple(factors), seeds, args.budget,
                        tuple(args.overrides), tuple(variants), tuple(skipped), anchor_seeds)
    return plan, recipe


def variant_recipes(recipe: str, common: list[str], variants, registry, extra: tuple[str, ...] = ()) -> dict[
        str, Recipe]:
    """Each variant's resolved recipe, checked as `prx run` would (a bad one names the variant)."""
    out = {}
    for variant in variants:
        try:
            resolved = load_recipe(recipe, [*common, *variant.overrides, *extra], registry)
            TechniqueSet(resolved, registry, RunContext(recipe=resolved, seed=resolved.seed), model_config(resolved))
        except (RecipeError, PluginError) as err:
            raise UserError(f"variant '{variant.name}' is not a valid recipe:\n{err}") from None
        out[variant.name] = resolved
    return out


def bench_throughput(args: argparse.Namespace, plan: AblationPlan, folder: Path, console: Console) -> Throughput:
    """The folder's stored measurement, or a new one written to bench.json."""
    registry = discover()
    _, seconds = budget_seconds(plan.budget)
    recipes = variant_recipes(plan.recipe, list(plan.common), plan.variants, registry)
    stored = load_throughput(folder, recipes, registry, seconds, args.bench_clock)
    if stored is not None:
        console.print(f"throughput: {folder / BENCH_FILE} (measured {stored.chosen.started})", markup=False)
        return stored
    threads = 1 if args.bench_clock == "cpu" else torch.get_num_threads()
    max_load = args.bench_max_load if args.bench_max_load is not None else threads + 1.0
    console.print(f"measuring the training step of {len(recipes)} variants with {threads} thread(s) on the "
                  f"{args.bench_clock} clock: {args.bench_rounds} interleaved rounds of {args.bench_steps} steps per "
                  f"phase", markup=False)
    attempts = measure_quietly(recipes, registry, rounds=args.bench_rounds, steps=args.bench_steps, max_load=max_load,
                               attempts=args.bench_attempts, wait_s=60 * args.bench_wait,
                               device=pick_device(next(iter(recipes.values())).train.device), clock=args.bench_clock,
                               log=lambda message: console.print("  " + message, markup=False))
    measured = Throughput(seconds, max_load, attempts)
    (folder / BENCH_FILE).write_text(measured.to_json())
    if not measured.quiet:
        console.print(f"warning: every measurement ran under a 1-minute load above {max_load:g} (lowest: "
                      f"{measured.chosen.max_load:g}); the report says so. For a clean one, delete "
                      f"{folder / BENCH_FILE} and rerun when the machine is quieter.", markup=False)
    return measured


def throughput_table(throughput: Throughput) -> Table:
    steps = throughput.phase_steps()
    table = Table(title=f"steps in {throughput.budget_s:g} s of training ({throughput.clock} clock), from the measured "
                        f"throughput",
                  title_justify="left")
    for column in ("variant", "images/s per phase", "steps per phase", "seconds"):
        table.add_column(column)
    for name, speeds in throughput.chosen.variants.items():
        table.add_row(name, ", ".join(f"{p.phase} {p.images_per_s:.1f}" for p in speeds),
                      ", ".join(str(n) for n in steps[name]), f"{throughput.seconds_at(name, sum(steps[name])):.0f}")
    return table


def ablate(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    options = slurm_options(args) if args.executor == "slurm" else check_local_options(args)
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
    seeds = f"{len(plan.seeds)} seeds" + (f" ({len(plan.anchor_seeds)} for {', '.join(plan.anchors)})"
                                          if plan.anchor_seeds else "")
    table = Table(title=f"{len(specs)} runs: {len(plan.variants)} variants x {seeds} ({plan.design})",
                  title_justify="left")
    for column in ("variant", "plugins", "overrides"):
        table.add_column(column)
    for v in plan.variants:
        table.add_row(v.name, ", ".join(v.plugins) or "(none)", " ".join(v.overrides[1:]))
    console.print(table)
    for name, why in plan.skipped:
        console.print(f"skipped variant {name}: {why}", markup=False)
    bench = budget_seconds(plan.budget)[0] == "bench"
    if args.plan_only:
        if bench and (folder / BENCH_FILE).is_file():
            console.print(throughput_table(bench_throughput(args, plan, folder, console)))
        elif bench:
            console.print("the steps of each variant come from the throughput measured when the ablation starts",
                          markup=False)
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    stored.write_text(plan.to_json())
    if bench:
        throughput = bench_throughput(args, plan, folder, console)
        console.print(throughput_table(throughput))
        specs = plan.runs(throughput.phase_steps())
    if options is None:
        outcomes = run_ablation(folder, plan.recipe, specs, args.parallel, args.resume, shlex.split(args.launcher),
                                console)
    else:
        outcomes = run_cluster(folder, plan.recipe, specs, options, args.resume, args.detach,
                               shlex.split(args.launcher), console)
        if len(outcomes) < len(specs):  # detached: the report waits for every run
            return 0
    report = build_report(folder)
    failed = [o for o in outcomes if o.status in ("failed", "interrupted")]
    console.print(f"report: {report}", markup=False)
    for outcome in failed:
        console.print(f"{outcome.status}: {outcome.spec.variant} seed {outcome.spec.seed} (log: {outcome.log}); "
                      f"rerun with --resume to continue it", markup=False)
    return 1 if failed else 0
