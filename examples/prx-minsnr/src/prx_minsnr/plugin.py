"""The "minsnr" technique: the thin plugin around an auxiliary loss that caps each sample's weight in
prx's objective (config in ``config.py``, the method in ``weighting.py``, the per-step loss in
``loss.py``).

Select it in a recipe::

    plugins = ["minsnr"]
    [minsnr]
    gamma = 5.0

The step's total loss becomes ``diffusion + minsnr``, which weights each sample's x0 error by
``min(1 / max(t, floor)^2, gamma)``; ``loss/minsnr`` in metrics.jsonl is the (negative) correction.
"""
from __future__ import annotations

from prx_core.hookspecs import hookimpl
from prx_core.types import RunContext, Technique
from prx_minsnr.config import MinSnrConfig
from prx_minsnr.loss import MinSnrLoss


class MinSnr:
    """Built by prx as ``MinSnr(config, context)`` for a run that selects "minsnr"."""

    def __init__(self, config: MinSnrConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_auxiliary_losses(self) -> list[MinSnrLoss]:
        return [MinSnrLoss(self.config.gamma, self.context.recipe.objective.loss_t_floor)]


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="minsnr",
            plugin=MinSnr,
            config=MinSnrConfig,
            summary="Min-SNR-style weighting: caps each sample's weight in the x-prediction objective at gamma.",
            effects=("loss_term:minsnr",),
        )
    ]
