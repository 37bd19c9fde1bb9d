"""A run's records as MLflow entities (metrics, params, tags), and the steps an MLflow run holds."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from prx_core.tracking import scalars_of

MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a parameter value (longer values are cut, with a note)."""
BATCH = 100
"""Params per ``log_batch`` call (MLflow's limit)."""


def recipe_params(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved recipe as MLflow params: one per leaf key (``train.steps``), lists as JSON."""
    params: dict[str, str] = {}
    for key, value in recipe.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            params.update(recipe_params(value, f"{name}."))
        else:
            text = json.dumps(value) if not isinstance(value, str) else value
            params[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 12] + " [truncated]"
    return params


def fact_tags(facts: Mapping[str, Any]) -> dict[str, str]:
    """The run facts as tags (``prx.device``, ...); the git commit also under MLflow's own
    ``mlflow.source.git.commit``."""
    tags = {f"prx.{key}": value if isinstance(value, str) else json.dumps(value) for key, value in facts.items()}
    if facts.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(facts["git_commit"])
    return tags


def new_metrics(step: int, values: Mapping[str, float], held: Mapping[str, int]) -> list[Any]:
    """``Metric`` entities for the values at ``step`` that the run does not hold yet (``held``:
    the last step each key holds)."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    return [Metric(key, value, timestamp, step) for key, value in values.items() if step > held.get(key, -1)]


def row_metrics(step: int, row: Mapping[str, Any], held: Mapping[str, int]) -> list[Any]:
    """The numbers of one metrics row as ``Metric`` entities not held yet."""
    return new_metrics(step, scalars_of(row), held)


def held_steps(client: Any, run_id: str) -> dict[str, int]:
    """Metric key -> the last step the MLflow run holds for it (from the tracking server's metric history)."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
