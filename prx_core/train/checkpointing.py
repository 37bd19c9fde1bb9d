"""When a run writes a checkpoint, when it waits, and when it stops instead (prx_core.train.divergence).

A checkpoint falls due every ``[train] checkpoint_every`` steps, on Ctrl-C, at ``max_wall_s`` and
at the last step. It is written only from a state that is healthy on every rank: the weights and
the EMA finite (checked right before writing, a host read at checkpoint time only), no divergence
recorded, and the last loss neither non-finite nor spiking; a checkpoint due while the loss is
non-finite or spiking waits, step by step, until it is not. A diverged run stops with a message
naming the newest checkpoint that is good, which is the one ``--resume`` takes.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prx_core import distributed as D
from prx_core.checkpoint import DIVERGED, CheckpointManager, select_checkpoint, step_of
from prx_core.errors import UserError
from prx_core.train.divergence import Health
from prx_core.train.state import resume_checkpoint, save_checkpoint
from prx_core.train.trainer import Trainer


class DivergedError(UserError):
    """Training diverged (non-finite or jumping weights, a non-finite or spiking loss)."""


class Checkpointing:
    """The checkpoints of one run: resume, write when due and healthy, or stop."""

    def __init__(self, trainer: Trainer, manager: CheckpointManager, info: D.DistInfo,
                 log: Callable[[str], None], extra: Callable[[], dict[str, Any]]):
        self.trainer = trainer
        self.manager = manager
        self.info = info
        self.log = log
        self.extra = extra  # plain data saved with the state (the data loaders' positions); collective
        self.saved_at = -1
        self.pending = False

    def resume(self) -> dict[str, Any] | None:
        """Load the newest usable checkpoint (every rank) and say which, and why newer ones were
        skipped; returns its saved state, or None when the run folder has no checkpoint yet."""
        state, selection = resume_checkpoint(self.trainer, self.manager, self.info)
        if selection.describe():
            self.log(f"--resume: {selection.describe()}; nothing was deleted")
        if state is None:
            self.log(f"--resume: no checkpoint in {self.manager.root} yet, starting from step 0")
            return None
        self.log(f"resumed from {selection.folder} at step {self.trainer.step}")
        if self.info.is_main:
            self.manager.point_to(selection.folder)
        self.saved_at = self.trainer.step
        return state

    def check(self, health: Health) -> None:
        """Stop (DivergedError on every rank) when ``health`` says the run has diverged."""
        verdict = health.verdict(self.trainer.recipe.train)
        if verdict is not None:
            what, first = verdict
            self.stop(what, first if not health.weights_bad_at else None, spike=bool(health.spike_from))

    def offer(self, health: Health) -> bool:
        """A checkpoint is due (or waiting) at this step: write it if the state is healthy, else
        keep it waiting. Returns whether this step's state is saved."""
        step = self.trainer.step
        if self.saved_at == step:
            return True
        if not health.settled:
            if not self.pending:
                what = ("the loss is non-finite" if health.nonfinite_streak else
                        f"the diffusion loss is above {self.trainer.recipe.train.spike_factor:g} x its running median")
                self.log(f"checkpoint of step {step} waits: {what}; it is written at the first step where it is not")
            self.pending = True
            return False
        problem = self.trainer.health.state_problem(self.trainer.ema.shadow, self.info)
        if problem:
            self.stop(f"{problem} at step {step}", None)
        path = save_checkpoint(self.trainer, self.manager, self.info, self.extra())
        self.log(f"checkpoint: {path}")
        self.saved_at, self.pending = step, False
        return True

    def unsaved_note(self) -> str:
        """Why the current step has no checkpoint, for a run that ends or is interrupted while one waits."""
        good = select_checkpoint(self.manager.root, hashes=False).folder
        last = f"--resume continues from {good}" if good else "--resume starts from step 0"
        return f"no checkpoint of step {self.trainer.step}: the loss was not settled yet; {last}"

    def stop(self, what: str, first_bad_step: int | None, spike: bool = False) -> None:
        """Raise DivergedError naming the newest good checkpoint; a checkpoint written from the
        state the bad steps started from (the step before ``first_bad_step``) is marked first,
        so that ``--resume`` passes over it."""
        marked = []
        if self.info.is_main and first_bad_step is not None:
            marked = self._mark(first_bad_step, what)
        D.barrier(self.info)
        good = select_checkpoint(self.manager.root, hashes=False).folder
        message = f"{what}; the run stopped at step {self.trainer.step} and wrote no checkpoint from this state. "
        if good is not None:
            message += (f"The last good checkpoint is {good} (step {step_of(good)}): lower [optim] lr or [optim] "
                        "grad_clip and continue from it with --resume.")
        else:
            message += ("No good checkpoint of this run precedes it: lower [optim] lr or [optim] grad_clip and start "
                        "again (--resume starts from step 0 when the run folder has no checkpoint).")
        if marked:
            message += (f" {', '.join(p.name for p in marked)} holds the state the bad steps started from and is "
                        f"marked with {DIVERGED}, which --resume passes over (delete it to resume from there anyway).")
        if spike:
            message += (" If such spikes are expected, raise [train] spike_factor or spike_steps (spike_steps = 0 "
                        "turns the check off).")
        raise DivergedError(message)

    def _mark(self, first_bad_step: int, reason: str) -> list[Path]:
        marked = []
        for folder in self.manager.root.glob("step_*"):
            step = step_of(folder)
            if step is not None and first_bad_step - 1 <= step <= self.trainer.step:
                (folder / DIVERGED).write_text(json.dumps({"reason": reason, "first_bad_step": first_bad_step}))
                marked.append(folder)
        return sorted(marked)
