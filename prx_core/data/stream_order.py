"""The order in which one rank reads a streaming source (no random access), epoch after epoch.

Each epoch, every rank permutes the stream's shards the same way (from the run seed, the
source name and the epoch) and reads every ``world_size``-th shard from its rank on; with fewer
shards than ranks, every rank reads all shards and keeps every ``world_size``-th row. The rank's
stream is read a window of ``window`` samples at a time, and each window is emitted in a seeded
random order.

The state is ``(epoch, cursor of the current window's first sample, samples taken from the
window)``; the cursor holds the stream's own ``state_dict`` (Hugging Face ``IterableDataset``s
resume from it without re-reading what came before). A resume re-reads the current window and
skips what was taken, so it continues exactly.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from prx_core.data.sources import RawSample, Unreadable
from prx_core.errors import DataError


def epoch_shards(n_shards: int, *, name: str, seed: int, epoch: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """``(shards this rank reads in epoch, row stride)``: stride 1 when the rank owns whole
    shards, ``world_size`` when every rank reads all shards and keeps row ``rank`` mod stride."""
    order = np.random.default_rng([seed, zlib.crc32(name.encode()), epoch]).permutation(n_shards)
    if n_shards >= world_size:
        return [int(s) for s in order[rank::world_size]], 1
    return [int(s) for s in order], world_size


class StreamOrder(BaseNode[tuple[int, int, RawSample | Unreadable]]):
    """Yields ``(slot, -1, RawSample | Unreadable)`` for one streaming source on one rank,
    forever (the sample travels with its reference: the workers cannot read a stream by index)."""

    def __init__(self, slot: int, source: Any, *, seed: int, rank: int, world_size: int, window: int):
        super().__init__()
        self.slot, self.source = slot, source
        self.seed, self.rank, self.world_size, self.window = seed, rank, world_size, window

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {"epoch": 0, "cursor": [0, 0, None], "taken": 0}
        self._epoch = int(state["epoch"])
        self._open(state["cursor"])
        self._fill()
        self._taken = int(state["taken"])

    def _open(self, cursor: list) -> None:
        """Position the reader at ``cursor = [shard position, row, stream state or None]``."""
        self._shards, self._stride = epoch_shards(
            self.source.n_shards, name=self.source.name, seed=self.seed, epoch=self._epoch,
            rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        self._position, self._row = int(cursor[0]), int(cursor[1])
        self._stream, self._examples = None, None
        if self._position < len(self._shards):
            self._start_shard(cursor[2])

    def _start_shard(self, stream_state: dict | None) -> None:
        self._stream = self.source.shard(self._shards[self._position])
        if stream_state is not None:
            self._stream.load_state_dict(stream_state)
        self._examples = iter(self._stream)

    def _cursor(self) -> list:
        state = self._stream.state_dict() if self._stream is not None and self._row > 0 else None
        return [self._position, self._row, state]

    def _fill(self) -> None:
        """Read the next window (up to ``window`` of this rank's samples) and shuffle it."""
        self._window_cursor = self._cursor()
        samples: list[RawSample | Unreadable] = []
        while len(samples) < self.window and self._position < len(self._shards):
            try:
                example = next(self._examples)
            except StopIteration:
                self._position, self._row = self._position + 1, 0
                if self._position < len(self._shards):
                    self._start_shard(None)
                continue
            row, self._row = self._row, self._row + 1
            if row % self._stride == self.rank % self._stride:
                samples.append(self.source.sample(example, f"{self._shards[self._position]}/{row}"))
        position, row = self._window_cursor[:2]
        rng = np.random.default_rng([self.seed, zlib.crc32(self.source.name.encode()), self._epoch, position, row])
        self._window = [samples[i] for i in rng.permutation(len(samples))]
        self._taken = 0

    def next(self) -> tuple[int, int, RawSample | Unreadable]:
        if self._taken >= len(self._window):
            self._fill()
            if not self._window:  # the epoch is over: the next one, reshuffled
                self._epoch += 1
                self._open([0, 0, None])
                self._fill()
                if not self._window:
                    raise DataError(
                        f"[data] source {self.source.name!r}: rank {self.rank} of {self.world_size} read no sample "
                        f"from {self.source.describe()}: check that the dataset split is not empty."
                    )
        sample = self._window[self._taken]
        self._taken += 1
        return self.slot, -1, sample

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "cursor": self._window_cursor, "taken": self._taken}
