"""The "tensorboard" tracker: the run's metrics, sample grids, recipe and evaluation as TensorBoard
event files (``torch.utils.tensorboard``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prx_core.hookspecs import hookimpl
from prx_core.tracking import missing_package
from prx_core.types import RunContext, RunStart, SampleGrid, Technique
from prx_tensorboard.config import TensorBoardConfig
from prx_tensorboard.events import (
    EVAL_PREFIX,
    GRID_TAG,
    has_events,
    tags_at,
    write_grid,
    write_metrics,
    write_run_text,
)


class TensorBoardSink:
    """One run's event files. A resumed run writes into the same log dir with ``purge_step`` set
    to the first step it trains again, so TensorBoard drops what the killed process had logged
    from that step on and each step is shown once. A resumed run that had already finished
    training only redoes its final grid and evaluation: those are skipped when the log dir holds
    them already."""

    def __init__(self, config: TensorBoardConfig, run: RunStart):
        self.config = config
        self.run = run
        self.log_dir = Path(config.log_dir) if config.log_dir else run.folder / "tensorboard"
        self.writer: Any = None
        self.held_final: set[str] = set()

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        first = not has_events(self.log_dir)
        finished = self.run.start_step >= self.run.total_steps
        if finished and not first:
            self.held_final = tags_at(self.log_dir, self.run.start_step)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if finished else self.run.start_step + 1)
        if first:
            write_run_text(self.writer, self.run.recipe, self.run.facts)
        self.writer.flush()

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        write_metrics(self.writer, step, row)
        self.writer.flush()  # a killed run loses no logged step (resume purges what it trains again)

    def images(self, step: int, grid: SampleGrid) -> None:
        if self.config.images and not (step == self.run.start_step and GRID_TAG in self.held_final):
            write_grid(self.writer, step, grid)
            self.writer.flush()

    def evaluation(self, step: int, results: Mapping[str, float]) -> None:
        for key, value in results.items():
            tag = EVAL_PREFIX + key
            if not (step == self.run.start_step and tag in self.held_final):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class TensorBoard:
    """Built by prx as ``TensorBoard(config, context)`` for a run that selects "tensorboard"."""

    def __init__(self, config: TensorBoardConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        return missing_package("tensorboard", "tensorboard", "tensorboard")

    @hookimpl
    def prx_metrics_sink(self, run: RunStart) -> TensorBoardSink:
        return TensorBoardSink(self.config, run)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="tensorboard",
            plugin=TensorBoard,
            config=TensorBoardConfig,
            summary="Tracker: metrics, sample grids, recipe and evaluation as TensorBoard event files.",
        )
    ]
