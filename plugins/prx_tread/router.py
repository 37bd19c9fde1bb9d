"""The router the core asks for a route plan on every training step."""
from __future__ import annotations

import attrs
import torch

from prx_core.types import Route, RoutePlan
from prx_tread.config import RouteSpan
from prx_tread.routing import select_tokens, step_generator


@attrs.frozen
class TreadRouter:
    """Fresh random token subsets per sample and step, reproducible from (seed, step, rank).

    Each call builds a private generator, so routing neither reads nor advances the global RNG
    (turning TREAD on does not change the noise, timesteps or dropout a run draws).
    """

    routes: tuple[RouteSpan, ...]
    seed: int
    rank: int

    def plan(self, batch: int, grid: tuple[int, int], step: int, device: torch.device) -> RoutePlan:
        """Route plan for ``batch`` samples on a (rows, cols) token grid at training ``step``."""
        tokens = grid[0] * grid[1]
        generator = step_generator(self.seed, step, self.rank, device)
        return tuple(
            Route(span.start, span.end, select_tokens(batch, tokens, span.keep, generator, device))
            for span in self.routes
        )
