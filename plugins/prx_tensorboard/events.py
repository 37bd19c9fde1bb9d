"""Writing a run's records as TensorBoard events, and reading back which tags a log dir holds."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from prx_core.tracking import scalars_of
from prx_core.types import SampleGrid

GRID_TAG = "samples"
PROMPTS_TAG = "samples/prompts"
TEXT_SUFFIX = "/text_summary"
"""``add_text`` stores a tag ``T`` as ``T/text_summary``."""
EVAL_PREFIX = "eval/"


def write_metrics(writer: Any, step: int, row: Mapping[str, Any]) -> None:
    """Every number of a metrics row as a scalar at ``step`` (tags as in metrics.jsonl: ``loss/diffusion``)."""
    for key, value in scalars_of(row).items():
        writer.add_scalar(key, value, step)


def write_grid(writer: Any, step: int, grid: SampleGrid) -> None:
    """The sample grid as an image (each cell shows its prompt beneath it)."""
    writer.add_image(GRID_TAG, np.asarray(grid.image.convert("RGB")), step, dataformats="HWC")


def write_prompts(writer: Any, step: int, grid: SampleGrid) -> None:
    """The grid's prompts as numbered text (the same prompts at every step of a run)."""
    writer.add_text(PROMPTS_TAG, "\n".join(f"{i + 1}. {c}" for i, c in enumerate(grid.captions)), step)


def write_run_text(writer: Any, recipe: Mapping[str, Any], facts: Mapping[str, Any]) -> None:
    """The resolved recipe (TOML) and the run facts (a table) as text at step 0."""
    writer.add_text("recipe", "```toml\n" + tomli_w.dumps(dict(recipe)) + "```", 0)
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    writer.add_text("run", "| fact | value |\n|---|---|\n" + rows, 0)


def has_events(log_dir: Path) -> bool:
    return any(Path(log_dir).glob("events.out.tfevents.*"))


def held_steps(log_dir: Path) -> dict[str, set[int]]:
    """Tag -> the steps the event files in ``log_dir`` hold (scalars, images, text), read with
    TensorBoard's own event reader, which applies earlier purges as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    held = {tag: {e.step for e in accumulator.Scalars(tag)} for tag in tags["scalars"]}
    held.update({tag: {e.step for e in accumulator.Images(tag)} for tag in tags["images"]})
    held.update({tag: {e.step for e in accumulator.Tensors(tag)} for tag in tags["tensors"]})
    return held
