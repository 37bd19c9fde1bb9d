"""TensorBoard tracking: plain functions that write a run's records as events and read back the
tags a log dir holds, and the "tensorboard" tracker (``prx_tensorboard.plugin``)."""
from prx_tensorboard.events import (
    has_events,
    held_steps,
    write_grid,
    write_metrics,
    write_prompts,
    write_run_text,
)

__all__ = ["has_events", "held_steps", "write_grid", "write_metrics", "write_prompts", "write_run_text"]
