"""Several recipes' real training steps timed side by side (``prx_core.measure.throughput``): every
phase of every recipe in interleaved rounds, the load recorded, a busy machine measured again
after waiting for a quieter one, and the CPU-time clock that needs no quiet machine."""
from __future__ import annotations

import pytest
import torch

from prx_core.errors import UserError
from prx_core.measure.throughput import measure_quietly
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.testing import TINY_RECIPE

TWO_PHASES = ('plugins=["multires"]', 'multires.phases=[{name="a",resolution=32,batch_size=8,steps=5},'
              '{name="b",resolution=32,batch_size=4,steps=7}]')


def test_every_phase_of_every_recipe_is_timed_in_interleaved_rounds():
    registry = discover()
    recipes = {"plain": load_recipe(TINY_RECIPE, [], registry),
               "two phases": load_recipe(TINY_RECIPE, list(TWO_PHASES), registry)}
    loads = iter([0.3, 0.5, 0.6, 0.4])  # before waiting, then before each round and after the last
    (attempt,) = measure_quietly(recipes, registry, rounds=2, steps=1, max_load=3.0, attempts=1, wait_s=0,
                                 device=torch.device("cpu"), loadavg=lambda: next(loads))
    assert attempt.load == (0.5, 0.6, 0.4) and attempt.max_load == 0.6 and attempt.rounds == 2
    assert attempt.threads == torch.get_num_threads()
    assert [(p.phase, p.batch_size, p.steps) for p in attempt.variants["two phases"]] == [("a", 8, 5), ("b", 4, 7)]
    assert [p.phase for p in attempt.variants["plain"]] == ["train"]
    assert all(len(p.step_s) == 2 and min(p.step_s) > 0 for ps in attempt.variants.values() for p in ps)
    speed = attempt.variants["two phases"][0]
    assert speed.images_per_s == pytest.approx(8 / speed.median_step_s)


def test_a_busy_machine_is_measured_again_after_waiting():
    registry = discover()
    recipes = {"plain": load_recipe(TINY_RECIPE, [], registry)}
    # quiet before (0.2); busy during the first attempt (9.0 before and after its round); the check
    # before the second sees 5.0, the wait sees 5.0 then 0.3; the second attempt is quiet.
    loads = iter([0.2, 9.0, 9.0, 5.0, 5.0, 0.3, 0.5, 0.6])
    slept = []
    threads = torch.get_num_threads()
    attempts = measure_quietly(recipes, registry, rounds=1, steps=1, max_load=threads + 1.0, attempts=3, wait_s=60,
                               device=torch.device("cpu"), loadavg=lambda: next(loads), sleep=slept.append)
    assert [a.max_load for a in attempts] == [9.0, 0.6] and slept == [15.0]
    stuck = measure_quietly(recipes, registry, rounds=1, steps=1, max_load=threads + 1.0, attempts=2, wait_s=15,
                            device=torch.device("cpu"), loadavg=lambda: 8.0, sleep=lambda s: None)
    assert [a.max_load for a in stuck] == [8.0, 8.0]


def test_the_cpu_clock_measures_one_thread_once_whatever_the_load():
    registry = discover()
    recipes = {"plain": load_recipe(TINY_RECIPE, [], registry)}
    threads = torch.get_num_threads()
    (attempt,) = measure_quietly(recipes, registry, rounds=2, steps=1, max_load=1.0, attempts=3, wait_s=600,
                                 device=torch.device("cpu"), clock="cpu", loadavg=lambda: 50.0,
                                 sleep=lambda s: pytest.fail("the cpu clock does not wait"))
    assert attempt.clock == "cpu" and attempt.threads == 1 and attempt.load == (50.0,) * 3
    assert torch.get_num_threads() == threads  # restored
    assert all(p.median_step_s > 0 for p in attempt.variants["plain"])
    with pytest.raises(UserError, match="bench-clock cpu"):
        measure_quietly(recipes, registry, rounds=1, steps=1, max_load=1.0, attempts=1, wait_s=0,
                        device=torch.device("meta"), clock="cpu")
