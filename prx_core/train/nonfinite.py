"""Skipping an optimizer step whose loss or gradient is not finite, without a host read.

Reading ``bool(torch.isfinite(loss))`` on the host would make the CPU wait for the GPU once
per step and empty the queue of launched kernels. Instead the decision stays on the device, as
a float32 0-dim tensor ``found_inf`` (1.0: skip, 0.0: step), and every optimizer honours it:

* **The found_inf protocol** (torch's ``GradScaler`` protocol, which our own optimizers may
  follow too): an optimizer with ``_step_supports_amp_scaling = True`` (torch's fused
  Adam/AdamW) or ``honours_found_inf = True`` reads ``self.found_inf`` in ``step()`` and, when
  it holds 1, leaves its parameters and its state unchanged, device-side. Torch's fused kernels
  skip the update and revert the step count (``torch.optim.adam._fused_adam``).
* **Any other optimizer** (``torch.optim.Muon``, SGD, foreach AdamW): :func:`step_unless`
  snapshots the tensors the step may change (its parameters with a gradient and their state),
  steps, and puts the snapshot back with ``torch.where(found_inf, before, after)``. That costs
  a copy of parameters and state per step, so large optimizers should honour ``found_inf``.
  State that does not exist yet (a parameter's first step) has no snapshot: that one step
  reads the flag on the host instead.

The caller keeps the counters (how many steps were skipped) as device tensors too, and reads
them with the other metrics every ``log_every`` steps.
"""
from __future__ import annotations

import torch

FOUND_INF = "found_inf"
"""The optimizer attribute the flag is handed over in (the name ``GradScaler`` uses)."""


def nonfinite_flag(*values: torch.Tensor) -> torch.Tensor:
    """float32 0-dim tensor on the values' device: 1.0 when any element of any value is NaN or
    infinite, else 0.0. No host read."""
    finite = torch.stack([torch.isfinite(v).all() for v in values]).all()
    return (~finite).float()


def honours_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` reads ``optimizer.found_inf`` itself (see module doc)."""
    return bool(getattr(optimizer, "honours_found_inf", False)
                or getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()``, except that parameters and state stay as they were when
    ``found_inf`` (float 0-dim, on the parameters' device) holds 1."""
    if honours_found_inf(optimizer):
        setattr(optimizer, FOUND_INF, found_inf)
        try:
            optimizer.step()
        finally:
            delattr(optimizer, FOUND_INF)
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if any(not optimizer.state.get(p) for p in params):
        # The step creates state: what "unchanged" means for it is the optimizer's business.
        if not bool(found_inf):
            optimizer.step()
        return
    tensors = params + [v for p in params for v in optimizer.state[p].values() if isinstance(v, torch.Tensor)]
    with torch.no_grad():
        before = [t.detach().clone() for t in tensors]
        optimizer.step()
        skip = found_inf.bool()
        for tensor, saved in zip(tensors, before):
            tensor.copy_(torch.where(skip.to(tensor.device), saved, tensor))
