"""One row per finished run, read from the run folders of an ablation, and written as
``results.csv`` and ``results.json``."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from prx_core.ablation.design import AblationPlan
from prx_core.runfolder import SUMMARY, RunFolder

ID_COLUMNS = ("variant", "run", "seed", "plugins")
RUN_METRICS = ("steps", "wall_s", "images_per_s", "peak_mem_mb")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def flatten_eval(evaluation: dict[str, Any]) -> dict[str, float]:
    """``{"prompt_following": {"overall": x, "color": y}, "distribution": {"fd_efficientnet": z}}``
    -> ``{"prompt_following": x, "prompt_following/color": y, "fd_efficientnet": z}``; other
    numeric entries become ``eval/<key>`` (``step`` is dropped: the row has ``steps``)."""
    out: dict[str, float] = {}
    for key, value in evaluation.items():
        if key == "step":
            continue
        if key == "distribution" and isinstance(value, dict):
            out.update({k: v for k, v in ((k, _number(v)) for k, v in value.items()) if v is not None})
        elif isinstance(value, dict):
            for sub, number in ((s, _number(v)) for s, v in value.items()):
                if number is not None:
                    out[key if sub == "overall" else f"{key}/{sub}"] = number
        elif _number(value) is not None:
            out[f"eval/{key}"] = _number(value)
    return out


def run_row(summary: dict[str, Any], variant: str, run: str, seed: int, plugins: tuple[str, ...],
            levels: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": variant, "run": run, "seed": seed, "plugins": "+".join(plugins) or "(none)"}
    row.update({f"factor:{key}": level for key, level in levels.items()})
    for key in RUN_METRICS:
        number = _number(summary.get(key))
        if number is not None:
            row[key] = number
    row.update({k: v for k, v in ((k, _number(v)) for k, v in summary.get("final", {}).items()) if v is not None})
    row.update(flatten_eval(summary.get("eval") or {}))
    return row


def collect(folder: Path, plan: AblationPlan) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the finished runs and the directories of the runs without ``summary.json``."""
    variants = {v.name: v for v in plan.variants}
    rows, missing = [], []
    for spec in plan.runs():
        path = folder / spec.directory / SUMMARY
        if not path.is_file():
            missing.append(spec.directory)
            continue
        v = variants[spec.variant]
        rows.append(run_row(json.loads(path.read_text()), v.name, spec.directory, spec.seed, v.plugins, v.levels))
    return rows, missing


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Numeric columns in a stable order: run metrics, losses, evaluation, the rest."""
    found = {k for row in rows for k in row if k not in ID_COLUMNS and not k.startswith("factor:")}

    def rank(key: str) -> tuple[int, str]:
        if key in RUN_METRICS:
            return 0, f"{RUN_METRICS.index(key)}"
        if key == "loss" or key.startswith("loss/"):
            return 1, key
        if key.startswith("prompt_following"):
            return 2, key
        return 3, key

    return sorted(found, key=rank)


def write_results(folder: Path, rows: list[dict[str, Any]]) -> None:
    columns = [*ID_COLUMNS, *sorted({k for row in rows for k in row if k.startswith("factor:")}), *metric_columns(rows)]
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    clean = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
             for row in rows]
    (folder / "results.json").write_text(json.dumps(clean, indent=2))


def read_curves(folder: Path, run: str) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` rows."""
    return RunFolder(folder / run).read_metrics()
