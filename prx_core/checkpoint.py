"""Atomic checkpoints with a ``latest`` pointer, loaded without executing code.

Layout: ``checkpoints/step_00001000/state.pt`` (``torch.save`` of tensors and plain data,
read back with ``torch.load(weights_only=True)``) and ``manifest.json`` (step, byte size and
SHA-256 of every file), written into a temporary folder and renamed into place, then
``checkpoints/latest`` is replaced atomically. A missing or truncated file is detected from the
manifest and refused with a message. Sharded (FSDP2) runs add a ``dcp/`` folder written by
``torch.distributed.checkpoint``: every rank writes into the temporary folder, rank 0 commits;
see prx_core.train.state.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from prx_core.errors import CheckpointError

STATE_FILE = "state.pt"
MANIFEST = "manifest.json"
LATEST = "latest"


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


def verify(folder: Path) -> dict:
    """The manifest of ``folder`` after checking every file's size and hash against it."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it was not completely written. "
                              f"Delete it and resume from an earlier checkpoint in {folder.parent}.")
    manifest = json.loads(manifest_path.read_text())
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["bytes"] or _digest(path) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint file {path} is missing, truncated or corrupted (expected {meta['bytes']} bytes, "
                f"sha256 {meta['sha256'][:12]}…). Delete {folder} and resume from an earlier checkpoint in "
                f"{folder.parent}."
            )
    return manifest


class CheckpointManager:
    """Saves ``step_XXXXXXXX`` folders under ``root`` and keeps the newest ``keep``."""

    def __init__(self, root: Path, keep: int = 2):
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
        """Seal ``tmp`` (manifest, fsync), move it into place, update ``latest``, prune old ones."""
        write_manifest(tmp, step)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        final = self.folder(step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = self.root / (LATEST + ".tmp")
        pointer.write_text(final.name)
        os.replace(pointer, self.root / LATEST)
        _fsync_dir(self.root)
        self._prune()
        return final

    def save(self, step: int, state: dict[str, Any]) -> Path:
        tmp = self.begin(step)
        torch.save(state, tmp / STATE_FILE)
        return self.commit(tmp, step)

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        return self.root / pointer.read_text().strip()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a run folder, a ``checkpoints`` folder or a step folder."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / LATEST).is_file():
            return CheckpointManager(candidate).latest()
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
