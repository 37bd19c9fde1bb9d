"""Runs the plan's ``prx run`` subprocesses, several at a time, skipping finished runs.

A run is finished when its ``summary.json`` exists. A run folder without one was interrupted
(or crashed); with ``resume`` it is continued with ``prx run --resume`` (from its last
checkpoint, or from step 0 if it has none), without ``resume`` the runner refuses to touch it.
Each subprocess gets ``cores / parallel`` CPU threads and, on Linux, that many cores of its own.

Ctrl-C or SIGTERM stops the ablation: each running run gets one SIGINT, writes a checkpoint and
exits (the same command with ``--resume`` continues). Both signals are handled explicitly, so
this also holds for an ablation started in the background (``nohup prx ablate ... &``), where
the shell makes the process ignore SIGINT.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prx_core.ablation.design import RunSpec
from prx_core.errors import UserError
from prx_core.runfolder import SUMMARY

DEFAULT_LAUNCHER = (sys.executable, "-m", "prx_core")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
INTERRUPTED_CODES = {code for number in (signal.SIGINT, signal.SIGTERM) for code in (128 + number, -number)}
"""Exit codes of a ``prx run`` that a signal stopped: 128 + the signal when it stopped itself
(having checkpointed), minus the signal when it was killed by it."""


@attrs.frozen
class RunOutcome:
    spec: RunSpec
    status: str  # "skipped" (already finished), "finished", "failed", "interrupted"
    seconds: float = 0.0
    returncode: int = 0
    log: str = ""


def run_state(folder: Path, spec: RunSpec) -> str:
    """"finished", "partial" (folder exists, no summary) or "new"."""
    directory = folder / spec.directory
    if (directory / SUMMARY).is_file():
        return "finished"
    if directory.exists() and any(directory.iterdir()):
        return "partial"
    return "new"


def run_command(launcher: Sequence[str], recipe: str, spec: RunSpec, folder: Path, resume: bool) -> list[str]:
    """``LAUNCHER run RECIPE --set ... --run-dir DIR [--resume]``."""
    sets = [arg for item in spec.overrides for arg in ("--set", item)]
    resume_flag = ["--resume"] if resume else []
    return [*launcher, "run", recipe, *sets, "--run-dir", str(folder / spec.directory), *resume_flag]


def core_slots(parallel: int) -> list[list[int]]:
    """Disjoint CPU sets, one per parallel slot (all cores in one slot when ``parallel`` is 1)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if parallel > len(cores):
        raise UserError(f"--parallel {parallel} is more than the {len(cores)} CPU cores available; use at most "
                        f"{len(cores)} (each run needs at least one core).")
    share = len(cores) // parallel
    return [cores[i * share:(i + 1) * share] for i in range(parallel)]


def _environment(cores: list[int]) -> dict[str, str]:
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(len(cores))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _pin(cores: list[int]) -> Callable[[], None] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, cores)


class RunProgress:
    """Runs done / remaining with an ETA from this session's finished runs; one line per event
    when the console is not a terminal."""

    def __init__(self, total: int, done: int, parallel: int, console: Console):
        self.total, self.done, self.parallel = total, done, parallel
        self.durations: list[float] = []
        self.console = console
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("[bold]ablation"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[eta]}"), console=console)
            self.task = self.bar.add_task("runs", total=total, completed=done, eta="")

    def eta(self) -> str:
        remaining = self.total - self.done
        if not self.durations or not remaining:
            return "ETA ?" if remaining else ""
        seconds = sum(self.durations) / len(self.durations) * remaining / self.parallel
        return f"ETA {seconds / 60:.0f} min" if seconds >= 60 else f"ETA {seconds:.0f} s"

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def message(self, text: str) -> None:
        (self.bar.console if self.bar is not None else self.console).print(text, markup=False, highlight=False)

    def finished(self, outcome: RunOutcome) -> None:
        self.done += 1
        if outcome.status == "finished":
            self.durations.append(outcome.seconds)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, eta=self.eta())
        label = f"{outcome.spec.variant} seed {outcome.spec.seed}"
        if outcome.status == "finished":
            self.message(f"[{self.done}/{self.total}] {label}: finished in {outcome.seconds:.0f} s  {self.eta()}")
        else:
            self.message(f"[{self.done}/{self.total}] {label}: {outcome.status} (exit {outcome.returncode}), "
                         f"log: {outcome.log}")


def run_ablation(
    folder: Path,
    recipe: str,
    specs: Sequence[RunSpec],
    parallel: int = 1,
    resume: bool = False,
    launcher: Sequence[str] = DEFAULT_LAUNCHER,
    console: Console | None = None,
) -> list[RunOutcome]:
    """Run every unfinished spec as a subprocess (``launcher`` replaces ``python -m prx_core``,
    e.g. a fake run script in tests) and return one outcome per spec, in spec order."""
    console = console or Console(highlight=False)
    states = {spec.directory: run_state(folder, spec) for spec in specs}
    partial = [spec.directory for spec in specs if states[spec.directory] == "partial"]
    if partial and not resume:
        listed = ", ".join(partial[:5]) + (f" and {len(partial) - 5} more" if len(partial) > 5 else "")
        raise UserError(f"{folder} has {len(partial)} unfinished run(s) ({listed}). Pass --resume to continue them "
                        f"from their last checkpoint, or delete their folders to start them again.")
    outcomes = {spec.directory: RunOutcome(spec, "skipped") for spec in specs if states[spec.directory] == "finished"}
    queue = [spec for spec in specs if spec.directory not in outcomes]
    slots = core_slots(parallel)
    free = list(range(parallel))
    running: dict[int, tuple[subprocess.Popen, RunSpec, float, Path]] = {}
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    with RunProgress(len(specs), len(outcomes), parallel, console) as progress, StopSignals():
        if outcomes:
            progress.message(f"{len(outcomes)} of {len(specs)} runs already finished; {len(queue)} to go")
        try:
            while queue or running:
                while queue and free:
                    spec, slot = queue.pop(0), free.pop(0)
                    log = folder / "logs" / (spec.directory.replace("/", "__") + ".log")
                    continued = resume and states[spec.directory] == "partial"
                    command = run_command(launcher, recipe, spec, folder, continued)
                    with open(log, "a") as stream:
                        stream.write("$ " + " ".join(command) + "\n")
                        stream.flush()
                        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                                   env=_environment(slots[slot]), preexec_fn=_pin(slots[slot]),
                                                   start_new_session=True)
                    running[slot] = (process, spec, time.monotonic(), log)
                for slot, (process, spec, started, log) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    if process.returncode == 0 and run_state(folder, spec) == "finished":
                        status = "finished"
                    else:
                        status = "interrupted" if process.returncode in INTERRUPTED_CODES else "failed"
                    outcome = RunOutcome(spec, status, time.monotonic() - started, process.returncode, str(log))
                    outcomes[spec.directory] = outcome
                    progress.finished(outcome)
                time.sleep(0.2)
        except KeyboardInterrupt:
            progress.message("interrupted: asking the running runs to checkpoint and stop (Ctrl-C again to abort)")
            _stop(running)
            raise
    return [outcomes[spec.directory] for spec in specs if spec.directory in outcomes]


class StopSignals:
    """Within it, SIGINT and SIGTERM raise KeyboardInterrupt (in the main thread; elsewhere
    nothing changes), also where the shell made the process ignore SIGINT (``nohup ... &``).
    Both executors wait for their runs inside it: the local one then stops its runs with a
    checkpoint, the SLURM one stops waiting and leaves the jobs running."""

    def __enter__(self) -> StopSignals:
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, _interrupt)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(running: dict[int, tuple[subprocess.Popen, RunSpec, float, Path]]) -> None:
    """One SIGINT per run (``prx run`` then writes a checkpoint and exits); a second Ctrl-C here
    sends a second SIGINT, which makes the runs abort at once."""
    processes = [process for process, *_ in running.values()]
    for process in processes:
        process.send_signal(signal.SIGINT)
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            process.wait()
