"""Console output: a rich progress bar with ETA and the current losses on a TTY, plain log lines
otherwise (CI, files, ``torchrun`` logs). Only rank 0 prints."""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class RunConsole:
    """Progress and messages of one run. ``enabled`` is False on ranks other than 0."""

    def __init__(self, total_steps: int, enabled: bool = True, interactive: bool | None = None,
                 log_file=None):
        self.enabled = enabled
        self.console = Console(stderr=False, highlight=False)
        self.interactive = self.console.is_terminal if interactive is None else interactive
        self.total = total_steps
        self.log_file = log_file
        self._early: list[str] = []  # lines logged before the run folder (and its log) exist
        self._progress: Progress | None = None
        self._task = None
        self._start = time.monotonic()

    def __enter__(self) -> RunConsole:
        if self.enabled and self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=self.console, transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def attach_log(self, log_file) -> None:
        """Write the run log into ``log_file`` from now on, starting with the lines logged before."""
        self.log_file = log_file
        log_file.write("".join(line + "\n" for line in self._early))
        log_file.flush()
        self._early.clear()

    def log(self, message: str) -> None:
        """A line for the user (and the run log)."""
        if self.log_file is not None:
            self.log_file.write(message + "\n")
            self.log_file.flush()
        elif self.enabled:
            self._early.append(message)
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False)
        else:
            print(message, flush=True)

    def detail(self, text: str) -> None:
        """Text for the run log only (a traceback behind a line already shown)."""
        if self.log_file is not None:
            self.log_file.write(text.rstrip("\n") + "\n")
            self.log_file.flush()

    def advance(self, step: int, phase: str, metrics: Mapping[str, float] | None) -> None:
        """Move the bar to ``step``; with ``metrics`` (a logging step) show / print them."""
        if not self.enabled:
            return
        status = format_metrics(metrics) if metrics else None
        if self._progress is not None:
            fields = {"status": status} if status else {}
            self._progress.update(self._task, completed=step, description=phase, **fields)
        elif metrics:
            elapsed = time.monotonic() - self._start
            print(f"step {step}/{self.total} [{phase}] {status} elapsed {elapsed:.0f}s", flush=True)

    def table(self, title: str, rows: Mapping[str, object]) -> None:
        if not self.enabled:
            return
        table = Table(title=title, show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for key, value in rows.items():
            table.add_row(str(key), f"{value:.4g}" if isinstance(value, float) else str(value))
        if self.interactive:
            self.console.print(table)
        else:
            for key, value in rows.items():
                print(f"{title}: {key} = {value:.4g}" if isinstance(value, float) else f"{title}: {key} = {value}")
            sys.stdout.flush()


def format_metrics(metrics: Mapping[str, float]) -> str:
    shown = [k for k in metrics if k == "loss" or k.startswith("loss/")]
    parts = [f"{k}={metrics[k]:.4f}" for k in shown]
    if "images_per_s" in metrics:
        parts.append(f"{metrics['images_per_s']:.1f} img/s")
    skipped = format_skipped(metrics)
    if skipped:
        parts.append(skipped)
    return " ".join(parts)


def skipped_samples(metrics: Mapping[str, float]) -> dict[str, int]:
    """Samples the loaders skipped so far, by reason (``data/bad/<reason>`` of a metrics row)."""
    prefix = "data/bad/"
    return {key[len(prefix):]: int(value) for key, value in sorted(metrics.items()) if key.startswith(prefix) and value}


def format_skipped(metrics: Mapping[str, float]) -> str:
    """"skipped 3 of 1200 samples (empty 1, truncated 2)", or "" when none was skipped."""
    reasons = skipped_samples(metrics)
    if not reasons:
        return ""
    detail = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    return f"skipped {sum(reasons.values())} of {int(metrics.get('data/seen', 0))} samples ({detail})"
