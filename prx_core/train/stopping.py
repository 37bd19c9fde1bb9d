"""How a run stops before its end: a signal (Ctrl-C, SIGTERM) or a plugin that failed.

:class:`Signals` decides what SIGINT and SIGTERM do at each stage of ``prx run``: during start-up
they stop it at once (nothing is trained yet, so nothing needs saving); once training runs the
first one asks the loop to write a checkpoint and stop after the current step, a second stops at
once; while the run closes (trackers, data workers, the log) further ones are ignored, so that it
closes completely. Either way the process exits non-zero (:class:`prx_core.errors.RunInterrupted`).

:func:`report_failure` puts a :class:`prx_core.errors.PluginFailure`'s traceback into the run's
``log.txt`` (created for it when the failure came before the run folder existed) and names the
file in the message the user sees.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from prx_core.checkpoint import select_checkpoint, step_of
from prx_core.console import RunConsole
from prx_core.errors import PluginFailure

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Signals:
    """SIGINT and SIGTERM while a run starts (stop at once), trains (:meth:`train`: the first sets
    :attr:`signum`, which the loop checks after each step; a second stops at once) and closes
    (:meth:`close`: ignored). Stopping at once raises KeyboardInterrupt; :attr:`signum` keeps the
    first signal received, and with :attr:`announce` (rank 0) the first one during training says
    at once on stderr what happens now. The previous handlers come back on exit. Outside the main
    thread, where Python cannot handle signals, it does nothing."""

    def __init__(self) -> None:
        self.signum = 0
        self.announce = True
        self._stage = "start"
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def train(self) -> None:
        """Training has begun: the first signal now asks for a checkpoint and a clean stop."""
        self._stage = "train"

    def close(self) -> None:
        """The run is closing: let it finish closing, whatever arrives."""
        self._stage = "close"

    def _handle(self, signum: int, frame: object) -> None:
        if self._stage == "close":
            return
        first = self.signum == 0
        self.signum = self.signum or signum
        if self._stage == "start" or not first:
            raise KeyboardInterrupt
        if self.announce:  # os.write: a print here could re-enter a print the signal interrupted
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            os.write(2, f"\n{name}: the run stops after this step and writes a checkpoint; Ctrl-C again to stop at "
                        "once\n".encode())


def stopped_at_once(step: int, trained: bool, checkpoints: Path) -> str:
    """What a run stopped at once by a signal leaves, in one sentence."""
    if not trained:
        return "interrupted during start-up: nothing was trained, and no checkpoint was written or changed"
    good = select_checkpoint(checkpoints, hashes=False).folder
    resume = (f"--resume continues from {good} (step {step_of(good)})" if good is not None
              else "the run has no checkpoint yet, so it starts again from step 0")
    return f"interrupted again after step {step}: stopped at once; {resume}"


def report_failure(failure: PluginFailure, console: RunConsole, root: Path, is_main: bool) -> None:
    """Write the failure's paragraph and traceback into ``root/log.txt`` (on rank 0, creating the
    run folder when the failure came before it existed) and name that file in the message (when
    there is a traceback: a plugin that returned something unusable raised nothing)."""
    if not is_main:
        return
    if console.log_file is None:
        root.mkdir(parents=True, exist_ok=True)
        console.attach_log(open(root / "log.txt", "a"))
    if failure.details:
        failure.details_at = str(root / "log.txt")
    console.detail(f"error: {failure}")
    if failure.details:
        console.detail(failure.details)
