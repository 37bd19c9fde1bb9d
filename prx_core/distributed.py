"""One process or many under ``torchrun``: process group, device, and DDP / FSDP2 wrapping.

``torchrun --nproc-per-node N -m prx_core run RECIPE`` sets RANK/WORLD_SIZE/LOCAL_RANK; the
same recipe runs unchanged in one process. Backend: NCCL on GPUs, gloo on CPUs. Rank 0 alone
prints and writes the run folder; checkpoints are written by every rank under FSDP2 and committed
by rank 0 (prx_core.train.state).
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from prx_core.recipe.schema import DistributedConfig


@attrs.frozen
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    strategy: str  # "none", "ddp" or "fsdp"
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def device_problem(preference: str) -> str | None:
    """Why the ``[train] device`` named cannot be used on this machine, or None ("auto" always can)."""
    if preference == "auto":
        return None
    device = torch.device(preference)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f'"{preference}" names a CUDA device, but this machine has none; use "auto" or "cpu"'
        if device.index is not None and device.index >= count:
            return f'"{preference}" names CUDA device {device.index}, but this machine has {count} (0..{count - 1})'
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f'"{preference}" names the Apple GPU, which this machine does not have; use "auto" or "cpu"'
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return f'"{preference}" names an Intel GPU, which this machine does not have; use "auto" or "cpu"'
    return None


def init_distributed(config: DistributedConfig, device_preference: str) -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    strategy = config.strategy
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if world == 1:
        strategy = "none"
    return DistInfo(rank, world, local_rank, strategy, device)


def wrap_model(model: nn.Module, info: DistInfo, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """DDP wrapper, or FSDP2 ``fully_shard`` per block then the root (in place), or the model.

    Under FSDP2 with a ``compute_dtype`` (bf16 autocast), the weights are gathered in that dtype
    (half the all-gather traffic of fp32, and one cast per shard instead of one per use under
    autocast) and the gradients reduced in fp32, torchtitan's policy; the shards, the optimizer
    and the EMA stay fp32. Forward inputs are not cast: the noise level t keeps its fp32
    precision for the timestep embedding.
    """
    if info.strategy == "ddp":
        # Technique extras (a REPA projector) run after the denoiser's forward and may sit out a
        # phase; DDP's reducer expects neither, so they are left out of it and their gradients
        # are averaged by sync_extras_grads.
        ignored = [f"extras.{name}" for name, _ in model.extras.named_parameters()]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None,
                                      cast_forward_inputs=False)
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    return model


def sync_extras_grads(model: nn.Module, info: DistInfo) -> None:
    """Average the gradients of the extras DDP ignores (after the last micro-step's backward).
    A parameter without a gradient is unused on every rank alike (its technique is off)."""
    if info.strategy != "ddp":
        return
    grads = [p.grad for p in model.extras.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= info.world_size
        chunks = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [chunk.view_as(g) for chunk, g in zip(chunks, grads)])


def set_gradient_sync(model: nn.Module, info: DistInfo, enabled: bool) -> None:
    """Skip the gradient all-reduce on micro-steps that only accumulate."""
    if info.strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
    elif info.strategy == "ddp":
        model.require_backward_grad_sync = enabled


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``params`` to ``max_norm`` in total; returns the total norm before
    clipping as a plain tensor. Under FSDP2 the gradients are DTensor shards and their norm is a
    DTensor: it is reduced to the full value once, here, so callers read one number."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= info.world_size
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise maximum of ``tensor`` over ranks (a copy; ``tensor`` itself on one process)."""
    if info.world_size > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(entry: Callable[[], int | None]) -> NoReturn:
    """Run ``entry`` (a command's ``main``) and end the process with its exit code.

    One of several processes (``WORLD_SIZE`` > 1, as torchrun and SLURM launch them) ends without
    interpreter finalization: ``atexit`` handlers run, output is flushed, then ``os._exit``. The
    reason is torch, not us: ``destroy_process_group()`` does not stop gloo's worker threads while
    something still references the process group, and DTensor's global caches keep the
    ``DeviceMesh`` of every FSDP2 parameter, which holds the group. A worker thread that drops its
    last reference to a finished collective's tensor after the interpreter has begun to finalize
    must take the GIL, which finalization refuses by ending the thread (``pthread_exit``); that
    unwinds through a ``noexcept`` C++ destructor and calls ``std::terminate``: "terminate called
    without an active exception", SIGABRT, a failed run after a successful one. Whether the worker
    is that late depends on scheduling, so it struck at random, more often on a loaded machine.
    Without finalization no thread can be ended that way. A single process exits normally.

    Once ``entry`` has returned, SIGINT and SIGTERM are ignored: the command is over, and a late
    Ctrl-C must not turn its exit (with the code it chose) into a kill.
    """
    try:
        code = entry()
    except SystemExit as stop:
        code = stop.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - printed as Python would, then the same exit path
        traceback.print_exc()
        code = 1
    code = 0 if code is None else code
    for number in (signal.SIGINT, signal.SIGTERM):  # the command is over: a late Ctrl-C must not cut the exit short
        signal.signal(number, signal.SIG_IGN)
    if not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    if code == 0:  # after a failure a peer may sit in a collective, and destroying the group would wait for it
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable plain data), in rank order, on every rank."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
