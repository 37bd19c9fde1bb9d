"""What a loader worker does with one ``(source slot, sample index)``: read, decode, fit to a
bucket. It never raises: a sample that cannot be used comes back as :class:`Rejected` with the
reason, so a bad file costs one sample, never a worker."""
from __future__ import annotations

import multiprocessing

import attrs
import numpy as np
import torch

from prx_core.data.decode import BadSample, decode_to_bucket
from prx_core.data.sources import RawSample, SceneSource, Source, Unreadable


@attrs.frozen
class Loaded:
    """A usable sample: ``pixels`` (3, H, W) uint8 at the size of bucket ``bucket``."""

    slot: int
    index: int
    key: str
    bucket: int
    pixels: np.ndarray
    caption: str
    raw: RawSample | None = None  # the stored sample, kept for a streaming source (cannot be re-read)


@attrs.frozen
class Rejected:
    """A sample skipped for ``reason`` (see :data:`prx_core.data.decode.BAD_REASONS`)."""

    slot: int
    index: int
    key: str
    reason: str
    detail: str


def one_thread_in_workers() -> None:
    """A decoding worker process resizes with one torch thread: the workers are the parallelism,
    and torch's default pool (one thread per core in each of them) would oversubscribe the CPU.
    On the training process (``workers = 0``) the pool is left as it is."""
    if multiprocessing.parent_process() is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def scene_bucket(index: int, seed: int, count: int) -> int:
    """The bucket a scene is drawn in: uniform over buckets, fixed by (index, seed)."""
    mixed = (index * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    mixed ^= mixed >> 31
    return int(mixed % count)


class SampleReader:
    """The map function of the loader: ``reader((slot, index)) -> Loaded | Rejected``; a
    streaming source's reference carries its sample: ``(slot, -1, RawSample | Unreadable)``."""

    def __init__(self, sources: list[Source], buckets: tuple[tuple[int, int], ...], min_side: int | None, seed: int):
        self.sources = sources
        self.buckets = buckets
        self.min_side = min_side
        self.seed = seed

    def __call__(self, ref: tuple) -> Loaded | Rejected:
        one_thread_in_workers()
        slot, index, *carried = ref
        source = self.sources[slot]
        key = carried[0].key if carried else str(index)
        try:
            if isinstance(source, SceneSource):
                bucket = scene_bucket(index, self.seed, len(self.buckets))
                caption, pixels = source.render(index, *self.buckets[bucket])
                return Loaded(slot, index, key, bucket, pixels, caption)
            if not carried:
                key = source.key(index)
            elif isinstance(carried[0], Unreadable):
                raise BadSample(carried[0].reason, carried[0].detail)
            raw = carried[0] if carried else source.read(index)
            if not raw.caption:
                raise BadSample("no_caption", "no caption sidecar or field, or an empty one")
            bucket, pixels = decode_to_bucket(raw.image, self.buckets, self.min_side)
            return Loaded(slot, index, raw.key, bucket, pixels, raw.caption, raw if carried else None)
        except BadSample as bad:
            return Rejected(slot, index, key, bad.reason, bad.detail)
        except Exception as err:  # noqa: BLE001 - a worker must survive any one sample
            return Rejected(slot, index, key, "error", f"{type(err).__name__}: {err}")
