"""How a run stops before its end when a plugin failed: :func:`report_failure` puts a
:class:`prx_core.errors.PluginFailure`'s traceback into the run's ``log.txt`` (created for it when
the failure came before the run folder existed) and names the file in the message the user sees.
"""
from __future__ import annotations

from pathlib import Path

from prx_core.console import RunConsole
from prx_core.errors import PluginFailure


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
