"""Training end to end on the tiny recipe: losses, metrics, exact resume (also after Ctrl-C),
non-finite steps, run-folder outputs, ``prx sample`` / ``prx eval``, the warm-up, caption dropout,
determinism and the wall-clock limit; plus the EMA arithmetic."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prx_core import distributed as D
from prx_core.checkpoint import load_state, verify
from prx_core.cli import main
from prx_core.data.batcher import Batch
from prx_core.data.scenes import render_scene, scene_for_index
from prx_core.ema import EMA
from prx_core.errors import PluginError
from prx_core.evaluation.checker import ATTRIBUTES
from prx_core.evaluation.prompts import eval_scenes
from prx_core.hookspecs import hookimpl
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.techniques import TechniqueSet
from prx_core.testing import TINY_RECIPE
from prx_core.text import load_text_encoder
from prx_core.train.trainer import Trainer
from prx_core.types import RunContext, Technique

METRIC_KEYS = {"step", "phase", "wall_s", "loss", "loss/diffusion", "lr", "grad_norm", "images_per_s", "step_ms",
               "peak_mem_mb"}
PROMPT_KEYS = {"overall", *ATTRIBUTES}


def prx_run(run_dir: Path, *settings: str, resume: bool = False) -> int:
    argv = ["run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain"]
    argv += [a for s in settings for a in ("--set", s)]
    return main(argv + (["--resume"] if resume else []))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in metrics(run_dir)]


def checkpoint(run_dir: Path, step: int) -> dict:
    return load_state(run_dir / "checkpoints" / f"step_{step:08d}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny recipe as it is: 6 steps, checkpoints at 3 and 6, final samples and evaluation."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert prx_run(run_dir) == 0
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a shared run for tests that write into it."""
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


# --- what a run writes ----------------------------------------------------------------------


def test_metrics_jsonl_has_one_row_per_step_with_the_documented_keys(tiny_run):
    rows = metrics(tiny_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert METRIC_KEYS <= set(row), METRIC_KEYS - set(row)
        assert row["phase"] == "train"
        assert math.isfinite(row["loss"]) and row["loss"] == pytest.approx(row["loss/diffusion"])
        assert row["grad_norm"] > 0 and row["images_per_s"] > 0 and row["step_ms"] > 0 and row["peak_mem_mb"] > 0
    assert [r["wall_s"] for r in rows] == sorted(r["wall_s"] for r in rows)


def test_summary_and_eval_json_hold_the_prompt_following_scores(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    evaluation = json.loads((tiny_run / "eval.json").read_text())
    assert summary["steps"] == 6 and summary["name"] == "tiny" and summary["nonfinite_skipped"] == 0
    assert summary["final"]["loss"] == pytest.approx(metrics(tiny_run)[-1]["loss"])
    assert evaluation["step"] == 6
    assert set(evaluation["prompt_following"]) == PROMPT_KEYS
    assert all(0.0 <= v <= 1.0 for v in evaluation["prompt_following"].values())
    assert summary["eval"] == evaluation
    assert (tiny_run / "recipe.toml").is_file()
    assert sorted(p.name for p in (tiny_run / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000006"]


def test_warmup_is_linear_then_constant_in_the_logged_lr(tiny_run):
    # tiny.toml: lr 1e-3, warmup_steps 2
    assert [r["lr"] for r in metrics(tiny_run)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])


def test_sample_grids_and_their_prompts_are_written_every_sample_every_steps(tmp_path):
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "train.steps=4", "train.sample_every=2") == 0
    names = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert names == ["step_00000002.png", "step_00000002.txt", "step_00000004.png", "step_00000004.txt"]
    grid = Image.open(run_dir / "samples" / "step_00000002.png")
    assert grid.size == (4 * 128, 128 + 40)  # 4 prompts in 4 columns, caption strip under each cell
    expected = [s.caption() for s in eval_scenes(4, 1234)]
    assert (run_dir / "samples" / "step_00000002.txt").read_text().splitlines() == expected


# --- training works -------------------------------------------------------------------------


def scene_folder(data: Path, count: int = 8) -> Path:
    """``count`` captioned 32 px scenes as a folder source."""
    data.mkdir()
    for i in range(count):
        scene = scene_for_index(i)
        Image.fromarray(render_scene(scene, 32, 32, index=i)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(scene.caption())
    return data


def test_skipped_samples_are_counted_by_reason_in_the_console_the_log_and_the_summary(tmp_path, capsys):
    data = scene_folder(tmp_path / "data")
    png = (data / "0.png").read_bytes()
    (data / "empty.png").write_bytes(b"")
    (data / "half.png").write_bytes(png[: len(png) // 2])
    for name in ("empty", "half"):
        (data / f"{name}.txt").write_text("a broken image")
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, f'data.sources=[{{kind="folder", path="{data}"}}]', "train.steps=3",
                   "data.max_bad_share=0.5", "data.bad_window=10") == 0
    out = capsys.readouterr().out
    last = metrics(run_dir)[-1]
    reasons = {k.split("/")[-1]: v for k, v in last.items() if k.startswith("data/bad/")}
    assert set(reasons) == {"empty", "truncated"} and all(v >= 1 for v in reasons.values())
    expected = (f"skipped {sum(reasons.values())} of {last['data/seen']} samples "
                f"(empty {reasons['empty']}, truncated {reasons['truncated']})")
    assert f"step 3/3 [train] loss=" in out and expected in out.split("step 3/3")[1].splitlines()[0]
    assert f"data: {expected} so far" in (run_dir / "log.txt").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())["data"]
    assert summary == {"seen": last["data/seen"], "skipped": sum(reasons.values()), "skipped_by_reason": reasons}


def test_losses_fall_on_a_fixed_tiny_set(tmp_path):
    data = scene_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    # t_min 0.2 keeps the 1/t^2 weight of the v-space loss from dominating the comparison
    assert prx_run(run_dir, f'data.sources=[{{kind="folder", path="{data}"}}]', "train.steps=40", "optim.lr=3e-3",
                   "objective.t_min=0.2", "train.checkpoint_every=1000", "eval.num_prompts=1") == 0
    values = losses(run_dir)
    assert len(values) == 40
    first, last = np.mean(values[:5]), np.mean(values[-5:])
    assert last < 0.5 * first, (first, last)


def test_two_runs_with_the_same_seed_are_identical_and_another_seed_differs(tiny_run, tmp_path):
    assert prx_run(tmp_path / "same") == 0
    assert losses(tmp_path / "same") == losses(tiny_run)
    same, reference = checkpoint(tmp_path / "same", 6), checkpoint(tiny_run, 6)
    assert all(torch.equal(same["model"][k], reference["model"][k]) for k in reference["model"])
    assert prx_run(tmp_path / "other", "seed=1", "train.steps=3") == 0
    assert all(a != b for a, b in zip(losses(tmp_path / "other"), losses(tiny_run)))


def test_three_steps_then_resume_to_six_equals_six_steps(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "train.steps=3") == 0
    assert prx_run(run_dir, "train.steps=6", resume=True) == 0
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert losses(run_dir) == losses(tiny_run)  # exact on CPU
    walls = [r["wall_s"] for r in metrics(run_dir)]
    assert walls == sorted(walls), walls  # the clock continues across the resume
    resumed, straight = checkpoint(run_dir, 6), checkpoint(tiny_run, 6)
    for part in ("model", "ema"):
        assert all(torch.equal(resumed[part][k], straight[part][k]) for k in straight[part])
    adam = straight["optimizers"]["adamw"]["state"]
    moments = [(resumed["optimizers"]["adamw"]["state"][i], s) for i, s in adam.items()]
    assert moments and all(torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in moments)


def test_resuming_a_finished_run_only_redoes_its_final_outputs(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    before = metrics(run_dir)
    (run_dir / "summary.json").unlink()
    assert prx_run(run_dir, resume=True) == 0
    assert metrics(run_dir) == before
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["wall_s"] == before[-1]["wall_s"]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000006"]


def test_a_folder_with_checkpoints_is_not_reused_without_resume(tiny_run, capsys):
    before = (tiny_run / "metrics.jsonl").read_text()
    assert prx_run(tiny_run) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume" in err and str(tiny_run) in err
    assert (tiny_run / "metrics.jsonl").read_text() == before


def test_max_wall_s_stops_early_and_still_checkpoints_and_summarises(tmp_path):
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "train.steps=1000", "train.max_wall_s=0.001", "train.checkpoint_every=1000") == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 1
    assert (run_dir / "eval.json").is_file()
    assert checkpoint(run_dir, 1)["step"] == 1


# --- non-finite steps -----------------------------------------------------------------------


def poison_loss(monkeypatch, bad_calls) -> None:
    """Make the diffusion loss NaN on the given (1-based) calls, i.e. training steps."""
    import prx_core.train.trainer as trainer_module

    real, calls = trainer_module.v_space_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if bad_calls(len(calls)) else value

    monkeypatch.setattr(trainer_module, "v_space_loss", loss)


def test_a_non_finite_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    poison_loss(monkeypatch, lambda call: call == 2)
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "train.steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=10") == 0
    rows = metrics(run_dir)
    assert math.isnan(rows[1]["loss"]) and all(math.isfinite(rows[i]["loss"]) for i in (0, 2, 3))
    assert [r["nonfinite_skipped"] for r in rows] == [0, 1, 1, 1]
    # The checkpoint of step 2 waited for a finite loss: the state of step 2 is the one that gave NaN.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_00000001", "step_00000003", "step_00000004"]
    assert "checkpoint of step 2 waits: the loss is non-finite" in (run_dir / "log.txt").read_text()
    one, three = checkpoint(run_dir, 1), checkpoint(run_dir, 3)
    assert not all(torch.equal(one["model"][k], three["model"][k]) for k in one["model"])
    assert json.loads((run_dir / "summary.json").read_text())["nonfinite_skipped"] == 1


def test_too_many_non_finite_steps_in_a_row_stop_the_run_and_name_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    poison_loss(monkeypatch, lambda call: call >= 6)
    run_dir = tmp_path / "run"
    settings = ("train.steps=8", "train.max_nonfinite_in_row=2", "train.checkpoint_every=1")
    assert prx_run(run_dir, *settings) == 2
    err = capsys.readouterr().err
    assert "2 optimizer steps in a row, from step 6, had a non-finite loss or gradient" in err
    # Step 5's weights gave the NaN losses of steps 6 and 7 (skipped steps change nothing): its
    # checkpoint is marked, the good one is step 4, and the checkpoint due at step 6 was never written.
    good, suspect = (run_dir / "checkpoints" / f"step_{s:08d}" for s in (4, 5))
    assert f"The last good checkpoint is {good} (step 4)" in err and "step_00000005 holds the state" in err
    assert (suspect / "diverged.json").is_file() and not (run_dir / "checkpoints" / "step_00000006").exists()
    verify(good)
    assert all(torch.isfinite(v).all() for v in checkpoint(run_dir, 4)["model"].values())
    assert not (run_dir / "summary.json").exists()
    monkeypatch.undo()
    assert prx_run(run_dir, *settings, resume=True) == 0
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from {good} at step 4" in log and "skipped step_00000005: it holds the state a divergence" in log
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 9))


# --- prx sample / prx eval on a finished run -------------------------------------------------


def test_prx_sample_writes_one_png_per_prompt_and_a_grid(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    step_folder = run_dir / "checkpoints" / "step_00000006"
    prompts = ["a red circle on a blue background", "two small green squares"]
    argv = ["sample", str(step_folder), "--size", "32x48", "--steps", "2"]
    assert main(argv + [a for p in prompts for a in ("--prompt", p)]) == 0
    out = run_dir / "samples" / "cli"  # in the run folder, whichever checkpoint path was given
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "grid.png", "grid.txt"]
    image = np.asarray(Image.open(out / "000.png"))
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    assert (out / "grid.txt").read_text().splitlines() == prompts
    verify(step_folder)  # sampling left the checkpoint untouched


def test_prx_sample_refuses_a_size_that_is_not_a_multiple_of_the_patch(tiny_run, tmp_path, capsys):
    argv = ["sample", str(tiny_run), "--prompt", "a red circle", "--size", "30x32", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "multiples of the model's patch (8 px)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prx_eval_writes_eval_json_into_the_run_folder(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    (run_dir / "eval.json").unlink()
    assert main(["eval", str(run_dir), "--set", "eval.num_prompts=2"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 6 and set(result["prompt_following"]) == PROMPT_KEYS
    assert result["prompts"] == "held-out"


def test_prx_eval_on_training_pairs_writes_its_own_file(tiny_run, tmp_path, capsys):
    run_dir = copy_of(tiny_run, tmp_path)
    held_out = (run_dir / "eval.json").read_text()
    assert main(["eval", str(run_dir), "--set", "eval.num_prompts=2", "--set", "eval.prompts=training"]) == 0
    assert (run_dir / "eval.json").read_text() == held_out  # the run's own evaluation is kept
    result = json.loads((run_dir / "eval_training.json").read_text())
    assert result["prompts"] == "training" and set(result["prompt_following"]) == PROMPT_KEYS
    assert "2 training prompts, step 6" in capsys.readouterr().out


# --- the trainer's step ---------------------------------------------------------------------


def make_trainer(*overrides: str) -> Trainer:
    registry = discover()
    recipe = load_recipe(TINY_RECIPE, overrides, registry)
    info = D.init_distributed(recipe.distributed, "cpu")
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, device=info.device), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, info.device), info)
    trainer.start_phase(plan_phases(recipe, techniques)[0], 0)
    return trainer


def batches(size: int = 4):
    step = 0
    while True:
        scenes = [scene_for_index(step * size + i) for i in range(size)]
        images = torch.stack([torch.from_numpy(render_scene(s, 32, 32)).permute(2, 0, 1) for s in scenes])
        yield Batch(images.float() / 127.5 - 1, [s.caption() for s in scenes],
                    [f"scenes:{step * size + i}" for i in range(size)], None)
        step += 1


def test_the_optimizer_runs_each_step_at_the_warmed_up_lr():
    trainer = make_trainer("optim.warmup_steps=4", "optim.lr=2e-3")
    stream = batches()
    applied = []
    for _ in range(6):
        trainer.train_step(stream, 1)
        applied.append(trainer.optimizers["adamw"].param_groups[0]["lr"])
    assert applied == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])


def test_a_plugins_optimizer_follows_the_cores_warm_up_too():
    """The warm-up factor scales every param group's initial lr, whoever built the optimizer (the
    plugin guide says so: a technique's optimizer needs no schedule of its own for the warm-up)."""
    trainer = make_trainer('plugins=["muon"]', "optim.warmup_steps=4", "optim.lr=2e-3", "muon.lr=4e-3")
    stream = batches()
    applied = []
    for _ in range(5):
        trainer.train_step(stream, 1)
        applied += [trainer.optimizers[label].param_groups[0]["lr"] for label in ("muon", "adamw")]
    assert applied == pytest.approx([1e-3, 5e-4, 2e-3, 1e-3, 3e-3, 1.5e-3, 4e-3, 2e-3, 4e-3, 2e-3])


@pytest.mark.parametrize("dropout", [1.0, 0.0])
def test_caption_dropout_replaces_conditioning_by_the_empty_prompt(dropout):
    trainer = make_trainer(f"objective.caption_dropout={dropout}")
    seen = []
    forward = trainer.forward

    def recording(x_t, t, text, mask, route, capture):
        seen.append((text.clone(), mask.clone()))
        return forward(x_t, t, text, mask, route, capture)

    trainer.forward = recording
    trainer.train_step(batches(), 1)
    text, mask = seen[0]
    empty = trainer.empty
    is_empty = [torch.equal(text[i], empty.tokens[0]) and torch.equal(mask[i], empty.mask[0]) for i in range(4)]
    assert is_empty == [dropout == 1.0] * 4


class ReadsBlocks:
    """A loss that declares the blocks it reads and records what the core captured for it."""

    name = "reads_blocks"

    def __init__(self, blocks):
        self.blocks = blocks
        self.seen: list[dict] = []

    def __call__(self, step):
        self.seen.append({block: (c.hidden.shape, c.index is None) for block, c in step.captured.items()})
        return {self.name: step.x0_hat.mean() * 0}


def reader_registry(loss: ReadsBlocks):
    class Reader:
        def __init__(self, config, context):
            pass

        @hookimpl
        def prx_auxiliary_losses(self):
            return [loss]

    module = types.ModuleType("reader_plugin")
    module.prx_register_techniques = hookimpl(lambda: [Technique(name="reader", plugin=Reader)])
    return discover(extra_modules=[module])


def test_the_core_captures_the_blocks_a_loss_declares_and_only_those():
    loss = ReadsBlocks((3, 1))
    registry = reader_registry(loss)
    recipe = load_recipe(TINY_RECIPE, ['plugins=["reader", "tread"]', "tread.routes=[{start = 1, end = 2, keep = 0.5}]"],
                         registry)
    info = D.init_distributed(recipe.distributed, "cpu")
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, device=info.device), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, info.device), info)
    trainer.start_phase(plan_phases(recipe, techniques)[0], 0)
    assert trainer.capture == (1, 3)
    trainer.train_step(batches(), 1)
    # block 1 ran inside the route: 8 of its 16 tokens, with their grid positions; block 3 after it: all 16
    assert loss.seen == [{1: (torch.Size([4, 8, 64]), False), 3: (torch.Size([4, 16, 64]), True)}]


@pytest.mark.parametrize("blocks", [(4,), (-1,), ("1",), 1])
def test_a_loss_reading_a_block_the_model_lacks_is_a_plugin_error(blocks):
    registry = reader_registry(ReadsBlocks(blocks))
    recipe = load_recipe(TINY_RECIPE, ['plugins=["reader"]'], registry)
    info = D.init_distributed(recipe.distributed, "cpu")
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, device=info.device), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, info.device), info)
    with pytest.raises(PluginError, match=r"technique 'reader': its loss 'reads_blocks' reads blocks .*0\.\.3 of the 4-block"):
        trainer.start_phase(plan_phases(recipe, techniques)[0], 0)


# --- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_checkpoints_and_exits_and_resume_continues_exactly(tmp_path):
    run_dir = tmp_path / "run"
    settings = ["train.checkpoint_every=100000"]
    command = [sys.executable, "-m", "prx_core", "run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain",
               "--set", "train.steps=100000", *[a for s in settings for a in ("--set", s)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text()):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "no logged step within 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output  # an interrupted run did not finish: not 0
    assert "interrupted at step" in output and "Traceback" not in output
    stopped = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert stopped >= 1 and checkpoint(run_dir, stopped)["step"] == stopped
    assert not (run_dir / "summary.json").exists()

    total = stopped + 2
    assert prx_run(run_dir, f"train.steps={total}", *settings, resume=True) == 0
    assert prx_run(tmp_path / "straight", f"train.steps={total}", *settings) == 0
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, total + 1))
    assert losses(run_dir) == losses(tmp_path / "straight")
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == total


# --- EMA ------------------------------------------------------------------------------------


def test_ema_updates_every_n_steps_with_the_decay():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA([("w", param)], decay=0.9, every=2)
    expected = torch.tensor([1.0, -2.0])
    for step in range(1, 7):
        with torch.no_grad():
            param.add_(torch.tensor([0.5, 1.5]) * step)
        ema.update(step)
        if step % 2 == 0:
            expected = 0.9 * expected + 0.1 * param.detach()
        assert torch.allclose(ema.shadow["w"], expected, atol=1e-6), step
    assert not torch.allclose(ema.shadow["w"], param.detach())


def test_ema_copies_its_weights_into_a_model_and_round_trips_its_state():
    source = torch.nn.Linear(3, 2)
    ema = EMA(list(source.named_parameters()), decay=0.5, every=1)
    with torch.no_grad():
        source.weight.fill_(2.0)
        source.bias.fill_(-4.0)
    original_weight = ema.shadow["weight"].clone()
    ema.update(1)
    target = torch.nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.allclose(target.weight, 0.5 * original_weight + 1.0)
    assert torch.equal(target.bias, ema.shadow["bias"])
    wrapped = torch.nn.Sequential()
    wrapped.add_module("inner", torch.nn.Linear(3, 2))
    ema.copy_to(wrapped, prefix="inner.")
    assert torch.equal(wrapped.inner.weight, target.weight)
    other = EMA(list(torch.nn.Linear(3, 2).named_parameters()), decay=0.5, every=1)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
