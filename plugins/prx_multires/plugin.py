"""Resolution schedule ("multires"): train in phases of fixed resolution and batch size.

The PRX run trains 100 k steps at 512 px (global batch 1024) then 20 k steps at 1024 px (global
batch 512) with REPA off::

    plugins = ["multires", ...]
    [multires]
    phases = [
        { name = "512px", resolution = 512, batch_size = 1024, steps = 100000 },
        { name = "1024px", resolution = 1024, batch_size = 512, steps = 20000, disabled = ["repa"] },
    ]

The plain face is :func:`schedule_phases` (config -> phases) together with
:func:`prx_core.data.schedule.phase_at` (global step -> phase); the core rebuilds the data loader
at each boundary and resumes in the phase of the checkpoint's step.
"""
from __future__ import annotations

from typing import Any

import attrs

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.types import Phase, RunContext, Technique


@attrs.define(kw_only=True)
class PhaseConfig:
    """One phase: ``resolution`` (px, a multiple of the patch), ``batch_size`` (global),
    ``steps``, and ``disabled`` techniques (names from ``plugins``) that are off in it."""

    name: str
    resolution: int
    batch_size: int
    steps: int
    disabled: list[str] = attrs.Factory(list)


@attrs.define(kw_only=True)
class MultiresConfig:
    """``[multires]``: the ordered list of phases; the run's length is the sum of their steps."""

    phases: list[PhaseConfig] = attrs.Factory(list)


def schedule_phases(config: MultiresConfig) -> list[Phase]:
    """The phases as the core's :class:`Phase` values, in order."""
    return [
        Phase(name=p.name, steps=p.steps, resolution=p.resolution, batch_size=p.batch_size, disabled=tuple(p.disabled))
        for p in config.phases
    ]


def schedule_problems(config: MultiresConfig, patch: int, active: tuple[str, ...],
                      configured: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a schedule (empty when nothing), each naming the key to change.

    A phase may disable an active technique or one the recipe configures without selecting
    (an ablation that drops REPA keeps the 1024 px phase's ``disabled = ["repa"]``); any other
    name is a typo."""
    if not config.phases:
        return ["[multires] phases is empty: list at least one { name, resolution, batch_size, steps } table."]
    found = []
    names = [p.name for p in config.phases]
    for i, phase in enumerate(config.phases):
        where = f"[multires] phases[{i}] ({phase.name!r})"
        if phase.steps < 1:
            found.append(f"{where}: steps must be >= 1, got {phase.steps}.")
        if phase.batch_size < 1:
            found.append(f"{where}: batch_size must be >= 1, got {phase.batch_size}.")
        if phase.resolution < patch or phase.resolution % patch:
            found.append(f"{where}: resolution {phase.resolution} must be a positive multiple of the patch size {patch}.")
        for name in phase.disabled:
            if name not in active and name not in configured:
                found.append(
                    f"{where}: disabled names {name!r}, which is neither an active technique (active: "
                    f"{', '.join(active)}) nor configured in the recipe; fix the name or remove it."
                )
            elif name == "multires":
                found.append(f"{where}: the schedule cannot disable itself.")
    if len(set(names)) != len(names):
        found.append(f"[multires] phases: names must be distinct, got {names}.")
    return found


class Multires:
    """The plugin instance: answers the schedule hook from its config."""

    def __init__(self, config: MultiresConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...], model_config: DenoiserConfig) -> list[str]:
        return schedule_problems(self.config, model_config.patch, active, tuple(recipe.techniques))

    @hookimpl
    def prx_resolution_schedule(self, recipe: Any) -> list[Phase]:
        return schedule_phases(self.config)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="multires",
            plugin=Multires,
            config=MultiresConfig,
            summary="Resolution schedule: phases of fixed resolution and global batch, with techniques switched off per phase.",
            effects=("changes_schedule",),
            tiny_settings={"phases": [{"name": "32px", "resolution": 32, "batch_size": 4, "steps": 2},
                                      {"name": "16px", "resolution": 16, "batch_size": 2, "steps": 2}]},
        )
    ]
