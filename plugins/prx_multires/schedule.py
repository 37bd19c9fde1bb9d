"""A resolution schedule as plain functions: the phases a ``[multires]`` table describes, and what
is wrong with one. Together with :func:`prx_core.data.schedule.phase_at` (global step -> phase)
this is the whole method; the core rebuilds the data loader at each boundary and resumes in the
phase of the checkpoint's step."""
from __future__ import annotations

from prx_core.types import Phase
from prx_multires.config import MultiresConfig


def schedule_phases(config: MultiresConfig) -> list[Phase]:
    """The phases as the core's :class:`Phase` values, in order."""
    return [
        Phase(name=p.name, steps=p.steps, resolution=p.resolution, batch_size=p.batch_size, disabled=tuple(p.disabled))
        for p in config.phases
    ]


def schedule_problems(config: MultiresConfig, patch: int, active: tuple[str, ...],
                      configured: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a schedule for this model and selection (empty when nothing), each
    naming the key to change; the values themselves are the fields' constraints.

    A phase may disable an active technique or one the recipe configures without selecting
    (an ablation that drops REPA keeps the 1024 px phase's ``disabled = ["repa"]``); any other
    name is a typo."""
    found = []
    for i, phase in enumerate(config.phases):
        where = f"[multires] phases[{i}] ({phase.name!r})"
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
    return found
