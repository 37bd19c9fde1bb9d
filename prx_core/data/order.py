"""The order in which one rank visits one source's samples, epoch after epoch.

Every rank computes the same shuffled permutation of the source's blocks for an epoch (from
the run seed, the source name and the epoch) and keeps every ``world_size``-th block from its
rank on, so the ranks' shares are disjoint and together cover the source exactly once per epoch.
Worker processes never pick samples: they decode what this order hands them, so there is
nothing to split between workers. Rows inside ``window`` consecutive multi-row blocks (Parquet
row groups) are shuffled together.

:class:`SourceOrder` is the torchdata node over this order; its state is ``(epoch, position)``.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from prx_core.errors import DataError


def epoch_order(
    size: int, blocks: np.ndarray | None, *, name: str, seed: int, epoch: int, rank: int, world_size: int, window: int
) -> np.ndarray:
    """Sample indices of one source that ``rank`` visits in ``epoch``, in order.

    ``blocks`` holds the row count of each block, in index order (None: one sample per block).
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), epoch])
    if blocks is None:
        return rng.permutation(size)[rank::world_size]
    starts = np.concatenate([[0], np.cumsum(blocks)])
    mine = rng.permutation(len(blocks))[rank::world_size]
    parts = []
    for first in range(0, len(mine), window):
        group = mine[first : first + window]
        rows = np.concatenate([np.arange(starts[b], starts[b + 1]) for b in group])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class SourceOrder(BaseNode[tuple[int, int]]):
    """Yields ``(slot, sample index)`` for one source on one rank, forever.

    A finite source starts a new, reshuffled epoch when the current one ends; the scene source
    (``size is None``) simply counts up, rank ``r`` taking indices ``r, r + W, r + 2W, ...``.
    """

    def __init__(
        self,
        slot: int,
        name: str,
        size: int | None,
        blocks: np.ndarray | None,
        *,
        seed: int,
        rank: int,
        world_size: int,
        window: int,
    ):
        super().__init__()
        self.slot, self.name, self.size, self.blocks = slot, name, size, blocks
        self.seed, self.rank, self.world_size, self.window = seed, rank, world_size, window
        self._epoch, self._position = 0, 0
        self._order: np.ndarray | None = None
        if size is not None and len(self._make_order(0)) == 0:
            unit = "row groups" if blocks is not None else "samples"
            count = len(blocks) if blocks is not None else size
            raise DataError(
                f"[data] source {name!r} has {count} {unit}, fewer than the {world_size} ranks, so rank "
                f"{rank} would get none: add data, write smaller Parquet row groups, or use fewer ranks."
            )

    def _make_order(self, epoch: int) -> np.ndarray:
        return epoch_order(
            self.size, self.blocks, name=self.name, seed=self.seed, epoch=epoch,
            rank=self.rank, world_size=self.world_size, window=self.window,
        )  # fmt: skip

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {"epoch": 0, "position": 0}
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._order = None if self.size is None else self._make_order(self._epoch)

    def next(self) -> tuple[int, int]:
        if self._order is None:
            index = self.rank + self.world_size * self._position
        else:
            if self._position >= len(self._order):
                self._epoch, self._position = self._epoch + 1, 0
                self._order = self._make_order(self._epoch)
            index = int(self._order[self._position])
        self._position += 1
        return self.slot, index

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "position": self._position}
