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
    PROMPTS_TAG,
    TEXT_SUFFIX,
    has_events,
    held_steps,
    write_grid,
    write_metrics,
    write_prompts,
    write_run_text,
)


class TensorBoardSink:
    """One run's event files. A resumed run writes into the same log dir with ``purge_step`` set
    to the first step it trains again, so TensorBoard drops what the killed process had logged
    from that step on; of what the core replays up to the checkpoint, it writes only the tags and
    steps the log dir lacks (read back with TensorBoard's reader). Each step is shown once. The
    prompts, the same at every step, are written once as text, and so are the recipe and the facts."""

    def __init__(self, config: TensorBoardConfig, run: RunStart):
        self.config = config
        self.run = run
        self.log_dir = Path(config.log_dir) if config.log_dir else run.folder / "tensorboard"
        self.writer: Any = None
        self.held: dict[str, set[int]] = {}

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.held = held_steps(self.log_dir) if has_events(self.log_dir) else {}
        finished = self.run.start_step >= self.run.total_steps
        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if finished else self.run.start_step + 1)
        if "recipe" + TEXT_SUFFIX not in self.held:
            write_run_text(self.writer, self.run.recipe, self.run.facts)
        self.writer.flush()

    def _lacks(self, tag: str, step: int) -> bool:
        """Whether to write ``tag`` at ``step``: after the resumed step (the purge removed what the
        log dir had there), or where the log dir holds nothing for it."""
        return step > self.run.start_step or step not in self.held.get(tag, ())

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        write_metrics(self.writer, step, {k: v for k, v in row.items() if self._lacks(k, step)})
        self.writer.flush()  # a killed run loses no logged step

    def images(self, step: int, grid: SampleGrid) -> None:
        if not self.config.images:
            return
        if self._lacks(GRID_TAG, step):
            write_grid(self.writer, step, grid)
        if not self.held.get(PROMPTS_TAG + TEXT_SUFFIX):
            write_prompts(self.writer, step, grid)
            self.held[PROMPTS_TAG + TEXT_SUFFIX] = {step}
        self.writer.flush()

    def evaluation(self, step: int, results: Mapping[str, float]) -> None:
        for key, value in results.items():
            if self._lacks(EVAL_PREFIX + key, step):
                self.writer.add_scalar(EVAL_PREFIX + key, value, step)
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
