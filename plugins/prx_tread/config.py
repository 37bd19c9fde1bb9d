"""The ``[tread]`` recipe table and its validation against the model's depth."""
from __future__ import annotations

import math
from typing import NamedTuple

import attrs

from prx_core.errors import RecipeError


@attrs.frozen(kw_only=True)
class RouteSpec:
    """One route as written in the recipe: blocks ``start..end`` (inclusive, 0-indexed) see a
    random ``keep`` share of each sample's image tokens.

    ``end`` counts from the last block when negative, as in Python: the default ``-2`` is the
    penultimate block (14 of 16, the blog's reading; the public PRX config uses 12).
    """

    start: int = 2
    end: int = -2
    keep: float = 0.5


@attrs.frozen(kw_only=True)
class TreadConfig:
    """``routes``: one or more non-overlapping routes (the TREAD paper allows several), e.g.
    ``routes = [{start = 2, end = 12, keep = 0.5}]``. The default is docs/recipe.md §3's single route."""

    routes: tuple[RouteSpec, ...] = (RouteSpec(),)


class RouteSpan(NamedTuple):
    """A validated route with ``end`` resolved to a block index."""

    start: int
    end: int
    keep: float


def resolve_routes(config: TreadConfig, depth: int) -> tuple[RouteSpan, ...]:
    """Resolve negative ends against ``depth`` and check the routes; return them in block order.

    Raises :class:`RecipeError` naming the key inside the ``[tread]`` table (the core prefixes
    the recipe file and the table) when a route is empty, leaves the model, overlaps another,
    or keeps a share outside (0, 1].
    """
    if not config.routes:
        raise RecipeError(
            "routes is empty: give at least one route, e.g. routes = [{start = 2, end = -2, keep = 0.5}], "
            "or remove \"tread\" from plugins to train dense."
        )
    spans = []
    for i, spec in enumerate(config.routes):
        key = f"routes[{i}]"
        if not (math.isfinite(spec.keep) and 0 < spec.keep <= 1):
            raise RecipeError(
                f"{key}: keep = {spec.keep} must lie in (0, 1]; it is the share of image tokens the routed "
                "blocks see (0.5 in the PRX recipe)."
            )
        end = spec.end + depth if spec.end < 0 else spec.end
        if not 0 <= spec.start <= end < depth:
            resolved = f" (end {spec.end} is block {end})" if spec.end < 0 else ""
            raise RecipeError(
                f"{key}: blocks {spec.start}..{spec.end}{resolved} do not fit the model's {depth} "
                f"blocks (0..{depth - 1}); use 0 <= start <= end <= {depth - 1}, or a negative end counted from "
                f"the last block (-2 is block {depth - 2})."
            )
        spans.append(RouteSpan(spec.start, end, float(spec.keep)))
    spans.sort()
    for before, after in zip(spans, spans[1:]):
        if after.start <= before.end:
            raise RecipeError(
                f"routes: blocks {before.start}..{before.end} and {after.start}..{after.end} overlap; "
                "routes must be disjoint (a route may start right after another ends)."
            )
    return tuple(spans)
