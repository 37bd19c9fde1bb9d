"""The ablation report, rebuilt from the ablation folder alone: ``results.csv``, ``results.json``,
``report.md`` (the measured throughput of a bench budget, outcomes against the reference, prompt
following by attribute, each technique alone and in the full recipe, loss terms, interactions)
and ``plots/``."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import attrs

from prx_core.ablation.bench_budget import BENCH_FILE, Throughput
from prx_core.ablation.design import PLAN_FILE, AblationPlan, Variant, budget_seconds
from prx_core.ablation.plots import (
    Clock,
    Effect,
    logged_clock,
    mean_curves,
    plot_curves,
    plot_effects,
    plot_quality,
    quality_curves,
)
from prx_core.ablation.results import collect, metric_columns, write_results
from prx_core.ablation.stats import Contrast, Spread, difference, interaction, relative, verdict
from prx_core.ablation.stats import __doc__ as RULE_DOC
from prx_core.errors import UserError
from prx_core.evaluation.checker import ATTRIBUTES, CHANCE

OUTCOME_ORDER = ("loss/diffusion", "prompt_following", "fd_pixels", "fd_efficientnet", "fid", "cmmd", "images_per_s",
                 "peak_mem_mb", "wall_s", "steps")
MARKS = {"better": " ▲", "worse": " ▼"}


@attrs.frozen
class InteractionRow:
    a: str
    b: str
    metric: str
    contrast: Contrast
    verdict: str


def load_plan(folder: Path) -> AblationPlan:
    path = folder / PLAN_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not an ablation folder: it has no {PLAN_FILE}. Give the folder that "
                        f"`prx ablate` created (its --out).")
    return AblationPlan.from_json(path.read_text())


def spreads_by_variant(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, Spread]]:
    """variant -> metric -> mean and spread over the variant's seeds."""
    variants = sorted({row["variant"] for row in rows})
    return {v: {m: Spread.of([row[m] for row in rows if row["variant"] == v and m in row]) for m in metrics}
            for v in variants}


def outcome_metrics(metrics: list[str]) -> list[str]:
    """The outcomes of the main table: the diffusion loss (the total when no term is logged, as
    auxiliary terms make totals incomparable), prompt following, distribution distances,
    throughput, memory, time and steps."""
    chosen = [m for m in OUTCOME_ORDER if m in metrics]
    if "loss/diffusion" not in metrics and "loss" in metrics:
        chosen.insert(0, "loss")
    return chosen + sorted(m for m in metrics if m.startswith("fd_") and m not in chosen)


def interactions(plan: AblationPlan, spreads: dict[str, dict[str, Spread]], metrics: list[str]) -> tuple[
        list[InteractionRow], list[str]]:
    """Interaction rows for every pair of changes whose four corner variants finished, and the
    pairs that lack a corner (named, so the user knows which runs to add)."""
    reference = plan.reference
    by_levels = {tuple(sorted(v.levels.items())): v.name for v in plan.variants}
    changes = [(f.key, level) for f in plan.factors for level in f.levels if level != reference.levels[f.key]]
    names = {(key, level): _change_name(plan, key, level) for key, level in changes}
    rows, missing = [], []
    for (ka, la), (kb, lb) in itertools.combinations(changes, 2):
        if ka == kb:
            continue
        corners = [dict(reference.levels), {**reference.levels, ka: la}, {**reference.levels, kb: lb},
                   {**reference.levels, ka: la, kb: lb}]
        found = [by_levels.get(tuple(sorted(c.items()))) for c in corners]
        label = (names[(ka, la)], names[(kb, lb)])
        if any(name is None or name not in spreads for name in found):
            missing.append(f"{label[0]} with {label[1]}")
            continue
        for metric in metrics:
            c = interaction(*(spreads[name][metric] for name in found))
            rows.append(InteractionRow(*label, metric, c, verdict(c, metric, "synergy", "interferes", "additive")))
    return rows, missing


def _change_name(plan: AblationPlan, key: str, level: str) -> str:
    factor = next(f for f in plan.factors if f.key == key)
    return (("+" if level == "on" else "-") + key) if factor.is_plugin else f"{key}={level}"


def _fmt(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _cell(spread: Spread, reference: Spread | None, metric: str) -> str:
    if spread.n == 0:
        return "—"
    text = _fmt(spread.mean) + (f" ± {spread.std:.2g}" if math.isfinite(spread.std) else "")
    if reference is None or reference.n == 0:
        return text
    c = difference(spread, reference)
    rel = relative(c.value, reference)
    change = f"{100 * rel:+.1f} %" if math.isfinite(rel) else f"{c.value:+.3g}"
    return f"{text} ({change}{MARKS.get(verdict(c, metric), '')})"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return lines


def variant_table(plan: AblationPlan, spreads: dict[str, dict[str, Spread]], metrics: list[str]) -> list[str]:
    reference = plan.reference.name
    order = [v for v in plan.variants if v.name in spreads]
    body = []
    for v in order:
        ref = None if v.name == reference else spreads.get(reference, {})
        body.append([f"**{v.name}**" if v.name == reference else v.name, "+".join(v.plugins) or "(none)",
                     str(max(s.n for s in spreads[v.name].values()) if spreads[v.name] else 0),
                     *(_cell(spreads[v.name][m], None if ref is None else ref.get(m), m) for m in metrics)])
    return _table(["variant", "plugins", "seeds", *metrics], body)


def effects(plan: AblationPlan, spreads: dict[str, dict[str, Spread]], metrics: list[str]) -> dict[str, list[Effect]]:
    """metric -> one bar per variant that changes a single factor."""
    reference = plan.reference.name
    if reference not in spreads:
        return {}
    out: dict[str, list[Effect]] = {}
    for metric in metrics:
        ref = spreads[reference][metric]
        bars = []
        for v in plan.variants:
            if len(v.changes) != 1 or v.name not in spreads or spreads[v.name][metric].n == 0 or ref.n == 0:
                continue
            c = difference(spreads[v.name][metric], ref)
            rel = relative(c.value, ref)
            if not math.isfinite(rel):
                continue
            error = 2 * c.se / abs(ref.mean) if c.se is not None else None
            bars.append(Effect(v.name, rel, error, verdict(c, metric)))
        out[metric] = bars
    return out


def _describe_plan(plan: AblationPlan, finished: int, missing: list[str]) -> list[str]:
    ref: Variant = plan.reference
    kind, seconds = budget_seconds(plan.budget)
    budget = {"steps": "equal steps",
              "wall": f"equal wall-clock, each run stopped after {seconds:g} s",
              "bench": f"equal wall-clock, {seconds:g} s of training per run: each variant trains the steps its "
                       f"measured throughput buys (see Throughput)"}[kind]
    factors = ", ".join(f.key if f.is_plugin else f"{f.key} ∈ {{{', '.join(f.levels)}}}" for f in plan.factors)
    seeds = ", ".join(map(str, plan.seeds))
    if plan.anchor_seeds:
        seeds += f" ({', '.join(map(str, plan.anchor_seeds))} for {' and '.join(plan.anchors)})"
    lines = [
        f"# Ablation of `{Path(plan.recipe).parent.name}/{Path(plan.recipe).name}`", "",
        f"- design: **{plan.design}**, factors: {factors}",
        f"- reference: **{ref.name}** (plugins: {', '.join(ref.plugins) or 'none'}"
        + "".join(f", {k} = {lvl}" for k, lvl in ref.levels.items() if not _is_plugin(plan, k)) + ")",
        f"- seeds: {seeds}; budget: {budget}"
        + (f"; common overrides: {', '.join(f'`{s}`' for s in plan.common)}" if plan.common else ""),
        f"- runs finished: {finished} of {finished + len(missing)}"
        + (f" (missing: {', '.join(missing)})" if missing else ""),
    ]
    lines += [f"- skipped variant **{name}**: {why}" for name, why in plan.skipped]
    return lines


def throughput_section(throughput: Throughput) -> list[str]:
    """How the bench budget's steps were measured, and what each variant got."""
    chosen, steps = throughput.chosen, throughput.phase_steps()
    clock = ("CPU time of the process (one thread), which other processes do not inflate, so the budget is "
             "seconds of one core's compute" if throughput.clock == "cpu" else
             f"wall-clock (limit of the load average {throughput.max_load:g})")
    lines = ["## Throughput", "",
             f"Measured {chosen.started} in one process with {chosen.threads} thread(s): {chosen.rounds} interleaved "
             f"rounds of {chosen.steps_per_round} optimizer steps per phase and variant (real batches, text "
             f"encoding, forward, backward, optimizers, EMA), the median per phase; {chosen.seconds:.0f} s. "
             f"Clock: {clock}. The 1-minute load average during the measurement: {min(chosen.load):.2f} to "
             f"{chosen.max_load:.2f}. Each run then trains a fixed number of steps, so the machine's load while it "
             f"trains does not change what it learns; the plotted time is these steps at this throughput."]
    if not throughput.quiet:
        lines += ["", f"**Warning**: no measurement ran on a quiet machine ({len(throughput.attempts)} attempts, "
                      f"lowest peak load {chosen.max_load:.2f}); the steps may favour variants that happened to "
                      f"be timed in quieter moments. Delete `{BENCH_FILE}` and the runs to measure again."]
    phases = [p.phase for p in next(iter(chosen.variants.values()))]
    body = []
    for name, speeds in chosen.variants.items():
        body.append([name, *(f"{p.images_per_s:.1f}" for p in speeds), " + ".join(map(str, steps[name])),
                     f"{throughput.seconds_at(name, sum(steps[name])):.0f}"])
    return ["", *lines, "", *_table(["variant", *(f"images/s {p}" for p in phases), "steps", "seconds"], body)]


def attribute_table(plan: AblationPlan, spreads: dict[str, dict[str, Spread]]) -> list[str]:
    """Prompt following by attribute, against the reference, with the checker's chance levels."""
    metrics = [m for m in ("prompt_following", *(f"prompt_following/{a}" for a in ATTRIBUTES))
               if any(m in per for per in spreads.values())]
    if not metrics:
        return []
    lines = ["", "## Prompt following by attribute", "",
             "The checker's chance levels: " + ", ".join(f"{a} {CHANCE[a]:.2f}" for a in ("overall", *ATTRIBUTES))
             + ".", ""]
    return lines + variant_table(plan, spreads, metrics)


@attrs.frozen
class TechniqueRow:
    """One technique of an add-and-remove design: its effect added to the baseline alone, its
    contribution to the full recipe (full minus full without it), and the difference."""

    technique: str
    metric: str
    alone: Contrast
    in_full: Contrast
    interaction: Contrast
    verdict: str


def technique_rows(plan: AblationPlan, spreads: dict[str, dict[str, Spread]], metrics: list[str]) -> list[TechniqueRow]:
    by_levels = {tuple(sorted(v.levels.items())): v.name for v in plan.variants}
    base = plan.reference.levels
    full = {key: "on" for key in base}
    rows = []
    for factor in plan.factors:
        corners = (base, {**base, factor.key: "on"}, full, {**full, factor.key: "off"})
        names = [by_levels.get(tuple(sorted(c.items()))) for c in corners]
        if not all(n in spreads for n in names):
            continue
        for metric in metrics:
            cells = [spreads[n][metric] for n in names]
            if any(c.n == 0 for c in cells):
                continue
            c = interaction(cells[0], cells[3], cells[1], cells[2])  # full - without - alone + base
            rows.append(TechniqueRow(factor.key, metric, difference(cells[1], cells[0]), difference(cells[2], cells[3]),
                                     c, verdict(c, metric, "synergy", "interferes", "additive")))
    return rows


def technique_section(rows: list[TechniqueRow]) -> list[str]:
    def effect(c: Contrast, metric: str) -> str:
        se = f" ± {2 * c.se:.2g}" if c.se is not None else ""
        return f"{c.value:+.4g}{se}{MARKS.get(verdict(c, metric), '')}"

    lines = ["", "## Each technique alone and in the full recipe", "",
             "*alone*: the variant with the technique added to the baseline minus the baseline; *in full*: the full "
             "recipe minus the full recipe without it (what the technique contributes there); ± 2·SE, ▲ / ▼ beyond "
             "the seed spread. *interaction* = in full − alone: *synergy* when the technique pays off more among the "
             "others than alone (beyond the spread), *interferes* when less, *additive* otherwise.", ""]
    return lines + _table(["technique", "metric", "alone", "in full", "interaction", "verdict"],
                          [[r.technique, r.metric, effect(r.alone, r.metric), effect(r.in_full, r.metric),
                            effect(r.interaction, r.metric).rstrip(" ▲▼"), r.verdict] for r in rows])


def load_throughput_file(folder: Path, plan: AblationPlan) -> Throughput | None:
    path = folder / BENCH_FILE
    if budget_seconds(plan.budget)[0] != "bench" or not path.is_file():
        return None
    return Throughput.from_json(path.read_text())


def _is_plugin(plan: AblationPlan, key: str) -> bool:
    return next(f for f in plan.factors if f.key == key).is_plugin


def interaction_section(plan: AblationPlan, spreads: dict[str, dict[str, Spread]], outcomes: list[str]) -> list[str]:
    inter, incomplete = interactions(plan, spreads, outcomes)
    lines = ["", "## Interactions", "",
             "I = m(a and b) − m(a) − m(b) + m(reference): the joint effect of two changes minus the sum of "
             "their separate effects, each measured from the reference. The value is the same whichever corner "
             "is the reference, so in a leave-one-out design (reference = full recipe, changes = removals) it "
             "is also the interaction of adding both to the recipe without them. *interferes*: together worse "
             "than additive beyond the seed spread; *synergy*: better; *additive*: within the spread.", ""]
    if inter:
        lines += _table(["change a", "change b", "metric", "I", "2·SE", "verdict"],
                        [[r.a, r.b, r.metric, _fmt(r.contrast.value),
                          _fmt(2 * r.contrast.se) if r.contrast.se is not None else "n/a", r.verdict] for r in inter])
    if incomplete:
        lines += ["", "Pairs without all four runs (add them with `--pairs`, or use `--design factorial`): "
                  + "; ".join(incomplete) + "."]
    return lines


def build_report(folder: Path) -> Path:
    """Write results.csv, results.json, plots/ and report.md from ``folder``; return report.md."""
    folder = Path(folder)
    plan = load_plan(folder)
    rows, missing = collect(folder, plan)
    write_results(folder, rows)
    metrics = metric_columns(rows)
    spreads = spreads_by_variant(rows, metrics)
    outcomes = outcome_metrics(metrics)
    losses = [m for m in metrics if (m == "loss" or m.startswith("loss/")) and m not in outcomes]
    throughput = load_throughput_file(folder, plan)
    clock: Clock = (lambda variant, step, wall: throughput.seconds_at(variant, step)) if throughput else logged_clock
    time_label = ("wall-clock (s)" if throughput is None else "training seconds at the measured throughput"
                  if throughput.clock == "wall" else "seconds of one core at the measured CPU time")
    lines = _describe_plan(plan, len(rows), missing)
    if throughput is not None:
        lines += throughput_section(throughput)
    if throughput is not None:  # the runs' own clocks measured the load while they ran, not the variants
        outcomes = [m for m in outcomes if m not in ("images_per_s", "wall_s")]
    lines += ["", "## Outcomes against the reference", "",
              "Mean ± standard deviation over seeds; in brackets the change of the mean against the reference, "
              "▲ / ▼ where it is better / worse beyond the seed spread (rule below). Losses are the mean of the "
              "last 10 % of logged steps."
              + (" With a bench budget the speed of each variant is the measured one above; each run's own "
                 "wall_s and images_per_s (in results.csv) depend on the load and --parallel while it ran."
                 if throughput is not None else ""), ""]
    lines += variant_table(plan, spreads, outcomes) if rows else ["No run has finished yet."]
    lines += attribute_table(plan, spreads)
    if plan.design == "add-and-remove":
        lines += technique_section(technique_rows(plan, spreads, [m for m in outcomes if m != "steps"]))
    if losses and rows:
        lines += ["", "## Loss terms", ""] + variant_table(plan, spreads, losses)
    if plan.design != "add-and-remove":
        lines += interaction_section(plan, spreads, outcomes)
    plots = folder / "plots"
    curve_files = plot_curves(mean_curves(folder, plan, clock), plots, time_label)
    effect_file = plot_effects(effects(plan, spreads, outcomes), plots / "effects.png")
    quality_file = plot_quality(quality_curves(folder, plan, clock), [v.name for v in plan.variants],
                                plan.anchors, CHANCE["overall"], time_label, plots / "prompt_following.png")
    lines += ["", "## Plots", ""]
    if quality_file is not None:
        lines += [f"![prompt following against training time](plots/{quality_file.name})", ""]
    if effect_file is not None:
        lines += [f"![effect of each change](plots/{effect_file.name})", ""]
    lines += [f"- [{p.stem}](plots/{p.name}) against step and {time_label}" for p in curve_files]
    lines += ["", "## The rule", "", " ".join(RULE_DOC.split("\n\n")[1].split()), ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
