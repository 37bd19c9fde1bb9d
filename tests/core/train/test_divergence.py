"""A diverged run never writes a checkpoint from its bad state, names the checkpoint that is good,
and ``--resume`` lands on it: non-finite weights, weights that jump, a loss that spikes, decided
on the device (prx_core.train.divergence) without host reads in the step."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prx_core import distributed as D
from prx_core.checkpoint import DIVERGED, load_state
from prx_core.cli import main
from prx_core.measure.host_sync import HostReads
from prx_core.recipe.schema import TrainConfig
from prx_core.testing import TINY_RECIPE
from prx_core.train.divergence import DivergenceMonitor

ONE = D.DistInfo(0, 1, 0, "none", torch.device("cpu"))


def prx_run(run_dir: Path, *settings: str, resume: bool = False) -> int:
    argv = ["run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain"] + [a for s in settings for a in ("--set", s)]
    return main(argv + (["--resume"] if resume else []))


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps_saved(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for part in ("model", "ema") for v in state[part].values())


# --- the reported cases ---------------------------------------------------------------------------


def test_an_infinite_learning_rate_is_refused_before_anything_exists(tmp_path, capsys):
    assert prx_run(tmp_path / "run", "optim.warmup_steps=0", "optim.lr=inf", "train.checkpoint_every=2") == 2
    assert "[optim] lr = inf: expected a finite number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("lr", "words"), [
    ("1e6", "the update of step 1 multiplied the norm of the weights by more than [train] max_weight_growth = 2"),
    ("1e38", "the update of step 1 made the weights non-finite"),
])
def test_a_diverging_first_update_writes_no_checkpoint(lr, words, tmp_path, capsys):
    """The report's command with a finite rate: step 1's loss is finite, its update is not sane."""
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, "optim.warmup_steps=0", f"optim.lr={lr}", "train.checkpoint_every=2") == 2
    err = capsys.readouterr().err
    assert words in err and "wrote no checkpoint from this state" in err
    assert "No good checkpoint of this run precedes it" in err and "Traceback" not in err
    assert steps_saved(run_dir) == [] and not (run_dir / "checkpoints" / "latest").exists()


def test_weights_made_nan_by_an_update_stop_the_run_and_resume_lands_on_the_good_checkpoint(tmp_path, monkeypatch,
                                                                                           capsys):
    """Step 3's loss and gradient are finite but its update makes the weights NaN (what an
    infinite rate does); the checkpoint due at step 4 is not written, step 2's is named and resumed."""
    import prx_core.train.trainer as trainer_module

    real, calls = trainer_module.step_unless, []

    def poisoned(optimizer, found_inf):
        real(optimizer, found_inf)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))

    monkeypatch.setattr(trainer_module, "step_unless", poisoned)
    run_dir = tmp_path / "run"
    settings = ("train.checkpoint_every=2", "train.log_every=10")
    assert prx_run(run_dir, *settings) == 2
    err = capsys.readouterr().err
    good = run_dir / "checkpoints" / "step_00000002"
    assert "the update of step 3 made the weights non-finite" in err and "the run stopped at step 4" in err
    assert f"The last good checkpoint is {good} (step 2)" in err
    assert steps_saved(run_dir) == [2] and finite(load_state(good))
    assert not (good / DIVERGED).exists()  # the state before the bad update is good

    monkeypatch.undo()
    assert prx_run(run_dir, *settings, resume=True) == 0
    assert f"resumed from {good} at step 2" in (run_dir / "log.txt").read_text()
    assert prx_run(tmp_path / "straight", *settings) == 0
    assert losses(run_dir) == losses(tmp_path / "straight")  # the resumed run is the run that never diverged


# --- loss spikes ----------------------------------------------------------------------------------


def spike_loss(monkeypatch, steps: set[int], factor: float = 1000.0) -> None:
    """Multiply the diffusion loss by ``factor`` on the given training steps (1-based)."""
    import prx_core.train.trainer as trainer_module

    real, calls = trainer_module.v_space_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * factor if len(calls) in steps else value

    monkeypatch.setattr(trainer_module, "v_space_loss", loss)


SPIKES = ("train.spike_window=4", "train.spike_steps=3", "train.spike_factor=30", "train.checkpoint_every=3",
          "train.steps=12")


def test_a_loss_spike_stops_the_run_and_resume_passes_over_the_checkpoint_it_started_from(tmp_path, monkeypatch,
                                                                                         capsys):
    spike_loss(monkeypatch, set(range(7, 100)))
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, *SPIKES) == 2
    err = capsys.readouterr().err
    good, suspect = (run_dir / "checkpoints" / f"step_{s:08d}" for s in (3, 6))
    assert "the diffusion loss stayed above [train] spike_factor = 30 x its running median" in err
    assert "for 3 steps in a row from step 7" in err and "the run stopped at step 9" in err
    assert f"The last good checkpoint is {good} (step 3)" in err
    assert "step_00000006 holds the state the bad steps started from and is marked with diverged.json" in err
    assert "raise [train] spike_factor or spike_steps" in err
    assert steps_saved(run_dir) == [3, 6] and json.loads((suspect / DIVERGED).read_text())["first_bad_step"] == 7

    monkeypatch.undo()
    assert prx_run(run_dir, *SPIKES, resume=True) == 0
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from {good} at step 3" in log
    assert "skipped step_00000006: it holds the state a divergence started from" in log
    replaced = list((run_dir / "checkpoints" / "replaced").iterdir())  # step 6 written again: the old one kept
    assert [p.name.split(".")[0] for p in replaced] == ["step_00000006"] and (replaced[0] / DIVERGED).is_file()
    assert steps_saved(run_dir) == [9, 12]


def test_a_checkpoint_due_during_a_spike_waits_for_the_loss_to_settle(tmp_path, monkeypatch):
    spike_loss(monkeypatch, {6, 7})
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, *SPIKES, "train.keep_checkpoints=10") == 0
    log = (run_dir / "log.txt").read_text()
    assert "checkpoint of step 6 waits: the diffusion loss is above 30 x its running median" in log
    assert steps_saved(run_dir) == [3, 8, 9, 12]  # step 6's waited until step 8, the first unspiked loss
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 12


def test_a_total_loss_below_zero_is_no_spike(tmp_path, random_effnet):
    """REPA's term is a negative cosine similarity: with a large weight the total loss goes below
    zero, where every value is above 30 x a negative median. Spikes are judged on the diffusion
    term, so the run goes on."""
    spec, _ = random_effnet
    run_dir = tmp_path / "run"
    assert prx_run(run_dir, 'plugins=["repa"]', f"repa.teacher={spec}", "repa.weight=50", "repa.block=1",
                   "train.log_every=1", *SPIKES) == 0
    totals = losses(run_dir)
    assert len(totals) == 12 and sum(total < 0 for total in totals[4:]) >= 6, totals
    assert steps_saved(run_dir) == [9, 12]


# --- the device-side record -----------------------------------------------------------------------


def monitor(**settings) -> tuple[DivergenceMonitor, torch.nn.Linear]:
    layer = torch.nn.Linear(4, 4)
    return DivergenceMonitor(list(layer.parameters()), TrainConfig(**settings), torch.device("cpu")), layer


def record(watch: DivergenceMonitor, values: list[float], start: int = 1) -> None:
    for step, value in enumerate(values, start):
        watch.record(step, torch.tensor(value), torch.tensor(0.0 if math.isfinite(value) else 1.0))


def test_heavy_tailed_noise_never_looks_like_a_spike_with_the_defaults():
    """One loss in ten at 5 to 50 times the typical value (the shape of per-step v-space losses)."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(5000, generator=g) + 0.5
    outlier = torch.rand(5000, generator=g) < 0.1
    values = torch.where(outlier, base * (5 + 45 * torch.rand(5000, generator=g)), base)
    watch, _ = monitor()
    record(watch, values.tolist())
    health = watch.read(5000, ONE)
    assert health.spike_from == 0 and health.weights_bad_at == 0 and health.nonfinite_from == 0


def test_a_sustained_spike_trips_after_spike_steps_from_its_first_step():
    watch, _ = monitor()
    record(watch, [1.0] * 199 + [5.0] * 19)
    assert watch.read(218, ONE).spike_from == 0 and watch.read(218, ONE).spike_streak == 19
    record(watch, [5.0], start=219)
    health = watch.read(219, ONE)
    assert (health.spike_from, health.spike_median) == (200, 1.0)
    assert "for 20 steps in a row from step 200" in health.verdict(TrainConfig())[0]


def test_non_finite_losses_neither_extend_nor_end_a_spike_and_count_on_their_own():
    watch, _ = monitor(spike_window=4, spike_steps=3, max_nonfinite_in_row=2)
    record(watch, [1.0, 1.0, 1.0, 9.0, math.nan, 9.0])
    health = watch.read(6, ONE)
    assert (health.spike_streak, health.spike_from, health.nonfinite_from) == (2, 0, 0)
    record(watch, [math.nan, math.nan], start=7)
    assert watch.read(8, ONE).nonfinite_from == 7


def test_the_weights_are_watched_after_each_update():
    watch, layer = monitor(max_weight_growth=2.0)
    assert watch.record(1, torch.tensor(1.0), torch.tensor(0.0)) == 0
    with torch.no_grad():
        layer.weight.mul_(1.5)
    assert watch.record(2, torch.tensor(1.0), torch.tensor(0.0)) == 0  # x1.5 or less is no jump
    with torch.no_grad():
        layer.weight.mul_(100.0)
    assert watch.record(3, torch.tensor(1.0), torch.tensor(0.0)) == 1  # the EMA skips this update
    health = watch.read(3, ONE)
    assert (health.weights_bad_at, health.weights_finite) == (3, True)
    with torch.no_grad():
        layer.bias[0] = float("nan")
    assert watch.record(4, torch.tensor(1.0), torch.tensor(0.0)) == 1
    assert watch.read(4, ONE).weights_bad_at == 3  # the first bad update is the one named
    assert watch.state_problem({"w": torch.ones(2)}, ONE) == "the weights are not finite"
    assert monitor()[0].state_problem({"w": torch.tensor([float("inf")])}, ONE) == "the EMA weights are not finite"


def test_watching_reads_nothing_back_to_the_host(tmp_path):
    """With the spike window judging every step, a training step still has no host read."""
    from prx_core.plan import model_config, plan_phases
    from prx_core.recipe.loader import load_recipe
    from prx_core.registry import discover
    from prx_core.techniques import TechniqueSet
    from prx_core.text import load_text_encoder
    from prx_core.train.trainer import Trainer
    from prx_core.types import RunContext
    from test_train import batches

    registry = discover()
    recipe = load_recipe(TINY_RECIPE, ["train.spike_window=2", "train.spike_steps=1"], registry)
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, ONE.device), ONE)
    trainer.start_phase(plan_phases(recipe, techniques)[0], 0)
    stream = batches()
    for _ in range(2):
        trainer.train_step(stream, 1)
    with HostReads() as reads:
        for _ in range(2):
            trainer.train_step(stream, 1)
    assert reads.sites == []
    assert trainer.health.recorded == 4
