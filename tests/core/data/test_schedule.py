"""Phases of a run: global step -> phase, the phase bookkeeping."""
from __future__ import annotations

import pytest

from prx_core.data.schedule import phase_at, phase_starts, total_steps
from prx_core.types import Phase

PRX = [
    Phase(name="512px", steps=100_000, resolution=512, batch_size=1024),
    Phase(name="1024px", steps=20_000, resolution=1024, batch_size=512, disabled=("repa",)),
]


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, (0, 0)), (99_999, (0, 99_999)), (100_000, (1, 0)), (119_999, (1, 19_999)), (120_000, (1, 20_000))],
)
def test_phase_at(step, expected):
    assert phase_at(PRX, step) == expected


def test_phase_bookkeeping():
    assert phase_starts(PRX) == [0, 100_000]
    assert total_steps(PRX) == 120_000
    single = [Phase(name="train", steps=10, resolution=64, batch_size=32)]
    assert [phase_at(single, s) for s in (0, 9)] == [(0, 0), (0, 9)]
    with pytest.raises(ValueError):
        phase_at(PRX, -1)
    with pytest.raises(ValueError):
        phase_at([], 0)


def test_zero_step_phase_is_skipped():
    phases = [Phase("a", 0, 64, 8), Phase("b", 5, 64, 8)]
    assert phase_at(phases, 0) == (1, 0)
