"""What a W&B run holds: its local transaction logs (the ``.wandb`` files), read with W&B's own
reader (``wandb leet inspect --json``), and the steps they hold."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """The ``.wandb`` files of run ``run_id`` under ``wandb_dir`` (one per process that ran it:
    ``wandb/offline-run-DATE-ID/run-ID.wandb`` or ``wandb/run-DATE-ID/...``), oldest first."""
    return sorted(Path(wandb_dir).glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb"),
                  key=lambda path: path.parent.name.split("run-", 1)[1])


def records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one ``.wandb`` file as W&B's reader prints them (a killed run's file may end
    in a torn record, which the reader leaves out)."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and not done.stdout:
        raise RuntimeError(f"wandb leet inspect {path} failed: {done.stderr.strip()[-500:]}")
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            yield json.loads(line)


def history(paths: list[Path]) -> list[dict[str, Any]]:
    """The history rows (``_step`` and the logged keys) of these files, in file order."""
    return [record["history"]["item"] for path in paths for record in records(path) if record.get("type") == "history"]


def last_step(paths: list[Path]) -> int:
    """The highest ``_step`` these files hold (-1 when none)."""
    return max((int(row["_step"]) for row in history(paths) if "_step" in row), default=-1)
