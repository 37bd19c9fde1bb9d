"""The ``prx`` command as a user meets it: help with examples, clear refusals, the speedrun plan."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prx_core.cli import COMMANDS, main
from prx_core.testing import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[2]
SPEEDRUN = ROOT / "recipes" / "speedrun.toml"


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command_and_shows_how_to_start(capsys):
    out = help_text([], capsys)
    assert "prx run recipes/quickstart.toml" in out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_an_example(command, capsys):
    out = help_text([command], capsys)
    assert f"Example: prx {command}" in " ".join(out.split()), out


def test_run_on_a_missing_recipe_exits_2_naming_the_path_without_traceback(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "recipe.toml"
    assert main(["run", str(missing)]) == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.err
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.slow
def test_the_console_script_prints_one_paragraph_and_exits_2_on_a_user_error(tmp_path):
    """The same through the installed entry point, as a user runs it."""
    missing = tmp_path / "recipe.toml"
    result = subprocess.run([sys.executable, "-m", "prx_core", "run", str(missing)], capture_output=True, text=True,
                            timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_recipe_key_exits_2_naming_it(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('extends = "%s"\n[train]\nstepz = 3\n' % TINY_RECIPE)
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    assert "stepz" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_recipe_validate_checks_this_machine_unless_told_to_skip(capsys):
    # The speedrun's recipe is valid, but its data are not on this machine (its text encoder may be cached).
    assert main(["recipe", "validate", str(SPEEDRUN)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "speedrun.toml: [data] sources[0]: No Parquet files (.parquet) found at /data/flux-generated/*.parquet" in err
    assert main(["recipe", "validate", str(SPEEDRUN), "--skip-local-checks"]) == 0
    assert "this machine not checked" in capsys.readouterr().out
    assert main(["recipe", "validate", str(ROOT / "recipes" / "quickstart.toml")]) == 0
    assert "ok (cfg, multires, muon, repa, tread; this machine has its device, data" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not SPEEDRUN.is_file(), reason="recipes/speedrun.toml is not written yet")
def test_speedrun_dry_run_plans_the_prx_run_without_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: check the working directory stays empty
    # Planned here, the speedrun cannot run here: its data (and text encoder) are not on this machine.
    assert main(["run", str(SPEEDRUN), "--dry-run", "--gpus", "32"]) == 2
    err = capsys.readouterr().err
    assert "[data] sources[0]: No Parquet files (.parquet) found at /data/flux-generated/*.parquet" in err
    assert main(["run", str(SPEEDRUN), "--dry-run", "--gpus", "32", "--skip-local-checks"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1,177,215,744 parameters" in out
    assert "100,000" in out and "20,000" in out  # the two phases
    assert "32 x 1" in out  # 1024 images = 32 per GPU x 32 GPUs, no accumulation
    for technique in ("tread", "repa", "muon"):
        assert technique in out
    assert list(tmp_path.iterdir()) == []
