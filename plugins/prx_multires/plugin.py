"""The "multires" technique: the thin plugin around a resolution schedule (config in ``config.py``,
the method in ``schedule.py``).

The PRX run trains 100 k steps at 512 px (global batch 1024) then 20 k steps at 1024 px (global
batch 512) with REPA off::

    plugins = ["multires", ...]
    [multires]
    phases = [
        { name = "512px", resolution = 512, batch_size = 1024, steps = 100000 },
        { name = "1024px", resolution = 1024, batch_size = 512, steps = 20000, disabled = ["repa"] },
    ]
"""
from __future__ import annotations

from typing import Any

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.types import Phase, RunContext, Technique
from prx_multires.config import MultiresConfig
from prx_multires.schedule import schedule_phases, schedule_problems


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
