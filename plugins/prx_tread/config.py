"""The ``[tread]`` recipe table and its validation against the model's depth."""
from __future__ import annotations

from typing import NamedTuple

import attrs

from prx_core.errors import RecipeError
from prx_core.recipe.constraints import Check, at_least, between, setting


@attrs.frozen(kw_only=True)
class RouteSpec:
    """One route as written in the recipe: blocks ``start..end`` (inclusive, 0-indexed) see a
    random ``keep`` share of each sample's image tokens.

    ``end`` counts from the last block when negative, as in Python: the default ``-2`` is the
    penultimate block (14 of 16, the blog's reading; the public PRX config uses 12).
    """

    start: int = setting(2, at_least(0))
    end: int = -2
    keep: float = setting(0.5, between(0, 1, low_strict=True))


@attrs.frozen(kw_only=True)
class TreadConfig:
    """``routes``: one or more non-overlapping routes (the TREAD paper allows several), e.g.
    ``routes = [{start = 2, end = 12, keep = 0.5}]``. The default is docs/recipe.md §3's single route."""

    routes: tuple[RouteSpec, ...] = setting(
        (RouteSpec(),),
        Check(lambda routes: len(routes) > 0, 'a non-empty array of routes (to train dense, remove "tread" from plugins)'))


class RouteSpan(NamedTuple):
    """A validated route with ``end`` resolved to a block index."""

    start: int
    end: int
    keep: float


def resolve_routes(config: TreadConfig, depth: int) -> tuple[RouteSpan, ...]:
    """Resolve negative ends against ``depth`` and check the routes against it; return them in
    block order. The values themselves (a share in (0, 1], at least one route) are the fields'
    constraints, checked when the recipe loads.

    Raises :class:`RecipeError` naming the key inside the ``[tread]`` table (the core prefixes
    the recipe file and the table) when a route leaves the model or overlaps another.
    """
    spans = []
    for i, spec in enumerate(config.routes):
        key = f"routes[{i}]"
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
