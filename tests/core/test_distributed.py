"""Many processes: DDP and FSDP2 under torchrun (2 gloo processes on CPU), sharded checkpoints
written with torch.distributed.checkpoint, resume after a crash and onto another process
count, rank-0-only output, and the export of the EMA weights.

The runs are launched as a user launches them (``python -m torch.distributed.run ... -m prx_core
run``) on ``prx_core/testing/tiny.toml`` and shared between the tests through a module-scoped
cache, so each configuration trains once (about two minutes in all on 2 CPU cores). The tests at
the end (metadata reader, tree split) are fast and run in-process.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from prx_core import distributed as D
from prx_core.checkpoint import CheckpointManager
from prx_core.cli import export_cmd
from prx_core.errors import CheckpointError
from prx_core.plan import model_config
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.techniques import TechniqueSet
from prx_core.testing import TINY_RECIPE
from prx_core.text import load_text_encoder
from prx_core.train.state import (
    DCP_DIR,
    SafeReader,
    join_tensors,
    load_checkpoint,
    read_ema,
    read_full_state,
    split_tensors,
)
from prx_core.train.trainer import Trainer
from prx_core.types import RunContext

CRASH = Path(__file__).parent / "distributed" / "crash_after_step.py"
MIXED_PRECISION = Path(__file__).parent / "distributed" / "mixed_precision_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
# 2 processes x batch b against 1 process x batch 2b differ only in the order of float sums
# (per-rank means, then the all-reduce); observed: at most 2e-7 relative on losses and grad
# norms, 1e-7 absolute on weights after 6 steps.
REL = 1e-5
ABS = 1e-5
FSDP = ("--set", "distributed.strategy=fsdp", "--set", "train.micro_batch_size=2")  # 2 x 2 processes x 2 micro-steps
SETTINGS = {
    "one": ((), 1),
    "ddp": (("--set", "distributed.strategy=ddp"), 2),
    "fsdp": (FSDP, 2),
}


def launch(command: list[str], what: str) -> str:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or "terminate called" in done.stderr:
        raise AssertionError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done.stdout


def prx_run(run_dir: Path, settings: tuple[str, ...], processes: int, *extra: str) -> str:
    prefix = TORCHRUN if processes == 2 else [sys.executable]
    return launch([*prefix, "-m", "prx_core", "run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain",
                   *settings, *extra], f"prx run {' '.join(settings + extra)} on {processes} processes")


class Runs:
    """Each run trains on first use; ``out[name]`` keeps its console output."""

    def __init__(self, root: Path):
        self.root = root
        self.out: dict[str, str] = {}

    def __getitem__(self, name: str) -> Path:
        run_dir = self.root / name
        if name not in self.out:
            if name in SETTINGS:
                self.out[name] = prx_run(run_dir, *SETTINGS[name])
            elif name in ("resumed", "resumed_on_one"):
                crashed = self.crashed()
                shutil.copytree(crashed, run_dir)
                self.out[name] = prx_run(run_dir, FSDP, 2 if name == "resumed" else 1, "--resume")
            elif name == "resumed_past_a_lost_shard":
                shutil.copytree(self["fsdp"], run_dir)
                (checkpoint(run_dir, 6) / DCP_DIR / "__1_0.distcp").unlink()
                self.out[name] = prx_run(run_dir, FSDP, 2, "--resume", "--set", "train.steps=7")
        return run_dir

    def crashed(self) -> Path:
        """The FSDP run killed right after step 5; its latest checkpoint is step 3."""
        run_dir = self.root / "crashed"
        if not run_dir.exists():
            done = subprocess.run([*TORCHRUN, str(CRASH), "5", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain", *FSDP],
                                  env=ENV, capture_output=True, text=True, timeout=300)
            assert done.returncode != 0 and "SIGKILL" in done.stderr, done.stderr[-3000:]
        return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("distributed"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    timing = ("wall_s", "images_per_s", "step_ms", "peak_mem_mb")
    return [{k: v for k, v in r.items() if k not in timing and not k.startswith("time/")} for r in rows]


def checkpoint(run_dir: Path, step: int) -> Path:
    return CheckpointManager(run_dir / "checkpoints").folder(step)


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def assert_states_equal(a: dict, b: dict) -> None:
    """Model, EMA and optimizer states (full tensors) are bit-identical."""
    tensors_a, rest_a = split_tensors({part: a[part] for part in ("model", "ema", "optimizers")})
    tensors_b, rest_b = split_tensors({part: b[part] for part in ("model", "ema", "optimizers")})
    assert rest_a == rest_b
    assert tensors_a.keys() == tensors_b.keys()
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), key


# -- two processes compute what one process computes ----------------------------------------------
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_twice_the_batch(runs, strategy):
    one, two = metrics(runs["one"]), metrics(runs[strategy])
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 7))
    for a, b in zip(one, two):
        for key in ("loss", "loss/diffusion", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=REL), (strategy, a["step"], key)
    split = "2 x 2 processes x 2 accumulation" if strategy == "fsdp" else "4 x 2 processes x 1 accumulation"
    assert f"global batch 8 = {split}" in runs.out[strategy]
    final_one, _ = read_ema(checkpoint(runs["one"], 6))
    final_two, step = read_ema(checkpoint(runs[strategy], 6))
    assert step == 6
    assert max_abs_diff(final_one, final_two) < ABS
    layout = (checkpoint(runs[strategy], 6) / DCP_DIR).is_dir()
    assert layout == (strategy == "fsdp")  # sharded checkpoints exactly under FSDP2


# REPA's projector runs after the denoiser's forward and sits out the second phase: DDP must
# neither wait for its gradient there nor skip averaging it in the first phase.
REPA_TWO_PHASES = ("--set", 'plugins=["repa","multires"]', "--set", "repa.teacher=efficientnet-lite0",
                   "--set", "repa.block=1", "--set", "repa.projector_dim=32", "--set",
                   'multires.phases=[{name="a",resolution=32,batch_size=8,steps=2},'
                   '{name="b",resolution=32,batch_size=8,steps=2,disabled=["repa"]}]')


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_extras_used_outside_the_forward_and_off_in_a_phase(tmp_path, strategy):
    prx_run(tmp_path / "one", REPA_TWO_PHASES, 1)
    prx_run(tmp_path / strategy, (*REPA_TWO_PHASES, "--set", f"distributed.strategy={strategy}"), 2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / strategy)
    assert ["loss/repa" in r for r in two] == [True, True, False, False]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=REL), (strategy, a["step"], key)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_gathers_bf16_weights_under_bf16_precision_and_keeps_fp32_state():
    """The checks are in tests/core/distributed/mixed_precision_check.py (its docstring lists them)."""
    out = launch([*TORCHRUN, str(MIXED_PRECISION)], "the mixed-precision check")
    assert "mixed precision check passed" in out


@pytest.mark.distributed
@pytest.mark.slow
def test_rank_zero_alone_prints_and_writes(runs):
    run_dir, out = runs["fsdp"], runs.out["fsdp"]
    assert out.count("run folder:") == 1 and out.count("summary: steps = 6") == 1
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 7))
    assert len((run_dir / "log.txt").read_text().split("run folder:")) == 2

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and DCP_DIR not in p.parts}

    assert files(run_dir) == files(runs["one"])
    shards = checkpoint(run_dir, 6) / DCP_DIR
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    manifest = json.loads((checkpoint(run_dir, 6) / "manifest.json").read_text())
    assert {f"{DCP_DIR}/__0_0.distcp", f"{DCP_DIR}/__1_0.distcp", f"{DCP_DIR}/.metadata"} <= set(manifest["files"])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"


# -- resume --------------------------------------------------------------------------------------
@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_resume_after_a_crash_continues_exactly(runs):
    resumed = runs["resumed"]
    assert "resumed from" in runs.out["resumed"] and "step_00000003 at step 3" in runs.out["resumed"]
    assert without_timings(metrics(resumed)) == without_timings(metrics(runs["fsdp"]))  # bit for bit
    assert_states_equal(read_full_state(checkpoint(resumed, 6)), read_full_state(checkpoint(runs["fsdp"], 6)))


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_one_process(runs):
    crashed = runs.crashed()
    folder = checkpoint(crashed, 3)
    saved = read_full_state(folder)
    # The consolidated shards are the weights one process computes with the same global batch.
    assert max_abs_diff(saved["model"], read_full_state(checkpoint(runs["one"], 3))["model"]) < ABS

    # Loaded into a one-process trainer, model, EMA and optimizer state are exactly the saved ones.
    recipe = load_recipe(crashed / "recipe.toml", (), discover())
    info = D.DistInfo(0, 1, 0, "none", torch.device("cpu"))
    techniques = TechniqueSet(recipe, discover(), RunContext(recipe, recipe.seed, device=info.device), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, info.device), info)
    state = load_checkpoint(trainer, folder, info)
    assert trainer.step == 3 and len(state["loader"]["ranks"]) == 2
    assert_states_equal(trainer.state_dict(), saved)

    # And the run continues on one process, saying that the data order restarts.
    run_dir = runs["resumed_on_one"]
    out = runs.out["resumed_on_one"]
    assert "resuming on 1 processes from a checkpoint written by 2" in out and "data order restarts" in out
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert not (checkpoint(run_dir, 6) / DCP_DIR).exists()  # one process writes one file


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_resume_passes_over_a_checkpoint_that_lost_a_shard(runs):
    """Rank 0 verifies, both ranks load the checkpoint it chose, and the run continues exactly."""
    run_dir, out = runs["resumed_past_a_lost_shard"], runs.out["resumed_past_a_lost_shard"]
    assert f"resumed from {checkpoint(run_dir, 3)} at step 3" in out
    assert f"skipped step_00000006: {checkpoint(run_dir, 6) / DCP_DIR / '__1_0.distcp'} is missing" in out
    assert out.count("resumed from") == 1  # rank 0 alone says it
    assert without_timings(metrics(run_dir))[:6] == without_timings(metrics(runs["fsdp"]))  # bit for bit
    (replaced,) = (run_dir / "checkpoints" / "replaced").iterdir()  # written again at step 6: the old one kept
    assert not (replaced / DCP_DIR / "__1_0.distcp").exists() and (replaced / DCP_DIR / "__0_0.distcp").exists()


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _damage_and_reseal(folder: Path) -> None:
    """A shard damaged under a manifest written over it: only the load can tell."""
    from prx_core.checkpoint import write_manifest

    _truncate(folder / DCP_DIR / "__0_0.distcp")
    write_manifest(folder, 6)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize(("damage", "words"), [
    (lambda f: _truncate(f / DCP_DIR / "__0_0.distcp"), "__0_0.distcp is truncated or overwritten"),
    (lambda f: (f / DCP_DIR / "__1_0.distcp").unlink(), "__1_0.distcp is missing"),
    (lambda f: (f / DCP_DIR / ".metadata").unlink(), ".metadata is missing"),
    (lambda f: _truncate(f / "state.pt"), "state.pt is truncated or overwritten"),
    (_damage_and_reseal, "it could not be loaded"),
], ids=["shard-truncated", "shard-removed", "metadata-removed", "state-truncated", "shard-damaged-under-its-manifest"])
def test_a_damaged_sharded_checkpoint_is_passed_over(runs, tmp_path, damage, words):
    """The sharded (DCP) layout's corruptions, resumed on one process: the newest complete checkpoint loads."""
    from prx_core.train.state import resume_checkpoint

    run_dir = Path(shutil.copytree(runs["fsdp"], tmp_path / "run"))
    damage(checkpoint(run_dir, 6))
    recipe = load_recipe(run_dir / "recipe.toml", (), discover())
    info = D.DistInfo(0, 1, 0, "none", torch.device("cpu"))
    techniques = TechniqueSet(recipe, discover(), RunContext(recipe, recipe.seed, device=info.device), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, info.device), info)
    state, selection = resume_checkpoint(trainer, CheckpointManager(run_dir / "checkpoints"), info)
    assert selection.folder == checkpoint(run_dir, 3) and trainer.step == 3 and state["step"] == 3
    ((skipped, reason),) = selection.skipped
    assert skipped == checkpoint(run_dir, 6) and words in reason, reason
    assert_states_equal(trainer.state_dict(), read_full_state(checkpoint(run_dir, 3)))


# -- export --------------------------------------------------------------------------------------
@pytest.mark.distributed
@pytest.mark.slow
def test_export_writes_the_consolidated_ema(runs, tmp_path):
    from prx_core.inference import load_for_sampling

    parser = argparse.ArgumentParser()
    export_cmd.register(parser.add_subparsers())
    for name in ("fsdp", "one"):
        args = parser.parse_args(["export", str(runs[name]), "--out", str(tmp_path / f"{name}.safetensors")])
        assert args.func(args) == 0
    exported = load_file(tmp_path / "fsdp.safetensors")
    # One process's EMA, read straight from its state.pt: the export of its run equals it exactly ...
    single = torch.load(checkpoint(runs["one"], 6) / "state.pt", weights_only=True)["ema"]
    assert_states_equal({"model": {}, "ema": load_file(tmp_path / "one.safetensors"), "optimizers": {}},
                        {"model": {}, "ema": single, "optimizers": {}})
    # ... and the gathered FSDP2 shards are the same weights (the runs agree to float rounding).
    assert exported.keys() == single.keys()
    assert max_abs_diff(exported, single) < ABS
    assert all(t.dtype == torch.float32 and not t.is_meta for t in exported.values())

    inference = load_for_sampling(tmp_path / "fsdp.safetensors")
    assert inference.step == 6 and inference.recipe.name == "tiny"
    params = dict(inference.model.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in exported.items())


# -- fast, in-process ----------------------------------------------------------------------------
def test_tree_split_and_join_round_trip():
    tree = {"state": {"w": {"step": torch.tensor(3.0), "m": torch.ones(2)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95), "params": ["w"]}]}
    tensors, skeleton = split_tensors(tree)
    assert sorted(tensors) == ["state/w/m", "state/w/step"]
    assert skeleton["param_groups"] == tree["param_groups"]
    assert skeleton["state"]["w"]["m"] == {"__tensor__": "state/w/m"}
    joined = join_tensors(skeleton, tensors)
    assert joined["state"]["w"]["m"] is tree["state"]["w"]["m"] and joined["param_groups"] == tree["param_groups"]


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_metadata_is_read_without_running_code(tmp_path):
    dcp.save({"w": torch.arange(4.0)}, storage_writer=dcp.FileSystemWriter(tmp_path / "ok"), no_dist=True)
    target = {"w": torch.zeros(4)}
    dcp.load(target, storage_reader=SafeReader(tmp_path / "ok"), no_dist=True)
    assert torch.equal(target["w"], torch.arange(4.0))

    marker = tmp_path / "code_ran"
    (tmp_path / "ok" / ".metadata").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError, match="without running code"):
        SafeReader(tmp_path / "ok").read_metadata()
    assert not marker.exists()

    # Non-tensor entries, which DCP would read with torch.load(weights_only=False), are refused too.
    dcp.save({"w": torch.zeros(1), "plain": {"note": "text"}},
             storage_writer=dcp.FileSystemWriter(tmp_path / "bytes"), no_dist=True)
    with pytest.raises(CheckpointError, match="BytesStorageMetadata"):
        SafeReader(tmp_path / "bytes").read_metadata()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_damaged_shard_is_refused_before_it_is_read(tmp_path):
    manager = CheckpointManager(tmp_path)
    tmp = manager.begin(1)
    tensors, skeleton = split_tensors({"model": {"w": torch.arange(6.0)}, "ema": {"w": torch.ones(6)},
                                       "optimizers": {}})
    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp / DCP_DIR), no_dist=True)
    torch.save({"step": 1, **skeleton}, tmp / "state.pt")
    folder = manager.commit(tmp, 1)
    ema, step = read_ema(folder)
    assert step == 1 and torch.equal(ema["w"], torch.ones(6))
    shard = next((folder / DCP_DIR).glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        read_ema(folder)


EXIT_PROBE = """
import atexit, sys
from prx_core.distributed import exit_process

atexit.register(lambda: sys.stdout.write("atexit ran\\n"))
sys.stdout.write("buffered, not flushed\\n")  # stdout is a pipe: block-buffered until the exit flushes it

def entry():
    if sys.argv[1] == "raise":
        raise ValueError("a bug in a command")
    return int(sys.argv[1])

exit_process(entry)
"""


@pytest.mark.parametrize("world_size", [1, 2])
def test_exit_process_keeps_the_exit_code_the_output_and_the_atexit_handlers(world_size):
    """Under torchrun (WORLD_SIZE > 1) a command ends with os._exit, without interpreter
    finalization (no gloo worker thread can then be ended mid-destructor: the SIGABRT at exit that
    failed random distributed tests); what Python's own exit does must still happen: the exit code,
    atexit handlers, buffered output, a traceback for a crash."""
    env = {**ENV, "WORLD_SIZE": str(world_size)}
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE, "3"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines == ["buffered, not flushed", "atexit ran"], lines

    failed = subprocess.run([sys.executable, "-c", EXIT_PROBE, "raise"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 1
    assert "ValueError: a bug in a command" in failed.stderr and "Traceback" in failed.stderr
