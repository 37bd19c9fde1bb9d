"""The "wandb" tracker: the run's metrics, sample grids, recipe, facts and evaluation in a
Weights & Biases run that a resumed run continues."""
from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prx_core.hookspecs import hookimpl
from prx_core.tracking import missing_package, read_tracker_state, scalars_of, write_tracker_state
from prx_core.types import RunContext, RunStart, SampleGrid, Technique
from prx_wandb.config import WandbConfig
from prx_wandb.runs import last_step, run_files

EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}


def new_run_id() -> str:
    """A W&B run id: 8 random lowercase letters and digits, as W&B makes its own."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbSink:
    """One W&B run per run folder: its id is stored in the run folder (``trackers/wandb.json``)
    before the first step, and ``--resume`` continues it (``wandb.init(id=..., resume="allow")``).
    W&B keeps one row per step and refuses to rewrite one, so a resumed run logs only the steps
    after the last one the W&B run holds: the server's last step online, the last step in the run's
    earlier ``.wandb`` files offline. Steps between the checkpoint and the kill are trained again
    identically (exact resume), so the W&B run keeps their first record."""

    def __init__(self, config: WandbConfig, run: RunStart):
        self.config = config
        self.run = run
        self.dir = Path(config.dir) if config.dir else run.folder
        self.wandb_run: Any = None
        self.held = -1

    def open(self) -> None:
        import wandb

        state = read_tracker_state(self.run.folder, "wandb")
        run_id = state.get("run_id") or new_run_id()
        write_tracker_state(self.run.folder, "wandb", {"run_id": run_id, "project": self.config.project,
                                                       "entity": self.config.entity})
        earlier = run_files(self.dir, run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        c = self.config
        self.wandb_run = wandb.init(
            id=run_id, resume="allow", project=c.project, entity=c.entity or None, name=c.name or self.run.name,
            group=c.group or None, tags=list(c.tags) or None, notes=c.notes or None, dir=str(self.dir),
            mode=c.mode or None, config={**self.run.recipe, "run": dict(self.run.facts)},
            settings=wandb.Settings(console="off"),
        )
        self.wandb_run.config.update({**self.run.recipe, "run": dict(self.run.facts)}, allow_val_change=True)
        online = self.wandb_run.starting_step - 1 if self.wandb_run.resumed else -1
        self.held = max(online, last_step(earlier) if earlier else -1)

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        if step > self.held:
            self.wandb_run.log(scalars_of(row), step=step)

    def images(self, step: int, grid: SampleGrid) -> None:
        if self.config.images and step > self.held:
            import wandb

            caption = " | ".join(f"{i + 1}. {text}" for i, text in enumerate(grid.captions))
            self.wandb_run.log({"samples": wandb.Image(grid.image, caption=caption)}, step=step)

    def evaluation(self, step: int, results: Mapping[str, float]) -> None:
        values = {f"eval/{key}": value for key, value in results.items()}
        if step > self.held:  # the curve: periodic evaluations and the final one in the history
            self.wandb_run.log(values, step=step)
        self.wandb_run.summary.update(values)  # the latest evaluation, also after a resume that logs nothing

    def close(self, status: str) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=EXIT_CODES[status])


class Wandb:
    """Built by prx as ``Wandb(config, context)`` for a run that selects "wandb"."""

    def __init__(self, config: WandbConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        problems = missing_package("wandb", "wandb", "wandb")
        if not self.config.project:
            problems.append('project = "" : give the W&B project the run goes to, e.g. project = "prx".')
        return problems

    @hookimpl
    def prx_metrics_sink(self, run: RunStart) -> WandbSink:
        return WandbSink(self.config, run)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="wandb",
            plugin=Wandb,
            config=WandbConfig,
            summary="Tracker: metrics, sample grids, recipe, run facts and evaluation in a Weights & Biases run.",
        )
    ]
