"""Exponential moving average of the denoiser's weights, used for sampling and evaluation.

RECIPE.md §7: decay 0.999 applied every 10 steps (about 0.9999 per step), which keeps the EMA
update off most steps' critical path.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """fp32 shadow copies of ``named`` parameters, updated every ``every`` steps."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], decay: float, every: int):
        self.decay = decay
        self.every = every
        self.shadow = {name: p.detach().float().clone() for name, p in named}
        self._live = dict(named)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based)."""
        if step % self.every:
            return
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        live = [self._live[n].detach().float() for n in names]
        torch._foreach_lerp_(shadow, live, 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module, prefix: str = "") -> None:
        """Write the averaged weights into ``model`` (a denoiser with the same parameter names)."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            params[prefix + name].copy_(value)
