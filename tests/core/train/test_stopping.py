"""How ``prx run`` stops on a signal (prx_core.train.stopping): Ctrl-C during start-up stops at
once, a second Ctrl-C while the first one's checkpoint is written stops at once and keeps the
checkpoints before it, SIGTERM stops like a first Ctrl-C; every way exits non-zero (128 + the
signal), without a traceback, and leaves no process behind. The signals go to the whole process
group, as a terminal sends Ctrl-C, data loader workers included. "stall" (faulty_plugins.py)
holds the run where the signal must arrive."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import faulty_plugins
import pytest

from prx_core.checkpoint import select_checkpoint
from prx_core.registry import ENV_ONLY
from prx_core.testing import TINY_RECIPE

TIMEOUT_S = 300  # to start (importing torch took over 60 s on a loaded machine) or to stop
ANNOUNCED = "the run stops after this step and writes a checkpoint; Ctrl-C again to stop at once"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return faulty_plugins.install(tmp_path_factory.mktemp("site"))


def start(site: Path, run_dir: Path, *settings: str) -> subprocess.Popen:
    """``prx run`` of the tiny recipe in a process group of its own, with two data workers; its
    output goes to ``run_dir``'s sibling output.txt (:func:`output`), to be read while it runs."""
    command = [sys.executable, "-m", "prx_core", "run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain",
               "--set", "train.steps=100000", "--set", "data.workers=2"]
    command += [a for s in settings for a in ("--set", s)]
    env = {**{k: v for k, v in os.environ.items() if k != ENV_ONLY}, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    with open(run_dir.parent / "output.txt", "w") as stream:
        return subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def output(run_dir: Path) -> str:
    return (run_dir.parent / "output.txt").read_text()


def wait_for(process: subprocess.Popen, run_dir: Path, ready) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert process.poll() is None, output(run_dir)
        assert time.monotonic() < deadline, "the run did not get there in time:\n" + output(run_dir)
        time.sleep(0.05)


def finish(process: subprocess.Popen, run_dir: Path) -> str:
    """The output once the process has exited, and checks that nothing of its group is left."""
    try:
        process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output(run_dir)
    deadline = time.monotonic() + 10
    while _group_alive(process.pid):  # data workers and other children exit with the run
        assert time.monotonic() < deadline, "processes of the run outlived it"
        time.sleep(0.05)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    return text


def rows(run_dir: Path) -> list[str]:
    """The lines of metrics.jsonl so far (one per logged step)."""
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_ctrl_c_during_start_up_stops_at_once_and_exits_130(site, tmp_path):
    marker, run_dir = tmp_path / "stalled", tmp_path / "run"
    process = start(site, run_dir, 'plugins=["stall"]', "stall.stage=configure", f"stall.marker={marker}")
    wait_for(process, run_dir, marker.exists)  # in prx_configure_model: the model is being set up
    os.killpg(process.pid, signal.SIGINT)
    text = finish(process, run_dir)
    assert process.returncode == 130, text
    assert "interrupted during start-up: nothing was trained, and no checkpoint was written or changed" in text
    assert not run_dir.exists()  # the run folder comes after the set-up


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_keeping_the_checkpoints_before_it(site, tmp_path):
    marker, run_dir = tmp_path / "stalled", tmp_path / "run"
    process = start(site, run_dir, 'plugins=["stall"]', "stall.stage=save", "stall.on_save=2", f"stall.marker={marker}",
                    "train.checkpoint_every=2")
    wait_for(process, run_dir, lambda: len(rows(run_dir)) >= 3)  # step 2 is saved, and its iteration over
    os.killpg(process.pid, signal.SIGINT)  # asks for a checkpoint (or arrives while the one of step 4 is written)
    wait_for(process, run_dir, lambda: marker.exists() and ANNOUNCED in output(run_dir))  # the first was handled
    os.killpg(process.pid, signal.SIGINT)  # while the next checkpoint is being written
    text = finish(process, run_dir)
    assert process.returncode == 130, text
    good = run_dir / "checkpoints" / "step_00000002"
    assert re.search(rf"interrupted again after step \d+: stopped at once; --resume continues from {re.escape(str(good))} "
                     r"\(step 2\)", text), text
    assert select_checkpoint(run_dir / "checkpoints").folder == good  # complete, hashes checked


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_checkpoints_and_exits_non_zero(site, tmp_path, number):
    run_dir = tmp_path / "run"
    process = start(site, run_dir, "train.checkpoint_every=100000")
    wait_for(process, run_dir, lambda: rows(run_dir))
    os.killpg(process.pid, number)
    text = finish(process, run_dir)
    assert process.returncode == 128 + number, text
    name = "Ctrl-C" if number == signal.SIGINT else "SIGTERM"
    assert f"{name}: {ANNOUNCED}" in text
    stopped = int(re.search(r"interrupted at step (\d+); continue with: prx run \.\.\. --resume", text)[1])
    assert select_checkpoint(run_dir / "checkpoints").folder.name == f"step_{stopped:08d}"
    assert not (run_dir / "summary.json").exists()


def test_importing_the_command_imports_no_torch():
    """So that Ctrl-C while torch imports happens inside the command, which exits 130 without a traceback."""
    code = "import sys, prx_core.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_ctrl_c_while_torch_imports_exits_130(monkeypatch, capsys):
    from prx_core import cli

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "prx_core.distributed":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "prx_core.distributed")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        cli.entry()
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted\n"
