"""Which training phase a global step belongs to.

The train loop asks this on every start and resume (a resumed run lands in the phase of its
checkpoint's step) and to find the boundaries where it rebuilds the data loader.
"""
from __future__ import annotations

from collections.abc import Sequence

from prx_core.types import Phase


def phase_starts(phases: Sequence[Phase]) -> list[int]:
    """Global step at which each phase begins: ``[0, steps_0, steps_0 + steps_1, ...]``."""
    starts, total = [], 0
    for phase in phases:
        starts.append(total)
        total += phase.steps
    return starts


def total_steps(phases: Sequence[Phase]) -> int:
    """Steps of the whole schedule."""
    return sum(phase.steps for phase in phases)


def phase_at(phases: Sequence[Phase], step: int) -> tuple[int, int]:
    """``(phase index, step within that phase)`` of global ``step`` (0-indexed).

    A step at or past the end of the schedule belongs to the last phase (a run resumed from
    its final checkpoint lands there and has nothing left to do). Phases with zero steps are
    skipped over.
    """
    if not phases:
        raise ValueError("phase_at needs at least one phase")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    for index, (start, phase) in enumerate(zip(phase_starts(phases), phases)):
        if step < start + phase.steps:
            return index, step - start
    last = len(phases) - 1
    return last, step - phase_starts(phases)[last]
