"""Where a piece of code makes the host wait for the device: each host-device synchronisation of
a call, with the line that caused it.

On a GPU, CUDA's sync debug mode reports every synchronisation as a warning. Elsewhere there are
none to report, but the operations that would be one on a GPU are still visible: every read of
a tensor into a Python number (``.item()``, ``bool()``, ``int()``, ``float()``, all of which
dispatch ``aten._local_scalar_dense``) is recorded by :class:`HostReads`. Each site is described
by :func:`sync_site`.
"""
from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def sync_site(frames: list[traceback.FrameSummary]) -> str:
    """Where a synchronisation happened, from the Python stack at that moment: the innermost
    frame (inside torch, or inside inductor's generated code, it says which kernel or library
    call), then the innermost frame outside torch's own package when that is another one (the
    caller to change)."""
    def describe(frame: traceback.FrameSummary) -> str:
        code = f": {frame.line.strip()}" if frame.line else ""
        return f"{frame.filename}:{frame.lineno} in {frame.name}{code}"

    innermost = frames[-1]
    caller = next((f for f in reversed(frames) if not f.filename.startswith(_TORCH_DIR)), innermost)
    return describe(innermost) if caller is innermost else f"{describe(innermost)} <- {describe(caller)}"


class HostReads(TorchDispatchMode):
    """Records tensor-to-Python-number reads (``.item()``, ``bool()``, ``int()``, ``float()`` all
    dispatch ``aten._local_scalar_dense``), each with its :func:`sync_site`: on a GPU each one is
    a host-device synchronisation."""

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.sites.append(sync_site(traceback.extract_stack()[:-1]))
        return func(*args, **(kwargs or {}))


def host_sync_sites(call: Callable[[], object], device: torch.device, compiled: bool = False) -> tuple[str, ...] | None:
    """Run ``call()`` and return its host-device synchronisations, one :func:`sync_site` each:
    CUDA's sync debug mode on a GPU; elsewhere the tensor-to-number reads of eager code (each
    would be one on a GPU); None for ``compiled`` code off the GPU, where neither applies."""
    if device.type == "cuda":
        sites: list[str] = []

        def record(message, category, filename, lineno, file=None, line=None) -> None:
            if "synchroniz" in str(message):
                sites.append(sync_site(traceback.extract_stack()[:-1]))

        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record  # catch_warnings puts the original back
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return tuple(sites)
    if compiled:
        return None
    with HostReads() as reads:
        call()
    return tuple(reads.sites)
