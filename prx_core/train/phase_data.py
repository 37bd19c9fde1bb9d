"""The training batches, phase by phase.

Each phase gets its own loader at the phase's resolution and per-device batch. The sample stream
continues across phases (a loader's position is resolution-free), so phase 2 does not replay
phase 1's first samples; after a resume it continues from the position saved in the checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from prx_core import distributed as D
from prx_core.data.batcher import Batch
from prx_core.data.loader import build_loader
from prx_core.recipe.schema import Recipe
from prx_core.types import Phase


class PhaseData:
    """Builds each phase's loader and carries the data position from one to the next.

    ``resumed`` is the ``{"ranks": [state per rank]}`` a checkpoint holds (see
    :meth:`state_dict`), applied to the first loader built.
    """

    def __init__(self, recipe: Recipe, info: D.DistInfo, patch: int, text_fingerprint: str,
                 resumed: dict | None, log: Callable[[str], None]):
        self.recipe = recipe
        self.info = info
        self.patch = patch
        self.text_fingerprint = text_fingerprint
        self.resumed = resumed
        self.log = log
        self.loader = None

    def start(self, phase: Phase, per_device_batch: int) -> Iterator[Batch]:
        """The batches of ``phase``, from where the previous phase (or the checkpoint) stopped."""
        carried = self.loader.state_dict() if self.loader is not None else None
        self.close()
        info = self.info
        self.loader = build_loader(self.recipe.data, resolution=phase.resolution, batch_size=per_device_batch,
                                   patch=self.patch, seed=self.recipe.seed, rank=info.rank,
                                   world_size=info.world_size, text_fingerprint=self.text_fingerprint,
                                   pin_for=info.device if info.device.type == "cuda" else None)
        if self.resumed is not None:
            self._restore(self.resumed["ranks"])
        elif carried is not None:
            self.loader.load_state_dict(carried)
        self.resumed = None
        return iter(self.loader)

    def _restore(self, states: list[dict]) -> None:
        """Each rank resumes its own loader position; under a different process count the data
        order cannot be replayed exactly, so the loaders start the phase's data afresh (and say so)."""
        if len(states) == self.info.world_size:
            self.loader.load_state_dict(states[self.info.rank])
        else:
            self.log(f"resuming on {self.info.world_size} processes from a checkpoint written by {len(states)}: "
                     f"model and optimizer state are exact, the data order restarts for this phase")

    def state_dict(self) -> dict:
        """Every rank's loader position (a collective call: every rank must make it)."""
        return {"ranks": D.gather_objects(self.loader.state_dict(), self.info)}

    def stats(self) -> dict:
        """The loaders' counters (images read, skipped by reason, batches) summed over every rank
        (a collective call: every rank must make it)."""
        totals: dict[str, int] = {}
        for counts in D.gather_objects(self.loader.stats(), self.info):
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
            self.loader = None
