"""Several recipes' real training steps timed side by side, in one process, on a machine that may
be shared (``prx ablate --budget bench:SECONDS`` turns the result into each variant's steps).

Unlike :mod:`~prx_core.measure.bench` (one step shape, synthetic batches, random text embeddings),
this times what ``prx run`` does: each recipe's real trainer (techniques, optimizers, the recipe's
text encoder and data loader, each phase of its schedule) and its optimizer step on real batches
(loading, text encoding, forward, backward, optimizers, EMA; no logging, checkpoints, samples or
evaluation). It runs ``rounds`` rounds; in each, every recipe (in an order rotated by one per
round) times ``steps`` steps of each of its phases. A phase's step time is the median over
rounds: a slow change of the load hits every recipe alike, a burst hits one round of one recipe
and the median drops it. The 1-minute load average is recorded before each round and after the
last. Each measurement starts once the others' load leaves room for this process's threads (or
after a wait of at most ``wait_s``); when the load during it exceeded ``max_load`` the machine was
busy and it is repeated.

The clock: ``wall`` (default) times the steps with this process's threads (all cores), the
wall-clock a user of the recipe sees on a quiet machine; on a busy one a multi-threaded step
slows down far more than its share of the cores (its threads wait for each other), hence the wait
for a quieter moment. ``cpu`` times the process's CPU time (user + system) with one thread:
other processes do not inflate it (their cache traffic aside; the load is still recorded), so it
measures on a busy machine what one core gives each recipe, in one attempt without waiting.
"""
from __future__ import annotations

import datetime
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import attrs
import torch

from prx_core import distributed as D
from prx_core.errors import UserError
from prx_core.measure.bench import release, synchronize
from prx_core.plan import accumulation_steps, model_config, plan_phases
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry
from prx_core.techniques import TechniqueSet
from prx_core.text import load_text_encoder
from prx_core.train.phase_data import PhaseData
from prx_core.train.trainer import Trainer
from prx_core.types import RunContext

CLOCKS = ("wall", "cpu")


@attrs.frozen
class PhaseSpeed:
    """One phase of one recipe: its ``steps`` and global ``batch_size``, and the seconds per
    optimizer step measured in each round (on the attempt's clock)."""

    phase: str
    resolution: int
    batch_size: int
    steps: int
    step_s: tuple[float, ...]

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.median_step_s


@attrs.frozen
class Attempt:
    """One measurement of every recipe (by name): when, how long it took, with how many threads,
    the load averages seen, and which clock (``wall`` or ``cpu``) timed the steps."""

    started: str
    seconds: float
    threads: int
    rounds: int
    steps_per_round: int
    load: tuple[float, ...]
    variants: dict[str, tuple[PhaseSpeed, ...]]
    clock: str = "wall"

    @property
    def max_load(self) -> float:
        return max(self.load)


class _Contender:
    """One recipe's trainer and a batch stream per phase."""

    def __init__(self, recipe: Recipe, registry: Registry, device: torch.device):
        info = D.DistInfo(0, 1, 0, "none", device)
        context = RunContext(recipe, recipe.seed, 0, 1, device, lambda message: None)
        techniques = TechniqueSet(recipe, registry, context, model_config(recipe))
        text = load_text_encoder(recipe.text, device)
        self.trainer = Trainer(recipe, techniques, text, info)
        self.phases = plan_phases(recipe, techniques)
        self.accumulation = [accumulation_steps(recipe, p, 1) for p in self.phases]
        self.data = [PhaseData(recipe, info, self.trainer.model_config.patch, text.fingerprint, None,
                               lambda message: None) for _ in self.phases]
        self.batches: list[Iterator] = [data.start(p, p.batch_size // a)
                                        for data, p, a in zip(self.data, self.phases, self.accumulation)]

    def time_phase(self, index: int, steps: int, device: torch.device,
                   clock: Callable[[], float] = time.perf_counter) -> float:
        """Seconds per optimizer step of phase ``index`` over ``steps`` steps, on ``clock``."""
        self.trainer.start_phase(self.phases[index], index)
        synchronize(device)
        start = clock()
        for _ in range(steps):
            self.trainer.train_step(self.batches[index], self.accumulation[index])
        synchronize(device)
        return (clock() - start) / steps

    def close(self) -> None:
        for data in self.data:
            data.close()


def measure(recipes: Mapping[str, Recipe], registry: Registry, *, rounds: int, steps: int, device: torch.device,
            clock: str = "wall", loadavg: Callable[[], float] = lambda: os.getloadavg()[0],
            log: Callable[[str], None] = lambda message: None) -> Attempt:
    """Time every recipe's phases in ``rounds`` interleaved rounds on ``clock`` (module doc)."""
    if rounds < 1 or steps < 1:
        raise UserError(f"--bench-rounds ({rounds}) and --bench-steps ({steps}) must be at least 1.")
    if clock not in CLOCKS:
        raise UserError(f"--bench-clock {clock}: choose wall or cpu.")
    if clock == "cpu" and device.type != "cpu":
        raise UserError(f"--bench-clock cpu times the CPU's work; this recipe trains on {device}: use wall.")
    started, began = datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.monotonic()
    timer = time.process_time if clock == "cpu" else time.perf_counter
    threads = torch.get_num_threads()
    if clock == "cpu":
        torch.set_num_threads(1)
    names = list(recipes)
    contenders: dict[str, _Contender] = {}
    try:
        for name in names:
            log(f"building {name}")
            contenders[name] = _Contender(recipes[name], registry, device)
        for contender in contenders.values():  # warm-up, untimed: allocations, optimizer state
            for index in range(len(contender.phases)):
                contender.time_phase(index, 1, device)
        times: dict[str, list[list[float]]] = {n: [[] for _ in contenders[n].phases] for n in names}
        load = []
        for r in range(rounds):
            load.append(loadavg())
            for name in names[r % len(names):] + names[:r % len(names)]:
                for index in range(len(contenders[name].phases)):
                    times[name][index].append(contenders[name].time_phase(index, steps, device, timer))
            log(f"round {r + 1}/{rounds} done (1-minute load average {load[-1]:.2f})")
        load.append(loadavg())
        variants = {
            name: tuple(PhaseSpeed(p.name, p.resolution, p.batch_size, p.steps, tuple(times[name][i]))
                        for i, p in enumerate(contenders[name].phases))
            for name in names
        }
        used = torch.get_num_threads()
    finally:
        for contender in contenders.values():
            contender.close()
        contenders.clear()
        release(device)
        torch.set_num_threads(threads)
    return Attempt(started, round(time.monotonic() - began, 1), used, rounds, steps, tuple(round(x, 2) for x in load),
                   variants, clock)


def wait_until_quiet(below: float, timeout_s: float, loadavg: Callable[[], float], sleep: Callable[[float], None],
                     poll_s: float = 15.0) -> float:
    """Wait until the 1-minute load average drops below ``below`` or ``timeout_s`` passes; return it."""
    waited = 0.0
    while (load := loadavg()) >= below and waited < timeout_s:
        sleep(poll_s)
        waited += poll_s
    return load


def measure_quietly(recipes: Mapping[str, Recipe], registry: Registry, *, rounds: int, steps: int, max_load: float,
                    attempts: int, wait_s: float, device: torch.device, clock: str = "wall",
                    loadavg: Callable[[], float] = lambda: os.getloadavg()[0],
                    sleep: Callable[[float], None] = time.sleep,
                    log: Callable[[str], None] = lambda message: None) -> tuple[Attempt, ...]:
    """:func:`measure`, each attempt after waiting (up to ``wait_s``) for the others' load to
    leave room (the 1-minute load average below ``max_load`` minus this process's threads), and
    repeated (up to ``attempts`` times) while the load during the measurement exceeded
    ``max_load``; every attempt. On the ``cpu`` clock the load does not matter: one attempt, no
    waiting."""
    if clock == "cpu":
        return (measure(recipes, registry, rounds=rounds, steps=steps, device=device, clock=clock, loadavg=loadavg,
                        log=log),)
    below = max(0.5, max_load - torch.get_num_threads())
    done: list[Attempt] = []
    for number in range(1, attempts + 1):
        if (load := loadavg()) >= below:
            log(f"the 1-minute load average is {load:.2f}: waiting up to {wait_s / 60:.0f} min for it to fall "
                f"below {below:g} before measuring ({number}/{attempts})")
            wait_until_quiet(below, wait_s, loadavg, sleep)
        attempt = measure(recipes, registry, rounds=rounds, steps=steps, device=device, loadavg=loadavg, log=log)
        done.append(attempt)
        if attempt.max_load <= max_load:
            break
        log(f"the 1-minute load average reached {attempt.max_load:.2f} during the measurement (limit {max_load:g})")
    return tuple(done)
