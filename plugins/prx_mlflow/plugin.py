"""The "mlflow" tracker: the run's metrics, sample grids, recipe (params), facts (tags) and
evaluation in an MLflow run that a resumed run continues."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prx_core.hookspecs import hookimpl
from prx_core.tracking import missing_package, read_tracker_state, write_tracker_state
from prx_core.types import RunContext, RunStart, SampleGrid, Technique
from prx_mlflow.config import MlflowConfig
from prx_mlflow.records import BATCH, fact_tags, held_steps, new_metrics, recipe_params, row_metrics

STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
FILE_STORE_PREFIXES = ("file:", "/", "./", "../")


class MlflowSink:
    """One MLflow run per run folder: its id is stored in the run folder (``trackers/mlflow.json``)
    as soon as the run exists, and ``--resume`` continues it. MLflow appends every logged value to
    a metric's history, so a resumed run logs, per metric, only the steps after the last one the
    history holds, and uploads only the sample grids (artifacts named by step) it lacks."""

    def __init__(self, config: MlflowConfig, run: RunStart):
        self.config = config
        self.run = run
        self.client: Any = None
        self.run_id = ""
        self.held: dict[str, int] = {}
        self.artifacts: set[str] = set()

    def open(self) -> None:
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow's INFO lines (database set-up) are noise here
        c = self.config
        self.client = MlflowClient(tracking_uri=c.tracking_uri or None)
        state = read_tracker_state(self.run.folder, "mlflow")
        if state.get("run_id") and state.get("tracking_uri") == self.client.tracking_uri:
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.held = held_steps(self.client, self.run_id)
            self.artifacts = {f.path for f in self.client.list_artifacts(self.run_id, "samples")}
        else:
            experiment = self.client.get_experiment_by_name(c.experiment)
            experiment_id = (experiment.experiment_id if experiment is not None else
                             self.client.create_experiment(c.experiment, artifact_location=c.artifact_location or None))
            created = self.client.create_run(experiment_id, run_name=c.run_name or self.run.name,
                                             tags={**fact_tags(self.run.facts), **c.tags})
            self.run_id = created.info.run_id
            write_tracker_state(self.run.folder, "mlflow", {"run_id": self.run_id,
                                                            "tracking_uri": self.client.tracking_uri,
                                                            "experiment_id": experiment_id})
        existing = self.client.get_run(self.run_id).data.params
        params = [(key, value) for key, value in recipe_params(self.run.recipe).items() if key not in existing]
        from mlflow.entities import Param

        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params[start:start + BATCH]])
        self.client.set_tag(self.run_id, "prx.resumed_at_step", str(self.run.start_step))

    def _log(self, metrics: list[Any]) -> None:
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        self._log(row_metrics(step, row, self.held))

    def images(self, step: int, grid: SampleGrid) -> None:
        if not self.config.images:
            return
        for path in (grid.path, grid.path.with_suffix(".txt")):
            if path.is_file() and f"samples/{path.name}" not in self.artifacts:
                self.client.log_artifact(self.run_id, str(path), "samples")

    def evaluation(self, step: int, results: Mapping[str, float]) -> None:
        self._log(new_metrics(step, {f"eval/{key}": value for key, value in results.items()}, self.held))

    def close(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, STATUS[status])


class Mlflow:
    """Built by prx as ``Mlflow(config, context)`` for a run that selects "mlflow"."""

    def __init__(self, config: MlflowConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        problems = missing_package("mlflow", "mlflow", "mlflow")
        if self.config.tracking_uri.startswith(FILE_STORE_PREFIXES):
            problems.append(
                f'tracking_uri = "{self.config.tracking_uri}" is an MLflow file store, which MLflow 3 refuses by '
                "default and which cannot hold a metric 'loss' beside 'loss/diffusion'; use a database, e.g. "
                'tracking_uri = "sqlite:///runs/mlflow.db", or a server, e.g. "http://localhost:5000".')
        if not self.config.experiment:
            problems.append('experiment = "": name the MLflow experiment, e.g. experiment = "prx".')
        return problems

    @hookimpl
    def prx_metrics_sink(self, run: RunStart) -> MlflowSink:
        return MlflowSink(self.config, run)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="mlflow",
            plugin=Mlflow,
            config=MlflowConfig,
            summary="Tracker: metrics, sample grids, recipe (params), run facts (tags) and evaluation in an MLflow run.",
        )
    ]
