"""``prx run`` killed (SIGKILL) right after optimizer step K, once every tracker has written the
metrics of step K - 1: a crash after the trackers hold steps that the last checkpoint does not.

    python tests/plugins/trackers/kill_after_logged_step.py K RECIPE --run-dir DIR [--set ...]

Launched by ``tests/plugins/test_trackers.py``, which then resumes the run with ``--resume`` and reads
back what each tracker holds.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from prx_core.cli import main
from prx_core.train import sinks
from prx_core.train.trainer import Trainer

WRITTEN: dict[str, set[int]] = {}
CHANGED = threading.Condition()


class Watched:
    """A sink whose finished ``metrics`` calls are recorded, by tracker."""

    def __init__(self, name, sink):
        self.name, self.sink = name, sink
        WRITTEN[name] = set()

    def __getattr__(self, method):
        return getattr(self.sink, method)

    def metrics(self, step, row):
        self.sink.metrics(step, row)
        with CHANGED:
            WRITTEN[self.name].add(step)
            CHANGED.notify_all()


def kill_after(step: int) -> None:
    feed_init = sinks._Feed.__init__

    def watched_feed(self, name, sink, *args):
        feed_init(self, name, Watched(name, sink), *args)

    sinks._Feed.__init__ = watched_feed
    train_step = Trainer.train_step

    def train_step_then_kill(self, *args, **kwargs):
        metrics = train_step(self, *args, **kwargs)
        if self.step == step:
            with CHANGED:
                assert CHANGED.wait_for(lambda: all(step - 1 in s for s in WRITTEN.values()), timeout=400), WRITTEN
            os.kill(os.getpid(), signal.SIGKILL)
        return metrics

    Trainer.train_step = train_step_then_kill


if __name__ == "__main__":
    kill_after(int(sys.argv[1]))
    sys.exit(main(["run", *sys.argv[2:]]))
