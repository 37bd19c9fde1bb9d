"""The run's metrics sinks (the trackers' ``prx_metrics_sink``), each fed on a thread of its own.

Training never waits for a tracker: each call is queued for the sink's thread, which makes the
calls in order. A sink that raises is reported once (console and ``log.txt``, with the traceback
in ``log.txt``) and receives nothing more but its ``close``; training goes on and
``metrics.jsonl`` keeps every row. After ``--resume`` the sinks first get again what the run
folder logged up to the checkpoint (:meth:`Sinks.replay`), so a tracker that lost records to the
kill fills them in. At the end the core waits for each sink to finish its queue
and close, up to :data:`CLOSE_TIMEOUT_S`.
"""
from __future__ import annotations

import platform
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from prx_core.techniques import TechniqueSet
from prx_core.runfolder import EVALS, RunFolder
from prx_core.tracking import flatten, scores_of
from prx_core.types import MetricsSink, RunStart, SampleGrid

CLOSE_TIMEOUT_S = 300.0
"""How long the end of a run waits for a tracker to send what it has queued (an online W&B run
uploads its files on close); past it the run ends and says so."""
_STOP = object()


class _Feed:
    """One sink, its queue and its thread."""

    def __init__(self, name: str, sink: MetricsSink, say: Callable[[str], None], detail: Callable[[str], None]):
        self.name, self.sink, self.say, self.detail = name, sink, say, detail
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.failed = False
        self.thread = threading.Thread(target=self._work, name=f"prx-tracker-{name}", daemon=True)
        self.thread.start()

    def send(self, method: str, step: int | None, *args: Any) -> None:
        self.calls.put((method, step, args))

    def finish(self, status: str) -> None:
        self.calls.put(("close", None, (status,)))
        self.calls.put(_STOP)

    def _work(self) -> None:
        while True:
            item = self.calls.get()
            if item is _STOP:
                return
            method, step, args = item
            if self.failed and method != "close":
                continue
            try:
                getattr(self.sink, method)(*args)
            except Exception as err:  # a tracker's failure must never stop training: report it once
                if not self.failed:
                    self.failed = True
                    at = f" at step {step}" if step is not None else ""
                    self.say(f"tracker {self.name}: {method} failed{at} ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:300]}); it is off for the rest of this run. Training "
                             f"goes on and metrics.jsonl keeps every row (traceback in log.txt).")
                    self.detail(traceback.format_exc())


class Sinks:
    """The metrics sinks of one run on rank 0 (no sink, nothing to do, on the other ranks)."""

    def __init__(self, feeds: list[_Feed]):
        self.feeds = feeds

    @classmethod
    def open(cls, techniques: TechniqueSet, run: RunStart, say: Callable[[str], None],
             detail: Callable[[str], None]) -> Sinks:
        """Ask every tracker of ``techniques`` for its sink and open each on its own thread."""
        feeds = []
        for name, sink in techniques.call("prx_metrics_sink", run=run):
            feed = _Feed(name, sink, say, detail)
            feed.send("open", None)
            feeds.append(feed)
        return cls(feeds)

    def _send(self, method: str, step: int | None, *args: Any) -> None:
        for feed in self.feeds:
            feed.send(method, step, *args)

    def replay(self, folder: RunFolder, start_step: int, finished: bool) -> None:
        """After ``--resume``: send again what the run folder logged up to ``start_step`` (its
        metrics rows, periodic evaluations and sample grids; not the final grid of a finished run,
        which the run makes again), in step order, for the trackers to fill in what they lost when
        the run was killed (a tracker's buffers, or queued records its thread had not written)."""
        rows = {row["step"]: row for row in folder.read_metrics() if row["step"] <= start_step}
        evaluations = {row["step"]: row for row in folder.read_rows(EVALS) if row["step"] <= start_step}
        last_grid = start_step - 1 if finished else start_step
        grids = {int(path.stem.removeprefix("step_")): path for path in sorted(folder.samples.glob("step_*.png"))}
        for step in sorted(set(rows) | set(evaluations) | {s for s in grids if s <= last_grid}):
            if step in rows:
                self.metrics(step, rows[step])
            if step in evaluations:
                self.evaluation(step, scores_of(evaluations[step]))
            if step in grids and step <= last_grid:
                prompts = grids[step].with_suffix(".txt")
                captions = tuple(prompts.read_text().splitlines()) if prompts.is_file() else ()
                self.images(step, SampleGrid(Image.open(grids[step]), captions, grids[step]))

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        self._send("metrics", step, step, dict(row))

    def images(self, step: int, grid: SampleGrid) -> None:
        self._send("images", step, step, grid)

    def evaluation(self, step: int, results: Mapping[str, Any]) -> None:
        self._send("evaluation", step, step, flatten(results))

    def close(self, status: str, say: Callable[[str], None], timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Queue every sink's close and wait for their threads (at most ``timeout`` seconds in all)."""
        for feed in self.feeds:
            feed.finish(status)
        deadline = time.monotonic() + timeout
        for feed in self.feeds:
            feed.thread.join(max(0.0, deadline - time.monotonic()))
            if feed.thread.is_alive():
                say(f"tracker {feed.name}: still sending after {timeout:.0f} s; the run ends without waiting "
                    "(what it had not sent is missing from the tracker, not from metrics.jsonl).")


def run_name(run_dir: Path, runs_dir: str) -> str:
    """The run folder relative to ``[train] runs_dir`` (``quickstart``,
    ``ablate-quickstart-leave-one-out/runs/-repa/seed0``), else the folder's own name."""
    run_dir, root = Path(run_dir).resolve(), Path(runs_dir).resolve()
    return str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) and run_dir != root else run_dir.name


def git_commit(directory: Path) -> tuple[str, bool]:
    """(commit, has uncommitted changes to tracked files) of the git work tree at ``directory``,
    ("", False) outside one or without git."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        return commit, bool(commit and git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "", False


def run_facts(techniques: TechniqueSet, trackers: tuple[str, ...], parameters: Mapping[str, int], device: str,
              processes: int, strategy: str, precision: str) -> dict[str, Any]:
    """What a tracker records about a run besides its recipe."""
    commit, dirty = git_commit(Path.cwd())
    try:
        prx_version = version("prx")
    except PackageNotFoundError:
        prx_version = ""
    return {
        "techniques": [name for name in techniques.names if name not in trackers],
        "trackers": list(trackers),
        "parameters": dict(parameters),
        "parameters_total": sum(parameters.values()),
        "device": device,
        "processes": processes,
        "strategy": strategy,
        "precision": precision,
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "prx_version": prx_version,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
