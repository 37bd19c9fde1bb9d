"""Exponential moving average of the denoiser's weights, used for sampling and evaluation.

docs/recipe.md §7: decay 0.999 applied every 10 steps (about 0.9999 per step), which keeps the EMA
update off most steps' critical path.

Under FSDP2 the parameters are DTensor shards and so are the shadows (``detach().clone()`` keeps
the placement): each rank averages only its own shard, and :meth:`copy_to` gathers the full
weights, so every rank must call it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


class EMA:
    """fp32 shadow copies of ``named`` parameters, updated every ``every`` steps."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], decay: float, every: int):
        self.decay = decay
        self.every = every
        self.shadow = {name: p.detach().float().clone() for name, p in named}
        self._live = dict(named)

    @torch.no_grad()
    def update(self, step: int, skip: torch.Tensor | None = None) -> None:
        """Call after optimizer step number ``step`` (1-based).

        ``skip``: a 0/1 float 0-dim tensor on the weights' device, 1 when that optimizer step
        was skipped (non-finite); the shadows then stay as they are, decided on the device
        without a host read (see prx_core.train.nonfinite): the lerp weight becomes 0, which
        leaves each shadow exactly as it was (the weights are finite: the step was skipped).
        """
        if step % self.every:
            return
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        live = [self._live[n].detach().float() for n in names]
        if skip is None:
            torch._foreach_lerp_(shadow, live, 1 - self.decay)
            return
        weight = (1 - skip.float()) * (1 - self.decay)
        for average, weights in zip(shadow, live):  # one pass each, like the foreach lerp
            average.lerp_(weights, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Shadows saved in this run's layout, or full ones (a one-process checkpoint resumed
        under FSDP2), which each rank cuts to its own shard."""
        for name, value in state.items():
            shadow = self.shadow[name]
            if isinstance(shadow, DTensor) and not isinstance(value, DTensor):
                value = distribute_tensor(value.to(shadow.device), shadow.device_mesh, shadow.placements,
                                          src_data_rank=None)
            shadow.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module, prefix: str = "") -> None:
        """Write the averaged weights into ``model`` (a plain denoiser with the same parameter
        names). Under FSDP2 this gathers the shards: every rank must call it."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            params[prefix + name].copy_(value.full_tensor() if isinstance(value, DTensor) else value)
