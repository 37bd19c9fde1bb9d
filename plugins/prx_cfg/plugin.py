"""The "cfg" technique: the thin plugin around classifier-free guidance (config in ``config.py``, the
method in ``guidance.py``)."""
from __future__ import annotations

import math
from typing import Any

from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.types import Router, RunContext, Technique
from prx_cfg.config import CFGConfig
from prx_cfg.guidance import ClassifierFreeGuidance


class CFG:
    """Guides sampling by extrapolating from the empty-prompt towards the conditional prediction."""

    def __init__(self, config: CFGConfig, context: RunContext):
        self.config = config

    @hookimpl
    def prx_check_recipe(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.config.scale) and self.config.scale >= 0):
            problems.append(f"scale = {self.config.scale} must be a finite number >= 0 (1 means no guidance).")
        lo, hi = self.config.interval
        if not 0 <= lo <= hi <= 1:
            problems.append(
                f"interval = [{lo}, {hi}] must satisfy 0 <= t_lo <= t_hi <= 1 (noise levels, 1 = noise); "
                "use [0.0, 1.0] to guide at every step."
            )
        return problems

    @hookimpl
    def prx_guidance(
        self, sample_config: Any, model_config: DenoiserConfig, router: Router | None
    ) -> ClassifierFreeGuidance:
        return ClassifierFreeGuidance(self.config.scale, self.config.interval)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="cfg",
            plugin=CFG,
            config=CFGConfig,
            summary="Classifier-free guidance against the empty prompt, optionally within a noise interval.",
            effects=("guides_sampling",),
        )
    ]
