"""The trackers (TensorBoard, W&B, MLflow): what each wrote, read back with the library's own
reader (TensorBoard's event accumulator, ``wandb leet inspect`` on the offline ``.wandb`` files,
``MlflowClient`` queries against a local SQLite store), after a SIGKILL and ``--resume`` and after
resuming the finished run again; a tracker that fails at run time; a missing library; and
trackers kept out of the interference matrix and the ablation designs. Nothing touches the
network (``WANDB_MODE=offline``, local MLflow store)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from prx_core import hookspecs
from prx_core import registry as plugins
from prx_core.cli import main
from prx_core.testing import TINY_RECIPE, subsets
from prx_core.types import Technique

ROOT = Path(__file__).parents[2]
TINY = TINY_RECIPE
KILL = Path(__file__).parent / "trackers" / "kill_after_logged_step.py"
STEPS, KILLED_AT = 8, 6  # checkpoints at 3 and 6; the kill comes after step 6, before its checkpoint
CHECKPOINT = 3
DETERMINISTIC = ("loss", "loss/diffusion", "lr", "grad_norm")
"""Metrics a resumed run reproduces exactly (timings and memory are measured again)."""


def tracker_settings(tmp: Path) -> list[str]:
    return ['plugins=["tensorboard", "wandb", "mlflow"]', f"train.steps={STEPS}", "train.sample_every=2", "eval.every=2",
            'wandb.mode="offline"', f'mlflow.tracking_uri="sqlite:///{tmp}/mlflow.db"',
            f'mlflow.artifact_location="{tmp}/mlartifacts"', 'mlflow.experiment="prx-test"']


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny run with all three trackers, SIGKILLed after step 6 once every tracker wrote step 5
    (the last checkpoint is step 3), resumed to step 8, then resumed again once finished (which
    redoes only the final grid and evaluation)."""
    tmp = tmp_path_factory.mktemp("trackers")
    run_dir = tmp / "run"
    settings = [a for s in tracker_settings(tmp) for a in ("--set", s)]
    command = [sys.executable, str(KILL), str(KILLED_AT), str(TINY), "--run-dir", str(run_dir), "--plain", *settings]
    killed = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    before = rows_of(run_dir)
    assert [r["step"] for r in before] == list(range(1, KILLED_AT))
    for _ in range(2):
        resumed = subprocess.run([sys.executable, "-m", "prx_core", "run", str(TINY), "--run-dir", str(run_dir),
                                  "--plain", "--resume", *settings], env=offline_env(), capture_output=True,
                                 text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert not [line for line in resumed.stdout.splitlines() if line.startswith("tracker ")], resumed.stdout
    return run_dir, tmp, json.dumps(before)


def evaluations_of(run_dir: Path) -> list[tuple[int, float]]:
    """The run's overall prompt-following curve: the periodic evaluations (evals.jsonl, steps 2, 4,
    6) and the final one (eval.json, step 8)."""
    periodic = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines() if line]
    final = json.loads((run_dir / "eval.json").read_text())
    curve = [(row["step"], row["prompt_following"]["overall"]) for row in [*periodic, final]]
    assert [step for step, _ in curve] == [2, 4, 6, STEPS]
    return curve


def check_steps(steps_values: list[tuple[int, float]], rows: list[dict], key: str, exact: bool = True) -> None:
    """Each step once, in order, with the value metrics.jsonl has (float32 where the tracker stores that)."""
    assert [step for step, _ in steps_values] == [row["step"] for row in rows], key
    for (step, value), row in zip(steps_values, rows):
        expected = row[key] if exact else float(np.float32(row[key]))
        assert value == expected, (key, step, value, row[key])


@pytest.mark.slow
def test_tensorboard_holds_each_step_once_with_the_values_of_metrics_jsonl(killed_and_resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = killed_and_resumed
    rows = rows_of(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    event_files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(event_files) == 3  # one per process: the killed one, the resume, the finished resume
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    # The resume purged what the killed process had logged after the checkpoint, so TensorBoard
    # shows the re-measured values: every key equals metrics.jsonl, timings included.
    for key in ("loss", "loss/diffusion", "lr", "grad_norm", "images_per_s", "step_ms", "peak_mem_mb"):
        check_steps([(e.step, e.value) for e in events.Scalars(key)], rows, key, exact=False)
    assert [e.step for e in events.Images("samples")] == [2, 4, 6, 8]
    grid = events.Images("samples")[-1]
    assert (grid.width, grid.height) == (4 * 128, 168)  # 4 prompts in one row of 128 px cells with captions
    prompts = [e for e in events.Tensors("samples/prompts/text_summary")]
    assert [e.step for e in prompts] == [2]  # the same prompts at every step: written once
    text = prompts[-1].tensor_proto.string_val[0].decode()
    assert text.splitlines()[0].startswith("1. ") and text.splitlines()[0][3:] in (run_dir / "samples" /
                                                                                   "step_00000008.txt").read_text()
    overall = events.Scalars("eval/prompt_following/overall")
    assert [(e.step, e.value) for e in overall] == [(step, float(np.float32(v))) for step, v in evaluations_of(run_dir)]
    assert [e.step for e in events.Tensors("recipe/text_summary")] == [0]
    recipe_text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"steps = {STEPS}" in recipe_text and "[wandb]" in recipe_text


@pytest.mark.slow
def test_wandb_offline_files_hold_each_step_once_in_one_run(killed_and_resumed):
    from prx_wandb import history, run_files
    from prx_wandb import records as read_records

    run_dir, _, before = killed_and_resumed
    state = json.loads((run_dir / "trackers" / "wandb.json").read_text())
    files = run_files(run_dir, state["run_id"])
    assert len(files) == 3  # the killed process, the resume and the finished resume: one W&B run id
    assert {path.parent.name.split("-")[-1] for path in files} == {state["run_id"]}
    rows = {row["step"]: row for row in rows_of(run_dir)}
    first = {row["step"]: row for row in json.loads(before)}
    logged = [row for row in history(files)]
    assert [row["_step"] for row in logged] == list(range(1, STEPS + 1))
    for row in logged:
        step = row["_step"]
        for key in DETERMINISTIC:
            assert row[key] == rows[step][key], (key, step)
        # Up to the checkpoint the values are the first process's (metrics.jsonl keeps them, and
        # the resume replays them where W&B lost them). After it, a step the killed process had
        # committed keeps that record (W&B does not rewrite a step; how much of its buffer W&B
        # wrote before the kill varies); the others are the resumed run's.
        if step <= CHECKPOINT:
            assert row["images_per_s"] == first[step]["images_per_s"] == rows[step]["images_per_s"]
        else:
            assert row["images_per_s"] in (first.get(step, {}).get("images_per_s"), rows[step]["images_per_s"])
    assert [row["_step"] for row in logged if "samples._type" in row] == [2, 4, 6, 8]
    assert all(row["samples._type"] == "image-file" for row in logged if "samples._type" in row)
    records = [r for path in files for r in read_records(path)]
    summaries = [r["summary"]["update"] for r in records if r.get("type") == "summary"]
    curve = evaluations_of(run_dir)
    assert [(row["_step"], row["eval/prompt_following/overall"]) for row in logged
            if "eval/prompt_following/overall" in row] == curve
    summarised = [s["eval/prompt_following/overall"] for s in summaries if "eval/prompt_following/overall" in s]
    assert summarised[-1] == curve[-1][1]  # the run summary's last word is the final evaluation
    configs = [r["run"]["config"]["update"] for r in records if r.get("type") == "run"]
    assert configs and all(c["train"]["steps"] == STEPS and c["run"]["trackers"] == ["mlflow", "tensorboard", "wandb"]
                           for c in configs)


@pytest.mark.slow
def test_mlflow_store_holds_one_run_with_each_step_once(killed_and_resumed):
    from mlflow import MlflowClient

    run_dir, tmp, before = killed_and_resumed
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("prx-test")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == json.loads((run_dir / "trackers" / "mlflow.json").read_text())["run_id"]
    assert run.info.status == "FINISHED"
    rows = rows_of(run_dir)
    first = {row["step"]: row for row in json.loads(before)}
    for key in DETERMINISTIC:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        check_steps(history, rows, key)
    throughput = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "images_per_s")}
    assert [throughput[s] for s in range(CHECKPOINT + 1, KILLED_AT)] == [
        first[s]["images_per_s"] for s in range(CHECKPOINT + 1, KILLED_AT)]  # the first record is kept
    overall = client.get_metric_history(run.info.run_id, "eval/prompt_following/overall")
    assert sorted((m.step, m.value) for m in overall) == evaluations_of(run_dir)
    assert run.data.params["train.steps"] == str(STEPS) and run.data.params["plugins"] == json.dumps(
        ["tensorboard", "wandb", "mlflow"])
    assert run.data.tags["prx.device"] == "cpu" and json.loads(run.data.tags["prx.trackers"]) == [
        "mlflow", "tensorboard", "wandb"]
    samples = sorted(f.path for f in client.list_artifacts(run.info.run_id, "samples"))
    assert samples == [f"samples/step_{s:08d}.{ext}" for s in (2, 4, 6, 8) for ext in ("png", "txt")]


# --- failures at run time -------------------------------------------------------------------


def prx_run(run_dir: Path, *settings: str) -> int:
    argv = ["run", str(TINY), "--run-dir", str(run_dir), "--plain"]
    return main(argv + [a for s in settings for a in ("--set", s)])


def reports(run_dir: Path, tracker: str) -> list[str]:
    return [line for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith(f"tracker {tracker}:")]


def check_training_went_on(run_dir: Path, capsys) -> str:
    assert [r["step"] for r in rows_of(run_dir)] == list(range(1, 7))
    assert (run_dir / "summary.json").is_file()
    return capsys.readouterr().out


def test_a_tensorboard_writer_that_fails_mid_run_is_reported_once_and_training_goes_on(tmp_path, monkeypatch,
                                                                                        capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    add_scalar = SummaryWriter.add_scalar

    def disk_full_from_step_3(self, tag, value, step, *args, **kwargs):
        if step >= 3:
            raise OSError(28, "No space left on device")
        return add_scalar(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full_from_step_3)
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, 'plugins=["tensorboard"]') == 0
    out = check_training_went_on(run_dir, capsys)
    [line] = reports(run_dir, "tensorboard")
    assert "metrics failed at step 3 (OSError: [Errno 28] No space left on device)" in line
    assert out.count("tracker tensorboard:") == 1 and "Traceback" not in out
    assert "Traceback" in (run_dir / "log.txt").read_text()  # the detail is in the log
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_a_wandb_directory_that_cannot_be_written_is_reported_once_and_training_goes_on(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where W&B wants a directory")
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, 'plugins=["wandb"]', f'wandb.dir="{blocker}/wandb"') == 0
    out = check_training_went_on(run_dir, capsys)
    [line] = reports(run_dir, "wandb")
    assert "open failed" in line and "it is off for the rest of this run" in line
    assert out.count("tracker wandb:") == 1


def test_an_mlflow_server_that_is_not_there_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as probe:  # a port on this machine that nothing listens on: a stopped server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, 'plugins=["mlflow"]', f'mlflow.tracking_uri="http://127.0.0.1:{port}"') == 0
    out = check_training_went_on(run_dir, capsys)
    [line] = reports(run_dir, "mlflow")
    assert "open failed" in line and str(port) in (run_dir / "log.txt").read_text()
    assert out.count("tracker mlflow:") == 1


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tracker,module", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_tracker_whose_library_is_missing_fails_validation_naming_the_extra(tracker, module, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import and find_spec both fail
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, f'plugins=["{tracker}"]') == 2
    err = capsys.readouterr().err
    assert f"pip install 'prx[{tracker}]'" in err and f"[{tracker}]" in err and "tiny.toml" in err
    assert not run_dir.exists()  # refused before anything was created


def test_an_mlflow_file_store_is_refused_at_validation(tmp_path, capsys):
    assert prx_run(tmp_path / "run", 'plugins=["mlflow"]', f'mlflow.tracking_uri="file:{tmp_path}/mlruns"') == 2
    assert "sqlite:///" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_several_trackers_at_once_with_set_and_their_tables():
    from prx_core.recipe.loader import load_recipe

    recipe = load_recipe(TINY, ['plugins=["wandb", "tensorboard"]', 'wandb.project="lab"',
                                'wandb.tags=["a", "b"]', 'tensorboard.log_dir="tb"'])
    assert recipe.techniques["wandb"].project == "lab" and recipe.techniques["wandb"].tags == ("a", "b")
    assert recipe.techniques["tensorboard"].log_dir == "tb"


# --- trackers are not training techniques -------------------------------------------------------


class Tracker:
    def __init__(self, config, context):
        pass

    @hookspecs.hookimpl
    def prx_metrics_sink(self, run):
        return None


class RoutingTracker(Tracker):
    @hookspecs.hookimpl
    def prx_routing(self, phase, model_config):
        return None


def tracker_module(*, also_routes: bool = False, effects: tuple[str, ...] = ()) -> types.ModuleType:
    module = types.ModuleType("sneaky_tracker")
    plugin = RoutingTracker if also_routes else Tracker
    module.prx_register_techniques = hookspecs.hookimpl(
        lambda: [Technique(name="sneaky", plugin=plugin, effects=effects)])
    return module


def test_a_tracker_that_could_change_training_is_refused_at_discovery():
    registry = plugins.discover(only=[], extra_modules=[tracker_module(also_routes=True)])
    [broken] = registry.broken
    assert "makes it a tracker" in broken.error and "prx_routing" in broken.error
    registry = plugins.discover(only=[], extra_modules=[tracker_module(effects=("routes_tokens",))])
    assert "declares no effects" in registry.broken[0].error
    registry = plugins.discover(only=[], extra_modules=[tracker_module()])
    assert registry.trackers == ("sneaky",) and registry.training_techniques == ()


def test_the_matrix_and_ablations_leave_trackers_out(tmp_path, capsys):
    registry = plugins.discover()
    assert set(registry.trackers) == {"mlflow", "tensorboard", "wandb"}
    fast, slow = subsets(registry)
    assert not {name for combo in fast + slow for name in combo} & set(registry.trackers)
    assert len(fast) + len(slow) == 2 ** len(registry.training_techniques)
    # An ablation keeps the recipe's trackers in every variant and refuses to vary one.
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'extends = "{TINY}"\nplugins = ["tensorboard"]\n')
    assert main(["ablate", str(recipe), "--vary", "cfg", "--plan-only", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "cfg, tensorboard" in out and out.count("tensorboard") == 2
    assert main(["ablate", str(recipe), "--vary", "wandb", "--plan-only", "--out", str(tmp_path / "a")]) == 2
    assert "wandb: it is a tracker" in capsys.readouterr().err


def test_the_trackers_guide_lists_each_trackers_settings():
    import attrs

    guide = (ROOT / "docs" / "trackers.md").read_text()
    registry = plugins.discover()
    for name in registry.trackers:
        [row] = [line for line in guide.splitlines() if line.startswith(f"| `{name}` |")]
        documented = re.findall(r"`([a-z_]+)`", row.split("|")[2])
        settings = [field.name for field in attrs.fields(registry.techniques[name].config)]
        assert documented == settings, f"docs/trackers.md, {name}: {documented} != {settings}"
        assert (ROOT / "plugins" / f"prx_{name}" / "CARD.md").is_file()
