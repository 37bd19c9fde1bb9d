"""Classifier-free guidance (Ho & Salimans 2022) with an optional guidance interval
(Kynkäänniemi et al. 2024: guidance helps most at middle noise levels and hurts at the ends).

Guidance is applied to the x0 prediction; the sampler's velocity is affine in x0, so this is
the same as guiding the velocity.
"""
from __future__ import annotations

import attrs
import torch

from prx_core.types import Conditioning, Predict


def classifier_free(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, exactly ``uncond`` at 0 and ``cond`` at 1
    (``torch.lerp`` evaluates from the nearer end point)."""
    return torch.lerp(uncond, cond, scale)


def in_interval(t: torch.Tensor, interval: tuple[float, float]) -> torch.Tensor:
    """Per-sample boolean: ``interval[0] <= t <= interval[1]``."""
    return (t >= interval[0]) & (t <= interval[1])


@attrs.frozen
class ClassifierFreeGuidance:
    """The :class:`prx_core.types.Guidance` of CFG: guided inside ``interval``, conditional outside.

    Both passes run at every step and the interval selects per sample with ``torch.where``: a
    host-side skip would need a device sync per step. ``uncond`` must have x_t's batch size.
    """

    scale: float
    interval: tuple[float, float] = (0.0, 1.0)

    def __call__(
        self, predict: Predict, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning
    ) -> torch.Tensor:
        conditional = predict(x_t, t, cond, ())
        unconditional = predict(x_t, t, uncond, ())
        guided = classifier_free(conditional, unconditional, self.scale)
        inside = in_interval(t, self.interval).view(-1, *([1] * (x_t.dim() - 1)))
        return torch.where(inside, guided, conditional)
