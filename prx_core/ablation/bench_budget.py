"""Equal wall-clock without a quiet machine: each variant's throughput, measured side by side,
buys its steps in a common budget (``prx ablate --budget bench:SECONDS``).

``--budget wall:SECONDS`` stops every run after SECONDS, which is fair only when nothing else runs:
on a shared machine a run that happens to share the cores trains fewer steps. Here the speed of
every variant is measured once, in one process (:mod:`prx_core.measure.throughput`), and each run
then trains a fixed number of steps (``[train] phase_steps``), so what a run learns no longer
depends on the load while it trains (nor on ``--parallel``). The measurement is kept in the
ablation folder's ``bench.json``, every attempt with its load averages; the attempt measured under
the lowest load is the one used, and the report says when none was quiet.

Steps from the budget: a variant whose phases have the recipe's steps ``s_i``, global batch
``b_i`` and measured ``r_i`` images/s trains ``T = sum(s_i * b_i / r_i)`` seconds; in a budget of
``B`` seconds phase ``i`` gets ``round(s_i * B / T)`` steps (at least 1): the recipe's schedule
stretched or shrunk to the budget, its proportions kept. On the ``wall`` clock the throughput is
that of the measuring process's threads (all cores), whatever ``--parallel`` the runs then use; on
the ``cpu`` clock the budget is SECONDS of one core's compute (the runs of ``--parallel N`` on N
cores train one thread each).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import attrs
import cattrs

from prx_core.errors import UserError
from prx_core.measure.throughput import Attempt, PhaseSpeed
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry
from prx_core.techniques import TechniqueSet
from prx_core.types import RunContext

BENCH_FILE = "bench.json"


@attrs.frozen
class Throughput:
    """What ``bench.json`` holds: the budget, the load limit and every attempt."""

    budget_s: float
    max_load: float
    attempts: tuple[Attempt, ...]

    @property
    def chosen(self) -> Attempt:
        """The attempt measured under the lowest load."""
        return min(self.attempts, key=lambda a: a.max_load)

    @property
    def clock(self) -> str:
        return self.chosen.clock

    @property
    def quiet(self) -> bool:
        """Whether the kept attempt ran within the load limit (CPU time needs no quiet machine)."""
        return self.clock == "cpu" or self.chosen.max_load <= self.max_load

    def phase_steps(self) -> dict[str, tuple[int, ...]]:
        return {name: budget_steps(speeds, self.budget_s) for name, speeds in self.chosen.variants.items()}

    def seconds_at(self, variant: str, step: int) -> float:
        """Training seconds the measured throughput gives the first ``step`` steps of ``variant``."""
        speeds, steps = self.chosen.variants[variant], self.phase_steps()[variant]
        seconds, start = 0.0, 0
        for speed, count in zip(speeds, steps):
            seconds += speed.median_step_s * max(0, min(step - start, count))
            start += count
        return seconds

    def to_json(self) -> str:
        return json.dumps(cattrs.unstructure(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Throughput:
        return cattrs.structure(json.loads(text), cls)


def budget_steps(speeds: tuple[PhaseSpeed, ...], budget_s: float) -> tuple[int, ...]:
    """Each phase's steps in ``budget_s`` seconds: the schedule scaled to the budget (module doc)."""
    seconds = sum(p.steps * p.median_step_s for p in speeds)
    return tuple(max(1, round(p.steps * budget_s / seconds)) for p in speeds)


def load_throughput(folder: Path, variants: Mapping[str, Recipe], registry: Registry,
                    budget_s: float, clock: str = "wall") -> Throughput | None:
    """The folder's ``bench.json`` when it measured these variants with these schedules; None
    when there is none; an error when it measured something else (the runs may depend on it)."""
    path = folder / BENCH_FILE
    if not path.is_file():
        return None
    stored = Throughput.from_json(path.read_text())
    expected = {}
    for name, recipe in variants.items():
        context = RunContext(recipe, recipe.seed, log=lambda message: None)
        phases = plan_phases(recipe, TechniqueSet(recipe, registry, context, model_config(recipe)))
        expected[name] = [(p.name, p.resolution, p.batch_size, p.steps) for p in phases]
    found = {name: [(p.phase, p.resolution, p.batch_size, p.steps) for p in speeds]
             for name, speeds in stored.chosen.variants.items()}
    if found != expected or stored.budget_s != budget_s or stored.clock != clock:
        raise UserError(f"{path} measured other variants, schedules, budget or clock than this ablation's. It fixes "
                        f"the steps of the runs already made: continue with the arguments that made it, or delete "
                        f"{path} (and the runs) to measure again.")
    return stored
