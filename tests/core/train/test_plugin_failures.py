"""A plugin that fails at run time is named: one paragraph naming the technique, the hook (or the
loss) and what went wrong, the traceback in the run's log.txt, exit code 2 while the recipe is
validated and the run set up, 1 once training has begun, and the last checkpoint intact so that
--resume continues exactly once the plugin is fixed. The faulty technique: tests/core/train/faulty_plugins.py."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import faulty_plugins
import pytest

from prx_core import registry as plugin_registry
from prx_core.checkpoint import LATEST, select_checkpoint
from prx_core.cli import main
from prx_core.testing import TINY_RECIPE


@pytest.fixture
def prx(monkeypatch, capsys):
    """``prx run`` on the tiny recipe with the faulty technique installed next to the built-in ones;
    returns (exit code, stderr)."""
    monkeypatch.setattr(plugin_registry, "discover",
                        functools.partial(plugin_registry.discover, extra_modules=[faulty_plugins]))

    def run(run_dir: Path, *settings: str, dry_run: bool = False, resume: bool = False) -> tuple[int, str]:
        argv = ["run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain", "--set", 'plugins=["faulty"]']
        argv += [a for s in settings for a in ("--set", s)] + ["--dry-run"] * dry_run + ["--resume"] * resume
        code = main(argv)
        return code, capsys.readouterr().err

    return run


def one_paragraph(err: str) -> str:
    assert err.startswith("error: technique 'faulty' (faulty_plugins.Faulty) failed in "), err
    assert "\n" not in err.strip() and "Traceback" not in err, err
    assert 'This is a fault of the plugin, not of the recipe: report it to the plugin\'s authors, or remove "faulty" ' \
           "from plugins." in err
    return err.strip()


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("hook", "raised"), [("prx_check_recipe", "RuntimeError: the check itself broke"),
                                              ("prx_configure_model", "ValueError: no module to attach")])
def test_a_hook_that_raises_before_training_is_named_and_exits_2(prx, tmp_path, hook, raised):
    run_dir = tmp_path / "run"
    code, err = prx(run_dir, f"faulty.fails={hook}")
    assert code == 2
    message = one_paragraph(err)
    assert f"failed in its hook {hook}: {raised}." in message
    assert message.endswith(f"The full traceback is in {run_dir / 'log.txt'}.")
    # the run folder holds the log with the traceback, and nothing else: no checkpoint, no sample
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.txt"]
    log = (run_dir / "log.txt").read_text()
    assert message in log and "Traceback (most recent call last):" in log
    assert f"in {hook}\n" in log and raised in log  # the plugin's own frame and the exception


def test_without_a_run_folder_the_traceback_goes_into_a_file_it_names(prx, tmp_path):
    code, err = prx(tmp_path / "run", "faulty.fails=prx_check_recipe", dry_run=True)
    assert code == 2
    message = one_paragraph(err)
    traceback_file = Path(message.rsplit("The full traceback is in ", 1)[1].removesuffix("."))
    try:
        assert "Traceback (most recent call last):" in traceback_file.read_text()
        assert "RuntimeError: the check itself broke" in traceback_file.read_text()
    finally:
        traceback_file.unlink()
    assert not (tmp_path / "run").exists()


def test_a_loss_that_raises_during_training_exits_1_and_resume_continues_from_the_intact_checkpoint(prx, tmp_path):
    run_dir = tmp_path / "run"
    code, err = prx(run_dir, "faulty.fails=loss", "faulty.at_step=5", "train.checkpoint_every=2")
    assert code == 1
    message = one_paragraph(err)
    good = run_dir / "checkpoints" / "step_00000004"
    assert ("failed in its loss 'faulty' (faulty_plugins.FaultyLoss) during step 5: ZeroDivisionError: the faulty loss "
            "divided by zero.") in message
    assert f"The run stopped after step 4; its last checkpoint, {good}, is intact: --resume continues from it" in message
    assert "ZeroDivisionError: the faulty loss divided by zero" in (run_dir / "log.txt").read_text()
    guide = (Path(__file__).parents[3] / "docs" / "plugins.md").read_text()
    [quoted] = re.findall(r"```text\n(error: technique 'faulty'.*?)```", guide, flags=re.S)
    assert " ".join(quoted.split()) == message.replace(str(run_dir), "runs/tiny")  # the guide shows this message
    selection = select_checkpoint(run_dir / "checkpoints")  # hashes checked: nothing was half written
    assert (selection.folder, selection.skipped, selection.notes) == (good, (), ())
    assert (run_dir / "checkpoints" / LATEST).read_text() == good.name
    assert not (run_dir / "summary.json").exists()

    assert prx(run_dir, "train.checkpoint_every=2", resume=True)[0] == 0  # the plugin fixed
    assert prx(tmp_path / "straight", "train.checkpoint_every=2")[0] == 0
    assert losses(run_dir) == losses(tmp_path / "straight")


@pytest.mark.parametrize(("fails", "words"), [
    ("vector", "it returned the term 'faulty' as a torch.float32 tensor of shape (8,); a loss term is a 0-dim "
               "floating-point tensor"),
    ("integer", "it returned the term 'faulty' as a torch.int64 tensor of shape (); a loss term is a 0-dim "
                "floating-point tensor"),
    ("diffusion", "it returned the term 'diffusion', which the core objective returns too"),
])
def test_a_loss_returning_what_the_core_cannot_add_is_named(prx, tmp_path, fails, words):
    run_dir = tmp_path / "run"
    code, err = prx(run_dir, f"faulty.fails={fails}", "faulty.at_step=2")
    assert code == 1
    message = one_paragraph(err)
    assert f"failed in its loss 'faulty' (faulty_plugins.FaultyLoss) during step 2: {words}" in message
    assert "The run stopped after step 1; it had written no checkpoint yet." in message
    assert "traceback" not in message  # nothing raised: there is none to point at
    assert message in (run_dir / "log.txt").read_text()
