"""Checkpoints: atomic save, ``latest`` pointer, pruning, refusal of truncated, unfinished and
code-carrying files."""
from __future__ import annotations

import json

import pytest
import torch

from prx_core.checkpoint import (
    LATEST,
    MANIFEST,
    STATE_FILE,
    CheckpointManager,
    load_state,
    resolve_checkpoint,
    verify,
)
from prx_core.errors import CheckpointError

EXECUTED: list[str] = []


def _record_execution(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class CodeCarrier:
    """Unpickling this runs ``_record_execution``: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return (_record_execution, ("unpickled",))


def state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3, 4), float(step))}, "meta": {"name": "x", "lr": [1e-4]}}


def test_save_commits_a_verified_folder_and_moves_the_latest_pointer(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=5)
    first = manager.save(1, state(1))
    second = manager.save(2, state(2))
    assert first.name == "step_00000001" and second.name == "step_00000002"
    assert manager.latest() == second
    assert (tmp_path / "checkpoints" / LATEST).read_text().strip() == "step_00000002"
    manifest = verify(second)
    assert manifest["step"] == 2 and set(manifest["files"]) == {STATE_FILE}
    assert manifest["files"][STATE_FILE]["bytes"] == (second / STATE_FILE).stat().st_size
    loaded = load_state(second)
    assert loaded["step"] == 2 and torch.equal(loaded["model"]["w"], torch.full((3, 4), 2.0))
    assert loaded["meta"] == {"name": "x", "lr": [1e-4]}
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))  # nothing half-written left behind


def test_prune_keeps_the_newest_n(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (5, 10, 15, 20, 25):
        manager.save(step, state(step))
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000020", "step_00000025"]
    assert manager.latest() == tmp_path / "step_00000025"


def test_resolve_checkpoint_accepts_a_run_folder_its_checkpoints_folder_or_a_step_folder(tmp_path):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    manager.save(3, state(3))
    latest = manager.save(4, state(4))
    assert resolve_checkpoint(tmp_path / "run") == latest
    assert resolve_checkpoint(tmp_path / "run" / "checkpoints") == latest
    assert resolve_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003").name == "step_00000003"
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path / "elsewhere")


def test_a_truncated_state_file_is_refused_naming_the_file(tmp_path):
    folder = CheckpointManager(tmp_path).save(1, state(1))
    path = folder / STATE_FILE
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_state(folder)
    assert str(path) in str(err.value)


def test_a_corrupted_state_file_of_the_right_size_is_refused(tmp_path):
    folder = CheckpointManager(tmp_path).save(1, state(1))
    path = folder / STATE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
        load_state(folder)


def test_a_checkpoint_without_manifest_is_refused(tmp_path):
    folder = CheckpointManager(tmp_path).save(1, state(1))
    (folder / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=MANIFEST):
        load_state(folder)


def test_loading_never_executes_code_from_the_file(tmp_path):
    """weights_only: a pickle holding an arbitrary object is refused, and its code does not run."""
    manager = CheckpointManager(tmp_path)
    tmp = manager.begin(1)
    torch.save({"model": {}, "payload": CodeCarrier()}, tmp / STATE_FILE)
    folder = manager.commit(tmp, 1)  # a valid manifest: only the unpickler can refuse it
    verify(folder)
    EXECUTED.clear()
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_state(folder)
    assert EXECUTED == []
    # the file is a real pickle that would run the code without weights_only
    torch.load(folder / STATE_FILE, weights_only=False)
    assert EXECUTED == ["unpickled"]


def test_the_manifest_lists_every_file_in_the_folder(tmp_path):
    manager = CheckpointManager(tmp_path)
    tmp = manager.begin(7)
    torch.save(state(7), tmp / STATE_FILE)
    (tmp / "dcp").mkdir()
    (tmp / "dcp" / "shard_0.distcp").write_bytes(b"0123456789")
    folder = manager.commit(tmp, 7)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {STATE_FILE, "dcp/shard_0.distcp"}
    (folder / "dcp" / "shard_0.distcp").write_bytes(b"01234")
    with pytest.raises(CheckpointError, match="shard_0.distcp"):
        verify(folder)
