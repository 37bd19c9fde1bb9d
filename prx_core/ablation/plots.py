"""PNG plots of an ablation: each logged metric against step and against wall-clock (one line per
variant, mean over seeds, side by side), and a bar chart of each single change's effect on the outcomes.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no display and no global state.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import attrs
from matplotlib.figure import Figure

from prx_core.ablation.design import AblationPlan
from prx_core.ablation.results import read_curves

CURVE_KEYS = ("loss", "grad_norm", "images_per_s", "step_ms", "peak_mem_mb")


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


def mean_curves(folder: Path, plan: AblationPlan) -> dict[str, dict[str, Curve]]:
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
            series = [{r["step"]: (r.get("wall_s", math.nan), r[key]) for r in rows if r.get(key) is not None}
                      for rows in runs]
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


def plot_curves(curves: dict[str, dict[str, Curve]], out_dir: Path) -> list[Path]:
    """One PNG per metric, ``<metric>.png``: the metric against step (left) and against
    wall-clock seconds (right), one line per variant."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = sorted({m for per_variant in curves.values() for m in per_variant})
    written = []
    for metric in metrics:
        figure = Figure(figsize=(11, 4), dpi=90)
        for i, (axis, label) in enumerate((("step", "step"), ("wall", "wall-clock (s)"))):
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
