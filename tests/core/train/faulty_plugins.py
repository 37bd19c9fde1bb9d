"""A technique whose code misbehaves on purpose, for the tests of plugin failures, registered
in-process (``discover(extra_modules=[faulty_plugins])``).

"faulty" trains a small real loss term and fails where ``[faulty] fails`` says: in a hook
(``prx_check_recipe``, ``prx_configure_model``), or in its loss during step ``at_step``: raising
(``loss``), returning a per-sample vector (``vector``), an integer tensor (``integer``) or the
core's own term name (``diffusion``). Empty: it never fails.
"""
from __future__ import annotations

import attrs
import torch

from prx_core.hookspecs import hookimpl
from prx_core.types import StepTensors, Technique


@attrs.define(kw_only=True)
class FaultyConfig:
    fails: str = ""
    at_step: int = 1


@attrs.frozen
class FaultyLoss:
    config: FaultyConfig
    name: str = "faulty"

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        per_sample = 0.1 * (step.x0_hat - step.x0).abs().mean(dim=(1, 2, 3))
        fails = self.config.fails if step.step + 1 == self.config.at_step else ""
        if fails == "loss":
            raise ZeroDivisionError("the faulty loss divided by zero")
        if fails == "vector":
            return {"faulty": per_sample}
        if fails == "integer":
            return {"faulty": torch.tensor(1)}
        if fails == "diffusion":
            return {"diffusion": per_sample.mean()}
        return {"faulty": per_sample.mean()}


class Faulty:
    def __init__(self, config: FaultyConfig, context):
        self.config = config

    @hookimpl
    def prx_check_recipe(self) -> list[str]:
        if self.config.fails == "prx_check_recipe":
            raise RuntimeError("the check itself broke")
        return []

    @hookimpl
    def prx_configure_model(self) -> dict:
        if self.config.fails == "prx_configure_model":
            raise ValueError("no module to attach")
        return {}

    @hookimpl
    def prx_auxiliary_losses(self) -> list[FaultyLoss]:
        return [FaultyLoss(self.config)]


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [Technique(name="faulty", plugin=Faulty, config=FaultyConfig, effects=("loss_term:faulty",))]

