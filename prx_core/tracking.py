"""What tracker plugins share: the numbers of a metrics row, where a tracker keeps what it needs to
continue its tracker run after ``--resume``, and the recipe check for a missing library.

A tracker (a plugin implementing ``prx_metrics_sink``, see docs/trackers.md) stores its tracker
run's identity in the run folder, under ``trackers/<tracker>.json``, when it first opens. The run
folder, not the checkpoint, because the identity must exist before the first step is logged: a
run killed before its first checkpoint and resumed from step 0 continues the same tracker run,
and only rank 0 (which owns the run folder) tracks.
"""
from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRACKER_STATE_DIR = "trackers"
NOT_SCALARS = ("step",)
"""Keys of a metrics row that are not plotted (the step is the x axis)."""


def scalars_of(row: Mapping[str, Any]) -> dict[str, float]:
    """The plottable numbers of a metrics row: every int or float (booleans excluded) but the step."""
    return {key: float(value) for key, value in row.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool)}


def flatten(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested results as ``{"a/b": number}`` (finite numbers only; the evaluation's ``step`` is left out)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        elif (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and name != "step"):
            flat[name] = float(value)
    return flat


def scores_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a tracker gets of an evaluation (an evals.jsonl row or eval.json): the scores, not the
    bookkeeping beside them (step, phase, clocks)."""
    return {key: row[key] for key in ("prompt_following", "distribution") if key in row}


def tracker_state_path(folder: Path, tracker: str) -> Path:
    return Path(folder) / TRACKER_STATE_DIR / f"{tracker}.json"


def read_tracker_state(folder: Path, tracker: str) -> dict[str, Any]:
    """What ``tracker`` stored for this run folder ({} when nothing, e.g. a new run)."""
    path = tracker_state_path(folder, tracker)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_tracker_state(folder: Path, tracker: str, state: Mapping[str, Any]) -> None:
    """Store ``state`` (plain JSON data) for this run folder, atomically."""
    path = tracker_state_path(folder, tracker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(state), indent=2))
    tmp.replace(path)


def missing_package(module: str, extra: str, tracker: str) -> list[str]:
    """The recipe problem of a tracker whose library is not installed (empty when it is).

    Checked with the import system's finder, without importing the library (importing W&B or
    MLflow takes seconds, and validation runs before every run and every ``--dry-run``)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None (import blocked)
        found = False
    if found:
        return []
    return [f"the {tracker} tracker needs the '{module}' package, which is not installed: "
            f"pip install 'prx[{extra}]' (or remove \"{tracker}\" from plugins)"]
