"""Group decoded samples into one-bucket batches, count bad samples, stop on too many.

:class:`BucketBatcher` is the torchdata node after the decoding map. It keeps one buffer per
bucket and emits a batch as soon as a bucket holds ``batch_size`` samples. Its state is small
and does not depend on the resolution: the sampler's position, the ids of the samples waiting
in buffers (re-read on resume, in arrival order, so the buffers come back exactly; a streaming
source's are stored whole, as it cannot be re-read), the counts,
and the recent bad samples. Loading a state saved at another resolution or batch size (the
phase boundary of a resolution schedule) continues the same sample stream in the new buckets.
"""
from __future__ import annotations

import collections
from typing import Any

import attrs
import numpy as np
import torch
from torchdata.nodes import BaseNode

from prx_core.data.reader import Loaded, Rejected, SampleReader
from prx_core.data.sources import RawSample
from prx_core.data.text_cache import TextCache
from prx_core.errors import DataError
from prx_core.types import Conditioning


@attrs.frozen
class Batch:
    """One device batch, every image from the same bucket."""

    images: torch.Tensor  # (B, 3, H, W) float32 in [-1, 1]
    captions: list[str]
    ids: list[str]  # "source:sample-id"
    text: Conditioning | None  # from the text cache when enabled, else None


@attrs.frozen
class Emitted:
    """What the batcher node yields: a batch with the counts as of that batch, or the message
    of a data problem that must stop the run (raised by the loader on the training thread)."""

    batch: Batch | None
    stats: dict[str, int]
    problem: str = ""


def to_unit_range(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], in two single-threaded passes with no temporary (into
    ``out`` when given): numpy rather than torch so that batch assembly never wakes torch's
    intra-op thread pool (which the training step owns)."""
    out = np.multiply(pixels, np.float32(1 / 127.5), dtype=np.float32, out=out)
    return np.subtract(out, np.float32(1.0), out=out)


def batch_images(pixels: list[np.ndarray], pin_memory: bool) -> torch.Tensor:
    """The batch's images as one float32 tensor in [-1, 1], written straight into page-locked
    memory when ``pin_memory`` (no second copy to pin them afterwards)."""
    stacked = np.stack(pixels)
    images = torch.empty(stacked.shape, dtype=torch.float32, pin_memory=pin_memory)
    to_unit_range(stacked, out=images.numpy())
    return images


def use_device(device: torch.device) -> None:
    """Make ``device`` this thread's current CUDA device before pinning: page-locked memory is
    allocated in the current device's context, and a new thread starts on device 0, where every
    rank would otherwise create a context of its own."""
    if device.index is not None and torch.cuda.current_device() != device.index:
        torch.cuda.set_device(device)


class BadDataWindow:
    """The bad samples among the last ``window`` samples seen; too many of them is a DataError."""

    def __init__(self, max_share: float, window: int):
        self.max_share, self.window = max_share, window
        self.seen = 0
        self.recent: collections.deque[tuple[int, int, str, str, str]] = collections.deque()

    def add(self, bad: tuple[int, str, str, str] | None) -> bool:
        """Record one sample (``(slot, id, reason, detail)`` when bad); True when over the limit."""
        self.seen += 1
        if bad is not None:
            self.recent.append((self.seen, *bad))
        while self.recent and self.recent[0][0] <= self.seen - self.window:
            self.recent.popleft()
        return len(self.recent) > self.max_share * self.window

    def message(self, sources: list[str]) -> str:
        by_source: dict[int, list[tuple[str, str, str]]] = collections.defaultdict(list)
        for _, slot, sample_id, reason, detail in self.recent:
            by_source[slot].append((sample_id, reason, detail))
        parts = []
        for slot, bad in sorted(by_source.items()):
            reasons = collections.Counter(reason for _, reason, _ in bad)
            examples = {reason: detail for _, reason, detail in reversed(bad)}
            shown = ", ".join(sample_id for sample_id, _, _ in bad[:20])
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            summary = "; ".join(f"{n} {r} (e.g. {examples[r][:120]})" for r, n in reasons.most_common())
            parts.append(f"source {sources[slot]}: {summary}; sample ids: {shown}{more}")
        return (
            f"Too much bad training data: {len(self.recent)} of the last {min(self.seen, self.window)} samples could "
            f"not be used (the limit is [data] max_bad_share = {self.max_share} of bad_window = {self.window}). "
            + " | ".join(parts)
            + ". Fix or remove these files (`prx data inspect PATH` shows what is wrong), or raise max_bad_share."
        )

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "recent": [list(entry) for entry in self.recent]}

    def load(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.recent = collections.deque(tuple(entry) for entry in state["recent"])


class BucketBatcher(BaseNode[Emitted]):
    """Turns the stream of decoded samples into one-bucket batches.

    ``source`` is the decoding map (torchdata ``ParallelMapper``); ``reader`` re-reads the
    buffered samples on resume; ``names`` are the sources' id prefixes and ``labels`` their
    descriptions for error messages. With ``pin_for`` (the CUDA device of the training) the batch
    is assembled in page-locked memory, here, on the loader's prefetch thread: the training
    thread's ``.to(device, non_blocking=True)`` then neither waits for the GPU nor copies on the
    host.
    """

    def __init__(
        self,
        source: BaseNode[Loaded | Rejected],
        reader: SampleReader,
        *,
        batch_size: int,
        names: list[str],
        labels: list[str],
        max_bad_share: float,
        bad_window: int,
        text: TextCache | None,
        pin_for: torch.device | None = None,
    ):
        super().__init__()
        self.pin_for = pin_for
        self.source, self.reader = source, reader
        self.batch_size, self.names, self.labels = batch_size, names, labels
        self.max_bad_share, self.bad_window = max_bad_share, bad_window
        self.text = text
        self._parallel = _mapper_is_parallel(source)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._buffers: list[list[tuple[int, Loaded]]] = [[] for _ in self.reader.buckets]
        self._arrivals = 0
        self._guard = BadDataWindow(self.max_bad_share, self.bad_window)
        self._stats: collections.Counter[str] = collections.Counter()
        if initial_state is None:
            self.source.reset(None)
            return
        self.source.reset(_mapper_state(initial_state["sampler"], self._parallel))
        self._stats.update(initial_state["stats"])
        self._guard.load(initial_state["guard"])
        for slot, index, *stored in initial_state["pending"]:
            carried = (RawSample(str(stored[0]), bytes(stored[1]), stored[2]),) if stored else ()
            item = self.reader((int(slot), int(index), *carried))
            if isinstance(item, Loaded):
                self._buffer(item)

    def _buffer(self, item: Loaded) -> list[Loaded] | None:
        """Add a sample; return its bucket's batch when the bucket is full."""
        self._arrivals += 1
        bucket = self._buffers[item.bucket]
        bucket.append((self._arrivals, item))
        if len(bucket) < self.batch_size:
            return None
        full = [entry for _, entry in bucket[: self.batch_size]]
        del bucket[: self.batch_size]
        return full

    def next(self) -> Emitted:
        while True:
            item = next(self.source)
            name = self.names[item.slot]
            self._stats["seen"] += 1
            self._stats[f"seen/{name}"] += 1
            if isinstance(item, Rejected):
                self._stats["bad"] += 1
                self._stats[f"bad/{item.reason}"] += 1
                if self._guard.add((item.slot, f"{name}:{item.key}", item.reason, item.detail)):
                    labels = [f"{n!r} ({label})" for n, label in zip(self.names, self.labels)]
                    return Emitted(None, dict(self._stats), self._guard.message(labels))
                continue
            self._guard.add(None)
            full = self._buffer(item)
            if full is not None:
                return self._emit(full)

    def _emit(self, items: list[Loaded]) -> Emitted:
        captions = [item.caption for item in items]
        text = None
        if self.text is not None:
            try:
                text = self.text.lookup(captions)
            except DataError as err:
                return Emitted(None, dict(self._stats), str(err))
        pin = self.pin_for is not None
        if pin:
            use_device(self.pin_for)
        images = batch_images([item.pixels for item in items], pin_memory=pin)
        if pin and text is not None:
            text = Conditioning(text.tokens.pin_memory(), text.mask.pin_memory())
        ids = [f"{self.names[item.slot]}:{item.key}" for item in items]
        self._stats["batches"] += 1
        return Emitted(Batch(images=images, captions=captions, ids=ids, text=text), dict(self._stats))

    def pending(self) -> list[list]:
        """``[slot, index]`` of the buffered samples, in arrival order; a streaming source's
        samples cannot be re-read, so theirs are ``[slot, -1, key, image bytes, caption]``."""
        waiting = sorted(((seq, item) for bucket in self._buffers for seq, item in bucket), key=lambda e: e[0])
        return [
            [item.slot, item.index] + ([item.raw.key, item.raw.image, item.raw.caption] if item.raw else [])
            for _, item in waiting
        ]

    def get_state(self) -> dict[str, Any]:
        return {
            "sampler": _sampler_state(self.source.state_dict()),
            "pending": self.pending(),
            "stats": dict(self._stats),
            "guard": self._guard.state(),
        }


# torchdata's ParallelMapper stores its source's state as {"it_state": {"source": S}} when it maps
# inline and {"it_state": {"snapshot": S, "steps_since_snapshot": k}} with workers; with a
# snapshot after every item (snapshot_frequency=1), k is 0 once an item has been handed on. Keeping
# only S makes a checkpoint independent of [data] workers.


def _mapper_is_parallel(mapper: BaseNode) -> bool:
    return getattr(mapper, "num_workers", 0) > 0


def _sampler_state(mapper_state: dict[str, Any]) -> dict[str, Any]:
    inner = mapper_state.get("it_state", {})
    if "source" in inner:
        return inner["source"]
    if "snapshot" in inner and inner.get("steps_since_snapshot") == 0:
        return inner["snapshot"]
    raise RuntimeError(f"unexpected torchdata ParallelMapper state layout: {sorted(inner)} (torchdata version?)")


def _mapper_state(sampler_state: dict[str, Any], parallel: bool) -> dict[str, Any]:
    if parallel:
        return {"it_state": {"snapshot": sampler_state, "steps_since_snapshot": 0}}
    return {"it_state": {"source": sampler_state}}
