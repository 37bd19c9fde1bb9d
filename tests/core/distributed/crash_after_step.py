"""``prx run`` whose every rank dies (SIGKILL) right after optimizer step K: a crash at a known step.

    python -m torch.distributed.run --nproc-per-node 2 --standalone tests/core/distributed/crash_after_step.py \
        K RECIPE --run-dir DIR [--set ...]

Launched by ``tests/core/test_distributed.py``, which then resumes the run with ``--resume`` and
compares it with an uninterrupted one. Nothing is flushed or saved at the crash: the resumed run
has only what the last committed checkpoint holds.
"""
from __future__ import annotations

import os
import signal
import sys

from prx_core.cli import main
from prx_core.distributed import exit_process
from prx_core.train.trainer import Trainer


def crash_after(step: int) -> None:
    train_step = Trainer.train_step

    def train_step_then_crash(self, *args, **kwargs):
        metrics = train_step(self, *args, **kwargs)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return metrics

    Trainer.train_step = train_step_then_crash


if __name__ == "__main__":
    crash_after(int(sys.argv[1]))
    exit_process(lambda: main(["run", *sys.argv[2:]]))
