"""The "tread" (token routing) and "tread_guidance" (self-guidance) techniques."""
from __future__ import annotations

import math
from typing import Any

import attrs

from prx_core.errors import PluginError, RecipeError
from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.model.flops import tokens_for
from prx_core.types import CostTerm, Phase, Router, RunContext, Technique
from prx_tread.config import TreadConfig, resolve_routes
from prx_tread.guidance import SparseGuidance
from prx_tread.router import TreadRouter
from prx_tread.routing import routed_flops_saved


class Tread:
    """Routes a random share of image tokens past the middle blocks on every training step."""

    def __init__(self, config: TreadConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_check_recipe(self, model_config: DenoiserConfig) -> list[str]:
        try:
            resolve_routes(self.config, model_config.depth)
        except RecipeError as error:
            return [str(error)]
        return []

    @hookimpl
    def prx_routing(self, phase: Phase, model_config: DenoiserConfig) -> TreadRouter:
        routes = resolve_routes(self.config, model_config.depth)
        return TreadRouter(routes, self.context.seed, self.context.rank)

    @hookimpl
    def prx_cost(self, model_config: DenoiserConfig, phase: Phase, text_tokens: int) -> list[CostTerm]:
        routes = resolve_routes(self.config, model_config.depth)
        image_tokens = tokens_for(phase.resolution, model_config.patch)
        saved = routed_flops_saved(model_config, image_tokens, text_tokens, routes)
        return [CostTerm("tread", -saved, "denoiser")]


@attrs.frozen(kw_only=True)
class TreadGuidanceConfig:
    """``scale``: w in ``routed + w * (dense - routed)``; 3.5 in the PRX recipe, 1 is plain dense."""

    scale: float = 3.5


class TreadGuidance:
    """Guides sampling by extrapolating from a routed towards a dense conditional prediction."""

    def __init__(self, config: TreadGuidanceConfig, context: RunContext):
        self.config = config

    @hookimpl
    def prx_check_recipe(self, recipe: Any, active: tuple[str, ...]) -> list[str]:
        if math.isfinite(self.config.scale) and self.config.scale >= 0:
            return []
        return [f"scale = {self.config.scale} must be a finite number >= 0 (3.5 in the PRX recipe)."]

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
            name="tread",
            plugin=Tread,
            config=TreadConfig,
            summary="TREAD: a random share of image tokens skips the middle blocks during training.",
            effects=("routes_tokens",),
        ),
        Technique(
            name="tread_guidance",
            plugin=TreadGuidance,
            config=TreadGuidanceConfig,
            summary="Self-guidance: extrapolate from a routed towards a dense conditional prediction.",
            effects=("guides_sampling",),
            requires=("tread",),
        ),
    ]
