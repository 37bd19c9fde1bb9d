"""The "tread" technique: the thin plugin around TREAD token routing (config in ``config.py``, the
method as plain functions in ``routing.py`` and the per-step router in ``router.py``)."""
from __future__ import annotations

from prx_core.errors import RecipeError
from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.model.flops import tokens_for
from prx_core.types import CostTerm, Phase, RunContext, Technique
from prx_tread.config import TreadConfig, resolve_routes
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
    ]
