"""The "cfg" technique: the thin plugin around classifier-free guidance (config in ``config.py``, the
method in ``guidance.py``)."""
from __future__ import annotations

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
