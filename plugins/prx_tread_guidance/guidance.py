"""TREAD self-guidance ("sparse guidance", Krause et al. 2026; docs/recipe.md §4).

A model trained with routing is also a good *weak* model of itself when run routed. Each
sampling step runs the same conditional input twice, dense (strong) and routed (weak), and
extrapolates away from the weak prediction: ``routed + w * (dense - routed)``. There is no
unconditional pass, so it costs about 1.5 dense passes per step with a 50 % route, against 2
for classifier-free guidance.
"""
from __future__ import annotations

import attrs
import torch

from prx_core.types import Conditioning, Predict, Router

SAMPLING_STEP = -1
"""The step the routed pass asks the router for: a step training never reaches, so sampling
draws its own route, the same one every time (sampling is deterministic and needs no host
sync to pick a route)."""


def sparse_guidance(dense: torch.Tensor, routed: torch.Tensor, scale: float) -> torch.Tensor:
    """``routed + scale * (dense - routed)``, exactly ``routed`` at 0 and ``dense`` at 1.

    ``torch.lerp`` evaluates from the nearer end point, which is what makes both ends exact.
    """
    return torch.lerp(routed, dense, scale)


@attrs.frozen
class SparseGuidance:
    """The :class:`prx_core.types.Guidance` of TREAD self-guidance for a model of ``patch``."""

    router: Router
    patch: int
    scale: float

    def __call__(
        self, predict: Predict, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning
    ) -> torch.Tensor:
        grid = (x_t.shape[-2] // self.patch, x_t.shape[-1] // self.patch)
        plan = self.router.plan(x_t.shape[0], grid, SAMPLING_STEP, x_t.device)
        dense = predict(x_t, t, cond, ())
        routed = predict(x_t, t, cond, plan)
        return sparse_guidance(dense, routed, self.scale)
