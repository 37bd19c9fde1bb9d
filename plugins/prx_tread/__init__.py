"""TREAD token routing (Krause et al. 2025): during training a random share of each image's
tokens skips a stretch of middle blocks. The plain functions below work without prx;
``prx_tread.plugin`` registers the "tread" technique around them (see CARD.md)."""
from prx_tread.config import RouteSpan, RouteSpec, TreadConfig, resolve_routes
from prx_tread.router import TreadRouter
from prx_tread.routing import kept_count, route_seed, routed_flops_saved, select_tokens, step_generator

__all__ = [
    "RouteSpan",
    "RouteSpec",
    "TreadConfig",
    "TreadRouter",
    "kept_count",
    "resolve_routes",
    "route_seed",
    "routed_flops_saved",
    "select_tokens",
    "step_generator",
]
