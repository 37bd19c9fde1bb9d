"""PNG plots of an ablation: each logged metric against step and against training time (one line
per variant, mean over seeds, side by side), prompt following against training time (one panel per
variant, from the runs' periodic evaluations), and a bar chart of each single change's effect on
the outcomes.

Training time is the runs' logged wall-clock, or with a ``bench:`` budget the seconds their
measured throughput gives the steps so far (a ``Clock``), which the load of a shared machine does
not bend.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no display and no global state.
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from matplotlib.figure import Figure

from prx_core.ablation.design import AblationPlan
from prx_core.ablation.results import read_curves
from prx_core.runfolder import SUMMARY

CURVE_KEYS = ("loss", "grad_norm", "images_per_s", "step_ms", "peak_mem_mb")

Clock = Callable[[str, int, float], float]
"""(variant, step, logged wall_s) -> the seconds of training plotted for that step."""


def logged_clock(variant: str, step: int, wall_s: float) -> float:
    return wall_s


@attrs.frozen
class Curve:
    steps: tuple[int, ...]
    wall_s: tuple[float, ...]
    values: tuple[float, ...]


@attrs.frozen
class Effect:
    """One bar: ``relative`` change of a metric against the reference, ``error`` = 2 SE / |ref|."""

    variant: str
    relative: float
    error: float | None
    verdict: str


def _plotted(key: str) -> bool:
    return key in CURVE_KEYS or key.startswith("loss/")


def mean_curves(folder: Path, plan: AblationPlan, clock: Clock = logged_clock) -> dict[str, dict[str, Curve]]:
    """variant -> metric -> mean over the variant's seeds at the steps every seed logged."""
    out: dict[str, dict[str, Curve]] = {}
    by_variant: dict[str, list[list[dict]]] = {}
    for spec in plan.runs():
        rows = read_curves(folder, spec.directory)
        if rows:
            by_variant.setdefault(spec.variant, []).append(rows)
    for variant, runs in by_variant.items():
        keys = sorted({k for rows in runs for row in rows for k in row if _plotted(k)})
        curves = {}
        for key in keys:
            series = [{r["step"]: (clock(variant, r["step"], r.get("wall_s", math.nan)), r[key])
                       for r in rows if r.get(key) is not None} for rows in runs]
            steps = sorted(set.intersection(*(set(s) for s in series)))
            if not steps:
                continue
            curves[key] = Curve(
                tuple(steps),
                tuple(sum(s[t][0] for s in series) / len(series) for t in steps),
                tuple(sum(s[t][1] for s in series) / len(series) for t in steps),
            )
        out[variant] = curves
    return out


def _file_name(metric: str) -> str:
    return metric.replace("/", "_")


@attrs.frozen
class QualityCurve:
    """Prompt following of one variant's seeds: per seed, (seconds, score) at each evaluation."""

    seeds: tuple[tuple[tuple[float, float], ...], ...]

    def mean(self) -> tuple[tuple[float, float], ...]:
        """The mean over seeds at the evaluations every seed has (same index, mean seconds)."""
        length = min(len(points) for points in self.seeds)
        return tuple((statistics.fmean(p[i][0] for p in self.seeds), statistics.fmean(p[i][1] for p in self.seeds))
                     for i in range(length))


def quality_curves(folder: Path, plan: AblationPlan, clock: Clock = logged_clock) -> dict[str, QualityCurve]:
    """variant -> its seeds' prompt-following curves, from each summary's ``evals`` (the periodic
    evaluations and the final one; runs without periodic evaluations have no curve)."""
    found: dict[str, list[tuple[tuple[float, float], ...]]] = {}
    for spec in plan.runs():
        path = folder / spec.directory / SUMMARY
        rows = json.loads(path.read_text()).get("evals", []) if path.is_file() else []
        if len(rows) >= 2:
            found.setdefault(spec.variant, []).append(tuple(
                (clock(spec.variant, r["step"], r["wall_s"]), r["prompt_following"]["overall"]) for r in rows))
    return {variant: QualityCurve(tuple(seeds)) for variant, seeds in found.items()}


def plot_quality(curves: dict[str, QualityCurve], order: Sequence[str], anchors: Sequence[str], chance: float,
                 time_label: str, path: Path) -> Path | None:
    """One panel per variant (in ``order``): its seeds (thin), their mean (thick), the anchors'
    means (dashed: the reference, and the full recipe in add-and-remove) and the checker's chance
    level (dotted)."""
    shown = [v for v in order if v in curves]
    if not shown:
        return None
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure = Figure(figsize=(3.4 * columns, 2.7 * rows), dpi=90)
    top = max(score for curve in curves.values() for points in curve.seeds for _, score in points)
    right = max(t for curve in curves.values() for points in curve.seeds for t, _ in points)
    for i, variant in enumerate(shown):
        ax = figure.add_subplot(rows, columns, i + 1)
        for anchor, colour in zip(anchors, ("grey", "tab:orange")):
            if anchor in curves and variant != anchor:
                xs, ys = zip(*curves[anchor].mean())
                ax.plot(xs, ys, color=colour, linestyle="--", linewidth=1.2, label=anchor)
        for points in curves[variant].seeds:
            xs, ys = zip(*points)
            ax.plot(xs, ys, color="tab:blue", alpha=0.35, linewidth=0.9)
        xs, ys = zip(*curves[variant].mean())
        ax.plot(xs, ys, color="tab:blue", linewidth=2.0, label=f"mean of {len(curves[variant].seeds)}")
        ax.axhline(chance, color="black", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, min(1.0, top * 1.1 + 0.02))
        ax.set_xlim(0, right * 1.02)
        ax.set_title(variant, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel("prompt following", fontsize=8)
        if i >= len(shown) - columns:
            ax.set_xlabel(time_label, fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    figure.suptitle(f"prompt following against {time_label} (dotted: chance, {chance:.2f})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_curves(curves: dict[str, dict[str, Curve]], out_dir: Path, time_label: str = "wall-clock (s)") -> list[Path]:
    """One PNG per metric, ``<metric>.png``: the metric against step (left) and against
    wall-clock seconds (right), one line per variant."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = sorted({m for per_variant in curves.values() for m in per_variant})
    written = []
    for metric in metrics:
        figure = Figure(figsize=(11, 4), dpi=90)
        for i, (axis, label) in enumerate((("step", "step"), ("wall", time_label))):
            ax = figure.add_subplot(1, 2, i + 1)
            for variant in sorted(curves):
                curve = curves[variant].get(metric)
                if curve is not None:
                    ax.plot(curve.steps if axis == "step" else curve.wall_s, curve.values, label=variant,
                            linewidth=1.4)
            ax.set_xlabel(label)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        figure.suptitle(f"{metric} (mean over seeds)")
        figure.tight_layout()
        path = out_dir / f"{_file_name(metric)}.png"
        figure.savefig(path)
        written.append(path)
    return written


def plot_effects(effects: dict[str, Sequence[Effect]], path: Path) -> Path | None:
    """One panel per outcome: horizontal bars of the relative change (%) of each single change,
    with ±2 SE error bars; green = better, red = worse beyond the seed spread, grey otherwise."""
    panels = {metric: bars for metric, bars in effects.items() if bars}
    if not panels:
        return None
    bars_per_panel = max(len(bars) for bars in panels.values())
    columns = min(3, len(panels))
    grid_rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.5 * columns, (1.3 + 0.4 * bars_per_panel) * grid_rows), dpi=90)
    colours = {"better": "tab:green", "worse": "tab:red"}
    for i, (metric, bars) in enumerate(sorted(panels.items())):
        ax = figure.add_subplot(grid_rows, columns, i + 1)
        values = [100 * b.relative for b in bars]
        errors = [100 * b.error if b.error is not None else 0.0 for b in bars]
        ax.barh(range(len(bars)), values, xerr=errors, color=[colours.get(b.verdict, "tab:grey") for b in bars],
                capsize=3)
        ax.set_yticks(range(len(bars)), [b.variant for b in bars], fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("change vs reference (%)", fontsize=8)
        ax.invert_yaxis()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
