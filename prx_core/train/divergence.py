"""When a run has diverged, decided on the device every step and read on the host only at log
steps and when a checkpoint falls due (in the spirit of prx_core.train.nonfinite: no host read
per step).

A run has diverged, and stops without writing a checkpoint from the bad state, when (settings in
``[train]``):

1. **the weights stop being finite**: the norm of the weights after an optimizer step is NaN or
   infinite (one step of a finite loss with an infinite learning rate does it); the EMA skips
   that step, so it stays finite, and both are checked again right before a checkpoint is written;
2. **the weights jump**: one optimizer step multiplies the norm of all the weights by more than
   ``max_weight_growth`` (2 by default; 0 turns it off). Healthy steps move it by far less: at
   most 0.03 % per step on the tiny test recipe at its learning rate, 3 % at thirty times that
   rate. A learning rate of 1e6 multiplies it by millions in one step;
3. **the loss spikes**: the diffusion loss (the core objective's term) has been above
   ``spike_factor`` (3) times the median of the previous ``spike_window`` (100) finite values of
   the phase for ``spike_steps`` (20) steps in a row (0 turns it off; judged once half the window
   is filled). Not the total loss: a technique's term may be negative (REPA's is a negative cosine
   similarity), so the total can sit below zero, where "three times the median" means nothing. Per-step diffusion losses are
   heavy-tailed (v-space weights small noise levels by 1/t²): on the tiny recipe one step in ten
   is above three times the running median, but never more than two in a row, so twenty in a row
   is an instability, not noise. llm-foundry's KillLossSpike has the same shape (twice the
   running mean, five in a row); OLMo-core's optimizers skip single steps six sigma above a
   rolling mean, which a diffusion loss would trip every few steps;
4. **the loss or gradient stays non-finite**: ``max_nonfinite_in_row`` steps in a row skipped
   (each such step leaves weights, optimizer state and EMA unchanged: prx_core.train.nonfinite).

Under several processes each rank watches its own loss (its own micro-batches) and weight shards:
a spike counts when every rank's loss spikes, a weight problem when any rank's shard has one.

A checkpoint that falls due while the loss is non-finite or spiking waits until it is not (the
state then is the one the bad losses came from); when the run is declared diverged instead, the
checkpoint written right before the first bad step, if any, is marked with a ``diverged.json``
note (prx_core.checkpoint.DIVERGED) so that ``--resume`` passes over it, and the message names the
checkpoint that is good.
"""
from __future__ import annotations

from collections.abc import Iterable

import attrs
import torch
from torch.distributed.tensor import DTensor

from prx_core import distributed as D
from prx_core.recipe.schema import TrainConfig


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (the shard of a DTensor), without communication."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def norm_of(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The norm of all ``tensors`` together, fp32, on their device (no host read)."""
    pieces = [local(t).detach() for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(pieces)]))


@attrs.frozen
class Health:
    """What the device-side record says, read at one step and agreed by every rank."""

    step: int
    skipped_total: int
    nonfinite_streak: int
    nonfinite_from: int
    """First step of the first run of ``max_nonfinite_in_row`` skipped steps (0: none so far)."""
    spike_streak: int
    spike_from: int
    """First step of the first run of ``spike_steps`` spiking losses (0: none so far)."""
    weights_bad_at: int
    """First step whose update made the weights non-finite or jumped (0: none)."""
    weights_finite: bool
    """Whether the weights' norm was still finite at that step (a jump) or not."""
    spike_median: float
    """The running median the current or last spike was measured against."""

    @property
    def settled(self) -> bool:
        """Neither a non-finite nor a spiking loss at the last step: a checkpoint may be written."""
        return self.nonfinite_streak == 0 and self.spike_streak == 0

    def verdict(self, config: TrainConfig) -> tuple[str, int] | None:
        """(what happened, the first step it concerns) when the run has diverged, else None."""
        if self.weights_bad_at:
            if self.weights_finite:
                return (f"the update of step {self.weights_bad_at} multiplied the norm of the weights by more than "
                        f"[train] max_weight_growth = {config.max_weight_growth:g}"), self.weights_bad_at
            return (f"the update of step {self.weights_bad_at} made the weights non-finite (NaN, infinite, or too large "
                    "for their norm to be a float32)"), self.weights_bad_at
        if self.nonfinite_from:
            return (f"{config.max_nonfinite_in_row} optimizer steps in a row, from step {self.nonfinite_from}, had a "
                    "non-finite loss or gradient"), self.nonfinite_from
        if self.spike_from:
            return (f"the diffusion loss stayed above [train] spike_factor = {config.spike_factor:g} x its running median "
                    f"({self.spike_median:.4g}) for {config.spike_steps} steps in a row from step {self.spike_from}"
                    ), self.spike_from
        return None


class DivergenceMonitor:
    """The device-side record of a run's health: counters and flags updated by :meth:`record`
    after every optimizer step with device operations only, read by :meth:`read`."""

    def __init__(self, params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device):
        self.params = params
        self.config = config
        self.device = device
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.skipped_total = zero.clone()
        self.nonfinite_streak = zero.clone()
        self.nonfinite_from = zero.clone()
        self.spike_streak = zero.clone()
        self.spike_from = zero.clone()
        self.weights_bad_at = zero.clone()
        self.weights_nonfinite = zero.clone()
        self.spike_median = torch.zeros((), device=device)
        self.window = torch.full((config.spike_window,), float("nan"), device=device)
        self.recorded = 0  # losses in the window since the phase started (a host count, not a read)
        self.weights_norm = norm_of(params)

    def start_phase(self) -> None:
        """Empty the loss window: a phase's resolution and batch set its own loss level."""
        self.window.fill_(float("nan"))
        self.recorded = 0

    def weights_changed(self) -> None:
        """Measure the weights again after they were replaced (a checkpoint loaded)."""
        self.weights_norm = norm_of(self.params)

    @torch.no_grad()
    def record(self, step: int, loss: torch.Tensor, found_inf: torch.Tensor) -> torch.Tensor:
        """Record optimizer step ``step`` (1-based), taken unless ``found_inf``; returns a float 0-dim
        flag, 1 when its update left the weights non-finite or jumped (the EMA skips it)."""
        c = self.config
        skipped = found_inf.long()
        self.skipped_total += skipped
        self.nonfinite_streak.add_(skipped).mul_(skipped)
        _first_trip(self.nonfinite_from, self.nonfinite_streak, c.max_nonfinite_in_row, step)

        norm = norm_of(self.params)
        nonfinite = ~torch.isfinite(norm)
        bad = nonfinite | (norm > c.max_weight_growth * self.weights_norm) if c.max_weight_growth else nonfinite
        first = (self.weights_bad_at == 0) & bad
        self.weights_nonfinite.copy_(torch.where(first, nonfinite.long(), self.weights_nonfinite))
        self.weights_bad_at.copy_(torch.where(first, step, self.weights_bad_at))
        self.weights_norm = norm

        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        if c.spike_steps and self.recorded >= max(2, c.spike_window // 2):
            median = torch.nanmedian(self.window)
            spike = finite & (loss > c.spike_factor * median)
            self.spike_median.copy_(torch.where(spike & (self.spike_streak == 0), median, self.spike_median))
            # a non-finite loss neither extends nor ends a spike (the non-finite streak counts it)
            self.spike_streak.copy_(torch.where(spike, self.spike_streak + 1,
                                                torch.where(finite, 0, self.spike_streak)))
            _first_trip(self.spike_from, self.spike_streak, c.spike_steps, step)
        slot = self.recorded % c.spike_window
        self.window[slot] = torch.where(finite, loss, self.window[slot])
        self.recorded += 1
        return bad.float()

    @property
    def nonfinite_total(self) -> int:
        """Optimizer steps skipped so far as non-finite (a host read)."""
        return int(self.skipped_total)

    def read(self, step: int, info: D.DistInfo) -> Health:
        """Read the record on the host (one transfer) and agree across ranks: the weights are bad
        if any rank's shard is, a spike counts when every rank's loss spikes."""
        values = torch.stack([self.skipped_total, self.nonfinite_streak, self.nonfinite_from, -self.spike_streak,
                              -self.spike_from, self.weights_bad_at, self.weights_nonfinite])
        values = D.all_reduce_max(values, info).tolist()
        return Health(step, values[0], values[1], values[2], -values[3], -values[4], values[5], not values[6],
                      float(self.spike_median))

    def state_problem(self, ema: dict[str, torch.Tensor], info: D.DistInfo) -> str | None:
        """Right before a checkpoint is written (a host read): why the weights or the EMA cannot be
        saved, or None."""
        bad = torch.stack([~torch.isfinite(norm_of(self.params)), ~torch.isfinite(norm_of(ema.values()))])
        weights, average = D.all_reduce_max(bad.long(), info).tolist()
        if not (weights or average):
            return None
        which = " and ".join(name for name, flag in (("weights", weights), ("EMA weights", average)) if flag)
        return f"the {which} are not finite"


def _first_trip(first: torch.Tensor, streak: torch.Tensor, limit: int, step: int) -> None:
    """Set ``first`` (when still 0) to the first step of a streak that has reached ``limit``."""
    if limit:
        first.copy_(torch.where((first == 0) & (streak >= limit), step - limit + 1, first))
