"""Techniques whose code misbehaves on purpose, for the tests of plugin failures and of signals:
registered in-process (``discover(extra_modules=[faulty_plugins])``) or, copied into a temporary
site with an entry point (:func:`install`), in a ``prx`` subprocess.

"faulty" trains a small real loss term and fails where ``[faulty] fails`` says: in a hook
(``prx_check_recipe``, ``prx_configure_model``), or in its loss during step ``at_step``: raising
(``loss``), returning a per-sample vector (``vector``), an integer tensor (``integer``) or the
core's own term name (``diffusion``). Empty: it never fails.

"stall" blocks where ``[stall] stage`` says, after writing the file ``marker``, until a signal
ends it: in ``prx_configure_model`` (``configure``: the run is starting) or in the
``on_save``-th checkpoint save (``save``: in ``prx_state_dict``).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

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


@attrs.define(kw_only=True)
class StallConfig:
    stage: str = "configure"
    marker: str = ""
    on_save: int = 1


class Stall:
    def __init__(self, config: StallConfig, context):
        self.config = config
        self.saves = 0

    def _stall(self) -> None:
        Path(self.config.marker).write_text("stalled")
        time.sleep(600)

    @hookimpl
    def prx_configure_model(self) -> dict:
        if self.config.stage == "configure":
            self._stall()
        return {}

    @hookimpl
    def prx_state_dict(self) -> dict:
        self.saves += 1
        if self.config.stage == "save" and self.saves == self.config.on_save:
            self._stall()
        return {}


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [Technique(name="faulty", plugin=Faulty, config=FaultyConfig, effects=("loss_term:faulty",)),
            Technique(name="stall", plugin=Stall, config=StallConfig)]


def install(site: Path) -> Path:
    """This module as an installed plugin distribution in ``site`` (put it on PYTHONPATH)."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__), site / "faulty_plugins.py")
    info = site / "prx_faulty-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: prx-faulty\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[prx.plugins]\nfaulty = faulty_plugins\n")
    return site
