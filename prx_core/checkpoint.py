"""Atomic checkpoints with a ``latest`` pointer, loaded without executing code, and the choice of
the one to resume from.

Layout: ``checkpoints/step_00001000/state.pt`` (``torch.save`` of tensors and plain data,
read back with ``torch.load(weights_only=True)``) and ``manifest.json`` (step, byte size and
SHA-256 of every file), written into a temporary folder and renamed into place, then
``checkpoints/latest`` is replaced atomically. Sharded (FSDP2) runs add a ``dcp/`` folder written
by ``torch.distributed.checkpoint``: every rank writes into the temporary folder, rank 0 commits;
see prx_core.train.state.

A resume takes the newest checkpoint whose files all match their manifest
(:func:`select_checkpoint`) and says why it passed over newer ones: a truncated, missing or
altered file, a manifest that is missing or not JSON, a divergence note. ``latest`` is a pointer
for people and tools, not the source of truth, so an empty or dangling one strands nothing.
Nothing is deleted on the way: pruning counts only checkpoints up to the one just written, and a
skipped folder of the same step is moved into ``replaced/`` when that step is saved again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from prx_core.errors import CheckpointError

STATE_FILE = "state.pt"
MANIFEST = "manifest.json"
LATEST = "latest"
DIVERGED = "diverged.json"
"""Written into a checkpoint whose weights a divergence started from (prx_core.train.divergence):
a resume passes over it, and deleting the note makes it usable again."""
REPLACED = "replaced"
"""Where an unusable checkpoint goes when a resumed run writes the same step again."""
_STEP_FOLDER = re.compile(r"step_(\d+)")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": _digest(path)}
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))


def checkpoint_problem(folder: Path, hashes: bool = True) -> str | None:
    """Why ``folder`` is not a complete checkpoint (one clause naming the file), or None: a missing
    or unreadable manifest, or a file it lists that is missing, of another size or, with
    ``hashes``, of another SHA-256."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return f"it has no {MANIFEST}: it was not completely written"
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = {str(name): (int(meta["bytes"]), str(meta["sha256"])) for name, meta in manifest["files"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its {MANIFEST} is not readable JSON ({err})"
    except (TypeError, KeyError, ValueError, AttributeError):
        return f"its {MANIFEST} does not list the checkpoint's files with their sizes and hashes"
    if STATE_FILE not in listed:
        return f"its {MANIFEST} does not list {STATE_FILE}"
    for name, (size, digest) in listed.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its {MANIFEST} names a file outside the checkpoint ({name})"
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return (f"{path} is truncated or overwritten ({path.stat().st_size} bytes; the manifest says {size}, "
                    f"sha256 {digest[:12]}…)")
        if hashes and _digest(path) != digest:
            return f"{path} is corrupted (its SHA-256 differs from the manifest's {digest[:12]}…)"
    return None


def verify(folder: Path) -> dict:
    """The manifest of ``folder`` after checking every file's size and hash against it."""
    problem = checkpoint_problem(folder)
    if problem:
        raise CheckpointError(f"checkpoint {folder} cannot be used: {problem}. Resume from an earlier checkpoint "
                              f"in {folder.parent} (prx run --resume takes the newest complete one by itself).")
    return json.loads((folder / MANIFEST).read_text())


def _note(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"see {path}"


def step_of(folder: Path) -> int | None:
    """The step a ``step_XXXXXXXX`` folder name says, or None for any other name."""
    match = _STEP_FOLDER.fullmatch(folder.name)
    return int(match[1]) if match else None


def checkpoint_folders(root: Path) -> list[Path]:
    """The ``step_XXXXXXXX`` folders under ``root``, newest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of, reverse=True)


@attrs.frozen
class Selection:
    """Which checkpoint a run resumes from (None: none is usable), and why each newer one was
    passed over, in words for the run log."""

    folder: Path | None
    skipped: tuple[tuple[Path, str], ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"skipped {folder.name}: {reason}" for folder, reason in self.skipped]
        return "; ".join(parts + list(self.notes))

    def unusable_message(self, root: Path) -> str:
        """The one-paragraph error for a folder that has checkpoints, none of them usable."""
        return (f"--resume found no usable checkpoint in {root}: {self.describe()}. Nothing was deleted. If a "
                f"checkpoint was copied or is still being written, complete it and resume again; to start over "
                f"instead, run without --resume into a new folder (--run-dir DIR), or move {root} aside.")


def select_checkpoint(root: Path, hashes: bool = True, failed: Mapping[Path, str] | None = None) -> Selection:
    """The newest usable checkpoint under ``root`` (complete: :func:`checkpoint_problem`, and without a
    divergence note: :data:`DIVERGED`), with the reasons the newer ones are not, and notes on a ``latest`` pointer that names another one and
    on staging folders left by an interrupted save. ``latest`` is only a pointer: the folders are
    what counts, so an empty, stale or dangling pointer loses nothing. ``failed``: folders known
    to be unusable already, with the reason (a load that failed after verification)."""
    failed = failed or {}
    skipped = []
    chosen = None
    for folder in checkpoint_folders(root):
        note = folder / DIVERGED
        problem = failed.get(folder) or (
            f"it holds the state a divergence started from ({_note(note)}; delete {note} to resume from it anyway)"
            if note.is_file() else checkpoint_problem(folder, hashes))
        if problem is None:
            chosen = folder
            break
        skipped.append((folder, problem))
    notes = []
    pointer = root / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else ""
    if pointer.is_file() and (chosen is None or named != chosen.name) and not any(f.name == named for f, _ in skipped):
        notes.append(f"{LATEST} names {named!r}, which " + ("is empty" if not named else
                     "is not a checkpoint folder" if not (root / named).is_dir() else "is older"))
    staging = sorted(p.name for p in root.glob(".tmp_step_*")) if root.is_dir() else []
    if staging:
        notes.append(f"ignored {', '.join(staging)} (left unfinished by an interrupted save)")
    return Selection(chosen, tuple(skipped), tuple(notes))


class CheckpointManager:
    """Saves ``step_XXXXXXXX`` folders under ``root`` and keeps the newest ``keep`` (at least the
    one just written)."""

    def __init__(self, root: Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the checkpoint just written), got {keep}")
        self.root = Path(root)
        self.keep = keep

    def folder(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def staging(self, step: int) -> Path:
        """The temporary folder checkpoint ``step`` is written into before :meth:`commit`."""
        return self.root / f".tmp_step_{step:08d}"

    def begin(self, step: int) -> Path:
        """A fresh temporary folder to write checkpoint ``step`` into."""
        tmp = self.staging(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int) -> Path:
        """Seal ``tmp`` (manifest, fsync), move it into place, update ``latest``, prune old ones.
        A folder of the same step already there (an unusable one a resume skipped) is moved into
        ``replaced/`` rather than deleted."""
        write_manifest(tmp, step)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        final = self.folder(step)
        if final.exists():
            aside = self.root / REPLACED / f"{final.name}.{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        self.point_to(final)
        self._prune(step)
        return final

    def point_to(self, folder: Path) -> None:
        """Make ``latest`` name ``folder`` (atomically)."""
        pointer = self.root / (LATEST + ".tmp")
        pointer.write_text(folder.name)
        os.replace(pointer, self.root / LATEST)
        _fsync_dir(self.root)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        tmp = self.begin(step)
        torch.save(state, tmp / STATE_FILE)
        return self.commit(tmp, step)

    def _prune(self, current: int) -> None:
        """Delete complete checkpoints older than the newest ``keep`` complete ones up to
        ``current`` (the one just written, which is always kept). Incomplete, altered or
        divergence-marked folders are left for a person to inspect, and folders of later steps (skipped by the resume this run
        started from) are neither counted nor touched."""
        complete = [p for p in checkpoint_folders(self.root) if step_of(p) <= current
                    and not (p / DIVERGED).exists() and checkpoint_problem(p, hashes=False) is None]
        for old in complete[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest checkpoint that is complete (sizes checked, not hashes), else None."""
        return select_checkpoint(self.root, hashes=False).folder

    def holds_checkpoints(self) -> bool:
        """Whether anything here looks like a run's checkpoints (usable or not)."""
        return bool(checkpoint_folders(self.root)) or (self.root / LATEST).exists()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a run folder or a ``checkpoints`` folder (the newest complete one)
    or a step folder (as it is)."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if CheckpointManager(candidate).holds_checkpoints():
            selection = select_checkpoint(candidate, hashes=False)
            if selection.folder is None:
                raise CheckpointError(f"no usable checkpoint in {candidate}: {selection.describe()}.")
            return selection.folder
    if (path / MANIFEST).is_file() or (path / STATE_FILE).is_file():
        return path
    raise CheckpointError(f"no checkpoint found at {path}: pass a run folder (runs/NAME), its checkpoints/ "
                          f"folder or one checkpoints/step_XXXXXXXX folder.")


def load_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify and read ``folder/state.pt`` without executing code (weights_only)."""
    verify(folder)
    return read_state(folder, map_location)


def read_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``folder/state.pt`` without executing code (weights_only), trusting an earlier
    :func:`verify` (of one rank, for many)."""
    try:
        return torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as err:  # a corrupt archive that still matched its manifest, or a foreign file
        raise CheckpointError(f"checkpoint {folder / STATE_FILE} could not be read safely ({err}). "
                              f"Resume from an earlier checkpoint.") from None
