"""The "tread_guidance" technique: the thin plugin around TREAD self-guidance (config in
``config.py``, the method in ``guidance.py``)."""
from __future__ import annotations

from typing import Any

from prx_core.errors import PluginError
from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.types import Router, RunContext, Technique
from prx_tread_guidance.config import TreadGuidanceConfig
from prx_tread_guidance.guidance import SparseGuidance


class TreadGuidance:
    """Guides sampling by extrapolating from a routed towards a dense conditional prediction."""

    def __init__(self, config: TreadGuidanceConfig, context: RunContext):
        self.config = config

    @hookimpl
    def prx_guidance(self, sample_config: Any, model_config: DenoiserConfig, router: Router | None) -> SparseGuidance:
        if router is None:
            raise PluginError(
                "tread_guidance needs the routed pass of the \"tread\" technique, but no router was given: "
                "add \"tread\" to the recipe's plugins, or use \"cfg\" for classifier-free guidance."
            )
        return SparseGuidance(router, model_config.patch, self.config.scale)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="tread_guidance",
            plugin=TreadGuidance,
            config=TreadGuidanceConfig,
            summary="Self-guidance: extrapolate from a routed towards a dense conditional prediction.",
            effects=("guides_sampling",),
            requires=("tread",),
        ),
    ]
