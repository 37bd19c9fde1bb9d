"""A corrupt checkpoint does not strand a run: ``--resume`` verifies each checkpoint against its
manifest, takes the newest complete one, says which one it took and why it passed over the newer
ones, and deletes nothing; with none usable it says what to do in one paragraph. ``latest`` is a
pointer, not the source of truth. Pruning never deletes the checkpoint just written, nor a folder
it cannot vouch for. (The sharded FSDP2 layout: tests/core/test_distributed.py.)"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prx_core.checkpoint import LATEST, MANIFEST, STATE_FILE, CheckpointManager, select_checkpoint, write_manifest
from prx_core.cli import main
from prx_core.testing import TINY_RECIPE

SETTINGS = ("train.checkpoint_every=2", "train.keep_checkpoints=3")  # 6 steps: checkpoints 2, 4 and 6


def prx_run(run_dir: Path, *settings: str, resume: bool = False) -> int:
    argv = ["run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain", *[a for s in settings for a in ("--set", s)]]
    return main(argv + (["--resume"] if resume else []))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("recovery") / "run"
    assert prx_run(run_dir, *SETTINGS) == 0
    return run_dir


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def folder(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(run_dir: Path, change: Callable[[dict], None]) -> None:
    path = folder(run_dir, 6) / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def foreign_state(run_dir: Path) -> None:
    """A state.pt that matches a regenerated manifest but holds no prx state."""
    torch.save({"weights": torch.zeros(3)}, folder(run_dir, 6) / STATE_FILE)
    write_manifest(folder(run_dir, 6), 6)


# (id, damage to the copied run, words the resume says about it, newest step it can resume from)
CORRUPTIONS = [
    ("state-truncated", lambda r: truncate(folder(r, 6) / STATE_FILE), "state.pt is truncated or overwritten", 4),
    ("state-flipped-byte", lambda r: flip_a_byte(folder(r, 6) / STATE_FILE), "state.pt is corrupted", 4),
    ("state-removed", lambda r: (folder(r, 6) / STATE_FILE).unlink(), "state.pt is missing", 4),
    ("state-foreign", foreign_state, "it could not be loaded", 4),
    ("manifest-removed", lambda r: (folder(r, 6) / MANIFEST).unlink(), "it has no manifest.json", 4),
    ("manifest-not-json", lambda r: (folder(r, 6) / MANIFEST).write_text("{not json"), "not readable JSON", 4),
    ("manifest-truncated", lambda r: truncate(folder(r, 6) / MANIFEST), "not readable JSON", 4),
    ("manifest-wrong-size", lambda r: edit_manifest(r, lambda m: m["files"][STATE_FILE].update(bytes=12)),
     "the manifest says 12", 4),
    ("manifest-without-files", lambda r: (folder(r, 6) / MANIFEST).write_text("[]"), "does not list", 4),
    ("manifest-outside-path", lambda r: edit_manifest(r, lambda m: m["files"].update(
        {"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}})), "names a file outside the checkpoint", 4),
    ("folder-emptied", lambda r: [p.unlink() for p in folder(r, 6).iterdir()], "it has no manifest.json", 4),
    ("two-newest-corrupt", lambda r: [truncate(folder(r, s) / STATE_FILE) for s in (4, 6)],
     "skipped step_00000004: ", 2),
    ("latest-empty", lambda r: (r / "checkpoints" / LATEST).write_text(""), "latest names '', which is empty", 6),
    ("latest-removed", lambda r: (r / "checkpoints" / LATEST).unlink(), "resumed from", 6),
    ("latest-garbage", lambda r: (r / "checkpoints" / LATEST).write_text("../../elsewhere"),
     "which is not a checkpoint folder", 6),
    ("latest-names-deleted-folder", lambda r: shutil.rmtree(folder(r, 6)), "which is not a checkpoint folder", 4),
    ("staging-left-by-a-kill", lambda r: shutil.copytree(folder(r, 6), r / "checkpoints" / ".tmp_step_00000008"),
     "ignored .tmp_step_00000008 (left unfinished by an interrupted save)", 6),
]


@pytest.mark.parametrize(("damage", "words", "resumed"), [c[1:] for c in CORRUPTIONS if c[0] != "state-foreign"],
                         ids=[c[0] for c in CORRUPTIONS if c[0] != "state-foreign"])
def test_the_newest_complete_checkpoint_is_chosen_with_the_reasons(tmp_path, damage, words, resumed):
    """The choice alone, on small checkpoints (fast): every corruption above but the one only a load finds."""
    run_dir = tmp_path / "run"
    manager = CheckpointManager(run_dir / "checkpoints", keep=3)
    for step in (2, 4, 6):
        manager.save(step, state(step))
    damage(run_dir)
    selection = select_checkpoint(run_dir / "checkpoints")
    assert selection.folder == folder(run_dir, resumed)
    described = selection.describe()
    assert words in f"resumed from {selection.folder} at step {resumed}; {described}", described
    assert [f.name for f, _ in selection.skipped] == [f"step_{s:08d}" for s in range(6, resumed, -2)
                                                      if folder(run_dir, s).is_dir()]


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "words", "resumed"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_why(finished, tmp_path, damage, words, resumed,
                                                                          capsys):
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    damage(run_dir)
    skipped = [folder(run_dir, step) for step in range(resumed + 2, 7, 2)]
    before = [p.read_bytes() for f in skipped for p in f.rglob("*") if p.is_file()]
    assert prx_run(run_dir, *SETTINGS, "train.steps=8", resume=True) == 0
    out = capsys.readouterr().out
    assert f"resumed from {folder(run_dir, resumed)} at step {resumed}" in out and words in out, out
    if resumed < 6:
        assert "nothing was deleted" in out
    # every file of the checkpoints passed over is still there: in place, or moved into replaced/
    # when the resumed run wrote the same step again
    kept = [p.read_bytes() for p in (run_dir / "checkpoints").rglob("*") if p.is_file()]
    assert all(data in kept for data in before)
    assert len(losses(run_dir)) == 8 and losses(run_dir)[:6] == losses(finished)  # the same run, continued exactly
    assert (run_dir / "checkpoints" / LATEST).read_text() == "step_00000008"


def test_no_usable_checkpoint_is_one_paragraph_that_says_what_to_do_and_loses_nothing(finished, tmp_path, capsys):
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    for step in (2, 4, 6):
        truncate(folder(run_dir, step) / STATE_FILE)
    (run_dir / "checkpoints" / LATEST).write_text("")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert prx_run(run_dir, *SETTINGS, resume=True) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume found no usable checkpoint in {run_dir / 'checkpoints'}: ")
    assert "\n" not in err.strip() and "Traceback" not in err
    for step in (2, 4, 6):
        assert f"skipped step_{step:08d}: {folder(run_dir, step) / STATE_FILE} is truncated" in err
    assert "Nothing was deleted" in err and "--run-dir" in err
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_folder_with_unusable_checkpoints_is_not_overwritten_without_resume(finished, tmp_path, capsys):
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    (run_dir / "checkpoints" / LATEST).write_text("")
    assert prx_run(run_dir, *SETTINGS) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((2,), float(step))}}


def test_pruning_keeps_the_checkpoint_just_written_and_leaves_what_it_cannot_vouch_for(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        CheckpointManager(tmp_path, keep=0)
    manager = CheckpointManager(tmp_path, keep=1)
    for step in (2, 4, 6):
        manager.save(step, state(step))
    assert [p.name for p in tmp_path.glob("step_*")] == ["step_00000006"]
    truncate(tmp_path / "step_00000006" / STATE_FILE)
    # a resume from an older step (here the empty folder's step 3) writes steps below the corrupt 6
    manager.save(3, state(3))
    manager.save(5, state(5))
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000005", "step_00000006"]
    assert select_checkpoint(tmp_path).folder == tmp_path / "step_00000005"
    manager.save(6, state(6))  # the corrupt 6 is moved aside, not deleted
    (aside,) = (tmp_path / "replaced").iterdir()
    assert aside.name.startswith("step_00000006.") and (aside / STATE_FILE).stat().st_size < (
        tmp_path / "step_00000006" / STATE_FILE).stat().st_size
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000006"]
