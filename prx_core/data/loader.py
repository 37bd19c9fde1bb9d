"""The training data loader: sources -> weighted mixture -> decode in workers -> bucket batches.

The pipeline is a graph of ``torchdata.nodes``::

    SourceOrder (one per source: this rank's shuffled share, epoch after epoch;
                 StreamOrder for a streaming source: its samples, read in this process)
      -> MultiNodeWeightedSampler (mixture by weight, seeded per rank)
      -> ParallelMapper(SampleReader) (read, decode, fit to bucket; worker processes, in order)
      -> BucketBatcher (one-bucket batches, bad-data counts and stop rule, text cache)
      -> Prefetcher (when workers > 0: batches assembled on a background thread)

Everything that decides which sample comes next runs in the main process, from the seed, the
rank and the state, so the stream does not depend on the number of workers, and
``state_dict()`` / ``load_state_dict()`` resume it exactly (the saved state also carries over a
phase boundary: see :mod:`prx_core.data.batcher`).

The worker processes leave stopping to the process that owns them: they start with SIGINT and
SIGTERM blocked, so Ctrl-C in a terminal or a scheduler's SIGTERM, which reach every process of
the group, stop the run (which checkpoints, then ends its workers) and not the workers under it.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torchdata.nodes import BaseNode, MultiNodeWeightedSampler, ParallelMapper, Prefetcher
from torchdata.nodes.samplers.stop_criteria import StopCriteria

from prx_core.data import files
from prx_core.data.batcher import Batch, BucketBatcher, Emitted
from prx_core.data.buckets import buckets_for
from prx_core.data.config import DataConfig
from prx_core.data.order import SourceOrder
from prx_core.data.reader import SampleReader
from prx_core.data.sources import Source, is_streaming, open_source
from prx_core.data.stream_order import StreamOrder
from prx_core.data.text_cache import TextCache, cache_location
from prx_core.errors import DataError, RecipeError

__all__ = ["Batch", "TrainLoader", "build_loader", "open_sources", "mixture_weights"]

STATE_FORMAT = 1


def open_sources(data: DataConfig, seed: int = 0) -> list[Source]:
    """Index every source of the ``[data]`` table (raises RecipeError / DataError)."""
    problems = data.problems()
    if problems:
        raise RecipeError(" ".join(problems))
    return [open_source(config, seed, data.shuffle_row_groups) for config in data.sources]


def mixture_weights(data: DataConfig, sources: list[Source]) -> dict[str, float]:
    """Each source's share of the mixture (normalised): the recipe's weights, else the sizes."""
    raw = [
        c.weight if c.weight is not None else 1.0 if c.infinite else float(len(s))
        for c, s in zip(data.sources, sources)
    ]
    total = sum(raw)
    return {s.name: w / total for s, w in zip(sources, raw)}


def text_cache_dirs(data: DataConfig, sources: list[Source]) -> list[str]:
    """Where each source's text cache lives (local directories)."""
    dirs = []
    for config, source in zip(data.sources, sources):
        if config.kind == "hf" and not data.text_cache_dir and not files.is_dir(config.path):
            raise DataError(
                f"[data] source {source.name!r} is a hub dataset ({config.path}); set [data] text_cache_dir to a "
                "local directory to hold its text cache."
            )
        directory = cache_location(files.data_root(config.path), source.name, data.text_cache_dir)
        if files.is_url(directory):
            raise DataError(
                f"[data] source {source.name!r} is remote ({config.path}); its text cache must be local: set "
                "[data] text_cache_dir to a local directory."
            )
        dirs.append(directory)
    return dirs


def build_loader(
    data: DataConfig,
    *,
    resolution: int,
    batch_size: int,
    patch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    text_fingerprint: dict | None = None,
    pin_for: torch.device | None = None,
) -> TrainLoader:
    """The loader of one rank: ``batch_size`` images per batch (this rank's device batch) at
    ``resolution`` (the phase's, which may differ from ``data.resolution``).

    ``pin_for`` (the CUDA device of the training) hands out batches assembled in page-locked
    memory on the prefetch thread, so that the step's ``.to(device, non_blocking=True)`` copies
    without waiting for the GPU's queue.

    ``text_fingerprint`` is the text encoder's fingerprint; it is required when
    ``data.text_cache`` is on, and a cache built by another encoder is refused.
    """
    if batch_size < 1:
        raise RecipeError(f"The batch size per device must be >= 1, got {batch_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    sources = open_sources(data, seed)
    buckets = buckets_for(data, resolution, patch)
    text = None
    if data.text_cache:
        if text_fingerprint is None:
            raise ValueError("[data] text_cache is on: build_loader needs the text encoder's fingerprint")
        text = TextCache(text_cache_dirs(data, sources), text_fingerprint)
    return TrainLoader(
        data, sources, buckets, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, text=text,
        pin_for=pin_for,
    )


class TrainLoader:
    """An infinite stream of one-bucket :class:`Batch` es for one rank, resumable exactly.

    Iterating twice continues the same stream; ``load_state_dict`` moves it to a saved point.
    """

    def __init__(
        self,
        data: DataConfig,
        sources: list[Source],
        buckets: tuple[tuple[int, int], ...],
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        text: TextCache | None,
        pin_for: torch.device | None = None,
    ):
        self.buckets = buckets
        self.batch_size = batch_size
        self.sources = sources
        self.weights = mixture_weights(data, sources)
        orders = {
            source.name: StreamOrder(
                slot, source, seed=seed, rank=rank, world_size=world_size, window=data.shuffle_window
            )
            if is_streaming(source)
            else SourceOrder(
                slot,
                source.name,
                None if source.kind == "scenes" else len(source),
                source.blocks,
                seed=seed,
                rank=rank,
                world_size=world_size,
                window=data.shuffle_row_groups,
            )
            for slot, source in enumerate(sources)
        }
        mixture = MultiNodeWeightedSampler(
            orders, self.weights, stop_criteria=StopCriteria.CYCLE_FOREVER, rank=rank, world_size=world_size, seed=seed
        )
        reader = SampleReader(sources, buckets, data.min_side, seed)
        mapper = ParallelMapper(mixture, reader, num_workers=data.workers, method="process", in_order=True)
        self._batcher = BucketBatcher(
            mapper,
            reader,
            batch_size=batch_size,
            names=[s.name for s in sources],
            labels=[s.describe() for s in sources],
            max_bad_share=data.max_bad_share,
            bad_window=data.bad_window,
            text=text,
            pin_for=pin_for,
        )
        self._root: BaseNode[Emitted] | None = (
            Prefetcher(self._batcher, prefetch_factor=data.prefetch) if data.workers > 0 else self._batcher
        )
        self._started = False
        self._state: dict[str, Any] | None = None  # batcher state to start from
        self._stats: dict[str, int] = {}
        self._workers: set[multiprocessing.process.BaseProcess] = set()

    def _names(self) -> list[str]:
        return [s.name for s in self.sources]

    def _start(self) -> BaseNode[Emitted]:
        if self._root is None:
            raise RuntimeError("this TrainLoader is closed")
        if not self._started:
            root_state = self._state
            if root_state is not None and self._root is not self._batcher:
                root_state = {"snapshot": root_state, "steps_since_snapshot": 0}
            previous, before = self._workers, set(multiprocessing.active_children())
            with _signals_blocked():  # which the new workers inherit
                self._root.reset(root_state)  # stops the previous workers (if any), starts new ones
            self._workers = set(multiprocessing.active_children()) - before
            _terminate(previous)
            self._started = True
        return self._root

    def __iter__(self) -> Iterator[Batch]:
        while True:
            emitted = next(self._start())
            self._stats = emitted.stats
            if emitted.problem:
                raise DataError(emitted.problem)
            yield emitted.batch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this rank's stream exactly (plain data and tensors)."""
        if self._root is None:
            raise RuntimeError("this TrainLoader is closed: save its state before closing it")
        if not self._started:
            batcher = self._state
        elif self._root is self._batcher:
            batcher = self._batcher.state_dict()
        else:
            wrapped = self._root.state_dict()
            if wrapped.get("steps_since_snapshot") != 0:
                raise RuntimeError(f"unexpected torchdata Prefetcher state: {sorted(wrapped)}")
            batcher = wrapped["snapshot"]
        return {"format": STATE_FORMAT, "sources": self._names(), "batcher": batcher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from this loader, or one of another resolution or batch size
        over the same sources)."""
        if state.get("format") != STATE_FORMAT or state.get("sources") != self._names():
            raise DataError(
                f"The data loader state in this checkpoint is for sources {state.get('sources')}, but the recipe's "
                f"[data] sources are {self._names()}: resume with the sources the run started with."
            )
        self._state = state["batcher"]
        self._stats = dict(state["batcher"]["stats"]) if state["batcher"] else {}
        self._started = False

    def stats(self) -> dict[str, int]:
        """Cumulative counts up to the last batch handed out: ``seen``, ``seen/<source>``,
        ``bad``, ``bad/<reason>``, ``batches``."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop the worker processes and the prefetch thread."""
        self._root = None
        self._batcher = None
        _terminate(self._workers)
        self._workers = set()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread meanwhile: processes started now inherit the
    mask (through fork and exec alike). One that arrives meanwhile waits and reaches this process
    when the block ends: it is not lost."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process-group signals to shield from
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _terminate(workers: set[multiprocessing.process.BaseProcess]) -> None:
    """End worker processes that outlived torchdata's shutdown.

    torchdata asks its workers to stop and waits 0.5 s for them; a worker whose result is still
    in its queue's pipe (a large image nobody will read now) cannot exit by itself, so it is
    killed (SIGKILL: it blocks SIGTERM, see the module docstring). Workers hold nothing that needs
    flushing.
    """
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    for worker in workers:
        worker.join(timeout=5)
