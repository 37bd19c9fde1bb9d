"""Helpers the data tests share: a one-resolution [data] table, taking batches, and running
``prx data ...`` in-process."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from prx_core.cli import data_cmd
from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.loader import build_loader


def data_config(*sources: SourceConfig, **options) -> DataConfig:
    """A [data] table at 32 px over ``sources``."""
    return DataConfig(resolution=32, sources=list(sources), **options)


def take(loader, n: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def cut_and_resume(make, workers_before: int, workers_after: int, cut: int, rest: int, tmp_path,
                   check_state=None) -> tuple[list, object]:
    """Take ``cut`` batches from ``make(workers_before)``, save its state through ``torch.save``
    (as a checkpoint does), resume a loader ``make(workers_after)`` from it and take ``rest`` more.
    Returns the ``cut + rest`` batches and the (closed) resumed loader; ``check_state`` sees the
    state before it is saved."""
    first = make(workers_before)
    it = iter(first)
    before = [next(it) for _ in range(cut)]
    state = first.state_dict()
    if check_state is not None:
        check_state(state)
    torch.save(state, tmp_path / "state.pt")
    first.close()
    resumed = make(workers_after)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    after = take(resumed, rest)
    resumed.close()
    return before + after, resumed


def sample_ids(batches) -> list[str]:
    return [i for b in batches for i in b.ids]


def by_caption(batch) -> tuple[list[str], torch.Tensor]:
    """The batch's captions and images, ordered by caption (to compare sources whose orders differ)."""
    order = np.argsort(batch.captions, kind="stable")
    return [batch.captions[i] for i in order], batch.images[order]


def one_batch(source: SourceConfig, n: int, **options) -> tuple[list[str], torch.Tensor]:
    """``n`` samples of ``source`` as one 32 px square batch, ordered by caption."""
    loader = build_loader(data_config(source, buckets=False, **options), resolution=32, batch_size=n, patch=16, seed=0)
    (batch,) = take(loader, 1)
    loader.close()
    return by_caption(batch)


def run_data_command(argv: list[str]) -> int:
    """``prx data ...`` as the command line parses and runs it."""
    parser = argparse.ArgumentParser(prog="prx")
    data_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
