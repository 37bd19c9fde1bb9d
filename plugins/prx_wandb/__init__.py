"""Weights & Biases tracking: plain functions that find a run's local ``.wandb`` files and read
them with W&B's own reader, and the "wandb" tracker (``prx_wandb.plugin``)."""
from prx_wandb.runs import history, last_step, records, run_files

__all__ = ["history", "last_step", "records", "run_files"]
