"""Evaluations during training ([eval] every): rows in evals.jsonl on the training clock, training
unchanged by them, exact resume, the curve in the summary; and [train] phase_steps."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from prx_core.errors import RecipeError
from prx_core.evaluation.checker import ATTRIBUTES
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.runfolder import EVALS, METRICS, RunFolder
from prx_core.techniques import TechniqueSet
from prx_core.testing import TINY_RECIPE
from prx_core.train import periodic_eval
from prx_core.train.periodic_eval import eval_due
from prx_core.types import RunContext

from test_train import losses, metrics, prx_run


def evals(run_dir: Path) -> list[dict]:
    return RunFolder(run_dir).read_rows(EVALS)


def test_eval_due_every_n_steps_but_not_at_the_last():
    assert [s for s in range(1, 11) if eval_due(3, s, 10)] == [3, 6, 9]
    assert [s for s in range(1, 10) if eval_due(3, s, 9)] == [3, 6]  # 9 is the final evaluation
    assert not any(eval_due(0, s, 10) for s in range(1, 11))


def test_periodic_evaluations_are_logged_and_leave_training_unchanged(tmp_path):
    assert prx_run(tmp_path / "plain") == 0
    assert prx_run(tmp_path / "evaluated", "eval.every=2") == 0
    assert losses(tmp_path / "evaluated") == losses(tmp_path / "plain")
    rows = evals(tmp_path / "evaluated")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(set(r["prompt_following"]) == {"overall", *ATTRIBUTES} and r["eval_s"] > 0 for r in rows)
    assert "distribution" not in rows[0]  # the feature networks run at the end only
    walls = {r["step"]: r["wall_s"] for r in metrics(tmp_path / "evaluated")}
    assert [r["wall_s"] for r in rows] == pytest.approx([walls[2], walls[4]], abs=0.05)
    summary = json.loads((tmp_path / "evaluated" / "summary.json").read_text())
    assert [r["step"] for r in summary["evals"]] == [2, 4, 6]
    final = json.loads((tmp_path / "evaluated" / "eval.json").read_text())
    assert summary["evals"][-1]["prompt_following"] == final["prompt_following"]
    assert summary["evals"][-1]["wall_s"] == summary["wall_s"]
    assert "evals" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert not (tmp_path / "plain" / EVALS).exists()


def test_evaluation_time_is_not_on_the_training_clock(tmp_path, monkeypatch):
    real = periodic_eval.evaluate

    def slow(*args, **kwargs):
        time.sleep(3.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(periodic_eval, "evaluate", slow)
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "eval.every=3") == 0
    (row,) = evals(run_dir)
    assert row["eval_s"] >= 3.0
    walls = {r["step"]: r["wall_s"] for r in metrics(run_dir)}
    assert walls[4] - walls[3] < 3.0  # the step after the evaluation does not carry its time


def test_resume_continues_the_evaluations_without_duplicates(tmp_path):
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "eval.every=2", "train.steps=3") == 0
    assert [r["step"] for r in evals(run_dir)] == [2]
    assert prx_run(run_dir, "eval.every=2", "train.steps=6", resume=True) == 0
    assert [r["step"] for r in evals(run_dir)] == [2, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["step"] for r in summary["evals"]] == [2, 4, 6]


def test_truncating_on_resume_drops_both_logs_after_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    folder.create()
    for step in range(1, 6):
        folder.append_row(METRICS, {"step": step, "loss": 1.0 / step})
        if step % 2 == 0:
            folder.append_row(EVALS, {"step": step})
    folder.truncate_logs(3)
    assert [r["step"] for r in folder.read_metrics()] == [1, 2, 3]
    assert [r["step"] for r in folder.read_rows(EVALS)] == [2]


def test_a_negative_every_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"\[eval\] every = -1: expected an integer >= 0"):
        load_recipe(TINY_RECIPE, ["eval.every=-1"], discover())


# -- [train] phase_steps ------------------------------------------------------------------------

def phases_of(*overrides: str):
    registry = discover()
    recipe = load_recipe(TINY_RECIPE, list(overrides), registry)
    return plan_phases(recipe, TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed), model_config(recipe)))


def test_phase_steps_replace_the_steps_of_each_phase():
    schedule = ('plugins=["multires"]', 'multires.phases=[{name="a",resolution=32,batch_size=8,steps=5},'
                '{name="b",resolution=32,batch_size=4,steps=7}]')
    assert [p.steps for p in phases_of(*schedule)] == [5, 7]
    replaced = phases_of(*schedule, "train.phase_steps=[2,9]")
    assert [(p.name, p.steps, p.batch_size) for p in replaced] == [("a", 2, 8), ("b", 9, 4)]
    assert [p.steps for p in phases_of("train.phase_steps=[4]")] == [4]  # no schedule: one phase
    with pytest.raises(RecipeError, match=r"phase_steps = \[2\].*2: a, b"):
        phases_of(*schedule, "train.phase_steps=[2]")
    with pytest.raises(RecipeError, match=r"\[train\] phase_steps\[0\] = 0: expected an integer >= 1"):  # on loading
        phases_of("train.phase_steps=[0]")


def test_a_run_trains_its_phase_steps(tmp_path):
    assert prx_run(tmp_path / "run", "train.phase_steps=[4]") == 0
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4]
