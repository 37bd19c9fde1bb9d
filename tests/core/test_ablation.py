"""Ablations: the design of runs, the report's arithmetic on synthetic run folders, the plots, and
the resumable runner driven by a fake ``prx run`` script instead of real training."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from prx_core.ablation.design import (
    PLAN_FILE,
    AblationPlan,
    budget_overrides,
    check_common,
    design_variants,
    parse_vary,
    split_valid,
    split_values,
)
from prx_core.ablation.report import build_report, interactions, spreads_by_variant
from prx_core.ablation.results import collect, flatten_eval
from prx_core.ablation.runner import run_ablation, run_state
from prx_core.ablation.stats import Spread, difference, interaction, pooled_std, verdict
from prx_core.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- design ------------------------------------------------------------------------------------

def names(variants):
    return [v.name for v in variants]


def test_parse_vary_plugins_groups_and_values():
    factors = parse_vary(["tread,repa", "tread_guidance+cfg", "optim.betas=[0.9,0.95],[0.9,0.99]"])
    assert [f.key for f in factors] == ["tread", "repa", "tread_guidance+cfg", "optim.betas"]
    assert factors[2].plugins == ("tread_guidance", "cfg")
    assert factors[3].levels == ("[0.9,0.95]", "[0.9,0.99]") and not factors[3].is_plugin
    assert split_values('1e-4, "a,b", [1, 2]') == ["1e-4", '"a,b"', "[1, 2]"]
    for bad in (["optim.lr=1e-4"], ["tread,tread"], ["tread", "tread+repa"], ["plugins=a,b"], ["a,,b"]):
        with pytest.raises(UserError):
            parse_vary(bad)


def test_designs_from_a_recipe_with_techniques():
    factors = parse_vary(["tread,repa"])
    recipe = ("muon", "tread")  # the recipe selects muon and tread; repa is added by the design
    one = design_variants(recipe, factors, "one-at-a-time")
    assert names(one) == ["baseline", "+tread", "+repa"]
    assert [v.plugins for v in one] == [("muon",), ("muon", "tread"), ("muon", "repa")]
    assert one[1].overrides == ('plugins=["muon", "tread"]',)
    loo = design_variants(recipe, factors, "leave-one-out", pairs=True)
    assert names(loo) == ["full", "-tread", "-repa", "-tread -repa"]
    assert loo[0].plugins == ("muon", "repa", "tread") and loo[3].plugins == ("muon",)
    full = design_variants(recipe, factors + parse_vary(["optim.lr=1e-4,3e-4"]), "factorial")
    assert len(full) == 8 and full[0].name == "baseline" and full[-1].name == "+tread +repa optim.lr=3e-4"
    assert full[0].overrides == ('plugins=["muon"]', "optim.lr=1e-4")


def test_invalid_variants_are_skipped_but_the_reference_must_be_valid():
    variants = design_variants((), parse_vary(["tread,tread_guidance"]), "factorial")

    def problems(plugins):
        return ["tread_guidance requires tread."] if "tread_guidance" in plugins and "tread" not in plugins else []

    kept, skipped = split_valid(variants, problems)
    assert names(kept) == ["baseline", "+tread", "+tread +tread_guidance"]
    assert skipped == [("+tread_guidance", "tread_guidance requires tread.")]
    with pytest.raises(UserError, match="reference variant"):
        split_valid(design_variants(("tread_guidance",), parse_vary(["tread"]), "one-at-a-time"), problems)


def test_plan_runs_budget_and_json_round_trip():
    factors = parse_vary(["tread"])
    plan = AblationPlan("r.toml", "one-at-a-time", tuple(factors), (3, 4), "wall:90", ("train.steps=10",),
                        tuple(design_variants((), factors, "one-at-a-time")))
    runs = plan.runs()
    assert [(r.variant, r.seed, r.directory) for r in runs] == [
        ("baseline", 3, "runs/baseline/seed3"), ("+tread", 3, "runs/+tread/seed3"),
        ("baseline", 4, "runs/baseline/seed4"), ("+tread", 4, "runs/+tread/seed4")]
    assert runs[1].overrides == ("train.steps=10", 'plugins=["tread"]', "seed=3", "train.max_wall_s=90")
    assert AblationPlan.from_json(plan.to_json()) == plan
    assert budget_overrides("steps") == ()
    for bad in ("wall", "wall:-3", "time:10"):
        with pytest.raises(UserError, match="--budget"):
            budget_overrides(bad)
    with pytest.raises(UserError, match="sets 'seed'"):
        check_common(["seed=3"], factors)


# -- statistics --------------------------------------------------------------------------------

def test_spread_difference_and_the_rule():
    ref, var = Spread.of([1.0, 2.0, 3.0]), Spread.of([4.0, 5.0, 6.0])
    assert (ref.n, ref.mean, ref.std) == (3, 2.0, 1.0)
    c = difference(var, ref)
    assert c.value == 3.0 and c.se == pytest.approx(math.sqrt(2 / 3)) and c.significant
    # Unequal seeds: s_p^2 = (2*1 + 1*2) / 3; SE = s_p * sqrt(1/3 + 1/2) = 1.0541; |1| < 2 SE.
    other = Spread.of([2.0, 4.0])
    assert pooled_std([ref, other]) == (pytest.approx(math.sqrt(4 / 3)), 3)
    c = difference(Spread.of([2.0, 4.0]), ref)
    assert c.value == 1.0 and c.se == pytest.approx(math.sqrt(4 / 3) * math.sqrt(5 / 6))
    assert c.significant is False and verdict(c, "loss") == "within spread"
    single = difference(Spread.of([5.0]), Spread.of([4.0]))
    assert single.se is None and single.significant is None and verdict(single, "loss") == "n/a"
    assert verdict(difference(var, ref), "loss") == "worse"
    assert verdict(difference(var, ref), "images_per_s") == "better"


def test_interaction_is_the_same_from_every_corner():
    cells = {"ref": Spread.of([1.0, 1.2]), "a": Spread.of([1.3, 1.5]), "b": Spread.of([0.8, 1.0]),
             "ab": Spread.of([1.4, 1.6])}
    c = interaction(cells["ref"], cells["a"], cells["b"], cells["ab"])
    assert c.value == pytest.approx(1.5 - 1.4 - 0.9 + 1.1)  # 0.3
    assert c.se == pytest.approx(math.sqrt(0.02) * math.sqrt(4 / 2))  # 0.2
    assert c.significant is False
    from_full = interaction(cells["ab"], cells["b"], cells["a"], cells["ref"])  # leave-one-out corner
    assert from_full.value == pytest.approx(c.value) and from_full.se == pytest.approx(c.se)


# -- report on synthetic run folders -----------------------------------------------------------

# variant -> metric -> value per seed (0, 1)
SYNTHETIC = {
    "baseline": {"loss/diffusion": (1.0, 1.2), "images_per_s": (10.0, 10.2), "prompt_following": (0.5, 0.5)},
    "+tread": {"loss/diffusion": (1.3, 1.5), "images_per_s": (13.0, 13.2), "prompt_following": (0.5, 0.5)},
    "+repa": {"loss/diffusion": (0.8, 1.0), "images_per_s": (8.0, 8.2), "prompt_following": (0.6, 0.6)},
    "+tread +repa": {"loss/diffusion": (1.4, 1.6), "images_per_s": (11.0, 11.2), "prompt_following": (0.4, 0.4)},
}
LOO_NAMES = {"+tread +repa": "full", "+repa": "-tread", "+tread": "-repa", "baseline": "-tread -repa"}


def write_run(directory: Path, values: dict[str, float], seed: int, steps: int = 20) -> None:
    directory.mkdir(parents=True)
    rows = [{"step": s, "phase": "train", "wall_s": 0.5 * s, "loss": values["loss/diffusion"] + 1 / s,
             "loss/diffusion": values["loss/diffusion"] + 1 / s, "lr": 1e-4, "grad_norm": 0.1,
             "images_per_s": values["images_per_s"], "step_ms": 10.0, "peak_mem_mb": 100.0}
            for s in range(2, steps + 1, 2)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = {"step": steps, "prompt_following": {"overall": values["prompt_following"], "color": 0.9},
                  "distribution": {"fd_efficientnet": 3.0}}
    summary = {"name": "t", "plugins": [], "seed": seed, "steps": steps, "wall_s": 10.0,
               "images_per_s": values["images_per_s"], "peak_mem_mb": 100.0,
               "final": {"loss": values["loss/diffusion"] + 0.5, "loss/diffusion": values["loss/diffusion"]},
               "eval": evaluation}
    (directory / "summary.json").write_text(json.dumps(summary))


def synthetic_ablation(folder: Path, design: str) -> AblationPlan:
    factors = tuple(parse_vary(["tread,repa"]))
    recipe_plugins = ("repa", "tread") if design == "leave-one-out" else ()
    variants = tuple(design_variants(recipe_plugins, factors, design, pairs=design == "leave-one-out"))
    plan = AblationPlan("recipe.toml", design, factors, (0, 1), "steps", (), variants)
    (folder / PLAN_FILE).write_text(plan.to_json())
    for spec in plan.runs():
        key = next(k for k, v in LOO_NAMES.items() if v == spec.variant) if design == "leave-one-out" else spec.variant
        write_run(folder / spec.directory, {m: v[spec.seed] for m, v in SYNTHETIC[key].items()}, spec.seed)
    return plan


def test_report_means_changes_and_interactions(tmp_path):
    plan = synthetic_ablation(tmp_path, "factorial")
    rows, missing = collect(tmp_path, plan)
    assert len(rows) == 8 and not missing
    metrics = ["loss/diffusion", "images_per_s", "prompt_following"]
    spreads = spreads_by_variant(rows, metrics)
    assert spreads["+tread"]["images_per_s"].mean == pytest.approx(13.1)
    assert spreads["+tread"]["images_per_s"].std == pytest.approx(math.sqrt(0.02))
    c = difference(spreads["+tread"]["images_per_s"], spreads["baseline"]["images_per_s"])
    assert c.value == pytest.approx(3.0) and c.significant  # 3.0 > 2 * 0.1414

    found, incomplete = interactions(plan, spreads, metrics)
    table = {(r.a, r.b, r.metric): r for r in found}
    assert not incomplete and len(found) == 3
    loss = table[("+tread", "+repa", "loss/diffusion")]
    assert loss.contrast.value == pytest.approx(0.3) and loss.contrast.se == pytest.approx(0.2)
    assert loss.verdict == "additive"
    assert table[("+tread", "+repa", "images_per_s")].contrast.value == pytest.approx(0.0, abs=1e-9)
    # No spread within cells but two seeds each: any non-zero interaction exceeds it.
    follow = table[("+tread", "+repa", "prompt_following")]
    assert follow.contrast.value == pytest.approx(-0.2) and follow.verdict == "interferes"

    report = build_report(tmp_path).read_text()
    assert "| +tread | tread | 2 |" in report
    assert "13.1 ± 0.14 (+29.7 % ▲)" in report  # images/s: 3.0 / 10.1
    assert "| +tread | +repa | prompt_following | -0.2 | 0 | interferes |" in report
    with open(tmp_path / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 8 and float(csv_rows[0]["fd_efficientnet"]) == 3.0
    assert {"variant", "seed", "plugins", "factor:tread", "loss", "loss/diffusion", "prompt_following/color",
            "images_per_s", "wall_s", "peak_mem_mb", "steps"} <= set(csv_rows[0])
    assert len(json.loads((tmp_path / "results.json").read_text())) == 8
    for name in ("effects.png", "loss_diffusion.png", "loss.png", "images_per_s.png", "peak_mem_mb.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_leave_one_out_report_uses_the_full_recipe_as_reference(tmp_path):
    plan = synthetic_ablation(tmp_path, "leave-one-out")
    assert plan.reference.name == "full"
    rows, _ = collect(tmp_path, plan)
    spreads = spreads_by_variant(rows, ["loss/diffusion"])
    found, _ = interactions(plan, spreads, ["loss/diffusion"])
    (row,) = found
    assert (row.a, row.b) == ("-tread", "-repa") and row.contrast.value == pytest.approx(0.3)
    report = build_report(tmp_path).read_text()
    assert "reference: **full**" in report and "| **full** |" in report


def test_missing_pair_runs_are_named(tmp_path):
    factors = tuple(parse_vary(["tread,repa"]))
    plan = AblationPlan("r.toml", "one-at-a-time", factors, (0,), "steps", (),
                        tuple(design_variants((), factors, "one-at-a-time")))
    (tmp_path / PLAN_FILE).write_text(plan.to_json())
    for spec in plan.runs():
        write_run(tmp_path / spec.directory, {m: v[0] for m, v in SYNTHETIC[spec.variant].items()}, 0)
    report = build_report(tmp_path).read_text()
    assert "Pairs without all four runs" in report and "+tread with +repa" in report
    assert "n/a" not in report.split("## Outcomes")[1].split("##")[0]  # one seed: no marks, no crash


def test_flatten_eval():
    assert flatten_eval({"step": 5, "prompt_following": {"overall": 0.7, "count": 0.5},
                         "distribution": {"fd_efficientnet": 2.0}, "other": 1}) == {
        "prompt_following": 0.7, "prompt_following/count": 0.5, "fd_efficientnet": 2.0, "eval/other": 1.0}


# -- the runner with a fake `prx run` ----------------------------------------------------------

FAKE_RUN = textwrap.dedent('''
    """Stands in for `python -m prx_core run`: logs its call, writes metrics, and (when the seed is
    in $FAKE_FAIL_SEEDS and --resume is absent) exits half-way without summary.json, with the
    code $FAKE_FAIL_CODE (default 3)."""
    import json, os, pathlib, sys
    args = sys.argv[1:]
    assert args[0] == "run", args
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    run_dir = pathlib.Path(args[args.index("--run-dir") + 1])
    resume = "--resume" in args
    seed = int(next(s for s in sets if s.startswith("seed=")).split("=")[1])
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps({"dir": str(run_dir), "resume": resume, "threads": os.environ["OMP_NUM_THREADS"],
                            "recipe": args[1], "sets": sets}) + "\\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in (1, 2):
            f.write(json.dumps({"step": step, "phase": "train", "wall_s": 0.1 * step, "loss": 1.0 / step,
                                "loss/diffusion": 1.0 / step, "images_per_s": 50.0 + seed}) + "\\n")
    if str(seed) in os.environ.get("FAKE_FAIL_SEEDS", "").split(",") and not resume:
        sys.exit(int(os.environ.get("FAKE_FAIL_CODE", "3")))
    summary = {"name": run_dir.name, "plugins": [], "seed": seed, "steps": 2, "wall_s": 0.2,
               "images_per_s": 50.0 + seed, "peak_mem_mb": 1.0, "final": {"loss": 0.5, "loss/diffusion": 0.5},
               "eval": {"step": 2, "prompt_following": {"overall": 0.5}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
''')


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))

    def read_calls():
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return [sys.executable, str(script)], read_calls


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), force_terminal=False)


def test_resume_of_a_half_finished_ablation(tmp_path, fake_run, monkeypatch):
    launcher, read_calls = fake_run
    folder = tmp_path / "ablation"
    factors = tuple(parse_vary(["tread"]))
    plan = AblationPlan("recipe.toml", "one-at-a-time", factors, (0, 1), "steps", (),
                        tuple(design_variants((), factors, "one-at-a-time")))
    specs = plan.runs()
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "1")
    first = run_ablation(folder, "recipe.toml", specs, launcher=launcher, console=quiet())
    assert [o.status for o in first] == ["finished", "finished", "failed", "failed"]
    assert [run_state(folder, s) for s in specs] == ["finished", "finished", "partial", "partial"]
    assert (folder / "logs" / "runs__baseline__seed1.log").read_text().startswith("$ " + " ".join(launcher) + " run")
    assert read_calls()[0]["sets"] == ['plugins=[]', "seed=0"] and read_calls()[0]["recipe"] == "recipe.toml"

    with pytest.raises(UserError, match="--resume"):
        run_ablation(folder, "recipe.toml", specs, launcher=launcher, console=quiet())

    before = len(read_calls())
    parallel = min(2, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1
    second = run_ablation(folder, "recipe.toml", specs, parallel=parallel, resume=True, launcher=launcher,
                          console=quiet())
    assert [o.status for o in second] == ["skipped", "skipped", "finished", "finished"]
    resumed = read_calls()[before:]
    assert sorted(c["dir"] for c in resumed) == sorted(str(folder / s.directory) for s in specs[2:])
    assert all(c["resume"] for c in resumed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert {c["threads"] for c in resumed} == {str(cores // parallel)}
    assert all(run_state(folder, s) == "finished" for s in specs)
    third = run_ablation(folder, "recipe.toml", specs, resume=True, launcher=launcher, console=quiet())
    assert {o.status for o in third} == {"skipped"} and len(read_calls()) == before + 2


@pytest.mark.parametrize("code", [130, 143], ids=["SIGINT", "SIGTERM"])
def test_a_run_that_a_signal_stopped_is_interrupted_not_failed(tmp_path, fake_run, monkeypatch, code):
    launcher, _ = fake_run
    factors = tuple(parse_vary(["tread"]))
    plan = AblationPlan("recipe.toml", "one-at-a-time", factors, (0, 1), "steps", (),
                        tuple(design_variants((), factors, "one-at-a-time")))
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "1")
    monkeypatch.setenv("FAKE_FAIL_CODE", str(code))  # what prx run exits with after a signal and its checkpoint
    outcomes = run_ablation(tmp_path / "ablation", "recipe.toml", plan.runs(), launcher=launcher, console=quiet())
    assert [(o.status, o.returncode) for o in outcomes] == [("finished", 0)] * 2 + [("interrupted", code)] * 2


def test_parallel_beyond_the_cores_is_refused(tmp_path, fake_run):
    launcher, _ = fake_run
    factors = tuple(parse_vary(["tread"]))
    plan = AblationPlan("r.toml", "one-at-a-time", factors, (0,), "steps", (),
                        tuple(design_variants((), factors, "one-at-a-time")))
    with pytest.raises(UserError, match="--parallel"):
        run_ablation(tmp_path, "r.toml", plan.runs(), parallel=10_000, launcher=launcher, console=quiet())


@pytest.mark.slow
def test_prx_ablate_and_report_commands(tmp_path, fake_run, monkeypatch):
    """The commands as a user runs them (plugin discovery and recipe loading: 5-10 s on two cores)."""
    from prx_core.cli import ablate_cmd, report_cmd

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    launcher, read_calls = fake_run
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('name = "tiny"\nseed = 7\n[model]\npreset = "prx-test"\n[text]\ndim = 32\n[train]\nsteps = 2\n')
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    ablate_cmd.register(sub)
    report_cmd.register(sub)
    out = tmp_path / "abl"
    argv = ["ablate", str(recipe), "--vary", "optim.lr=1e-4,3e-4", "--seeds", "2", "--out", str(out),
            "--set", "train.log_every=1", "--launcher", " ".join(launcher)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    calls = read_calls()
    assert len(calls) == 4 and {c["recipe"] for c in calls} == {str(recipe.resolve())}
    assert calls[1]["sets"] == ["train.log_every=1", "plugins=[]", "optim.lr=3e-4", "seed=7"]
    assert (out / "report.md").is_file() and len((out / "results.csv").read_text().splitlines()) == 5
    args = parser.parse_args(argv)
    assert args.func(args) == 0 and len(read_calls()) == 4  # everything finished: nothing reruns
    changed = parser.parse_args([*argv[:-2], "--seeds", "3", "--launcher", " ".join(launcher)])
    with pytest.raises(UserError, match="different ablation"):
        changed.func(changed)
    with pytest.raises(UserError, match="not an installed technique"):
        bad = parser.parse_args(["ablate", str(recipe), "--vary", "no_such_technique", "--out", str(out)])
        bad.func(bad)
    (out / "report.md").unlink()
    args = parser.parse_args(["report", str(out), "--quiet"])
    assert args.func(args) == 0 and (out / "report.md").is_file()


BLOCKING_RUN = textwrap.dedent('''
    """Stands in for `prx run`: says it started (with its pid), then waits for SIGINT, which it
    records; it gives up by itself after five minutes, so that a failed test leaves nothing behind."""
    import os, pathlib, signal, sys, time
    args = sys.argv[1:]
    run_dir = pathlib.Path(args[args.index("--run-dir") + 1])
    run_dir.mkdir(parents=True, exist_ok=True)

    def stop(signum, frame):
        (run_dir / "stopped").write_text(signal.Signals(signum).name)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    (run_dir / "started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(1)
''')

DRIVER = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    from rich.console import Console
    from prx_core.ablation.design import AblationPlan, design_variants, parse_vary
    from prx_core.ablation.runner import run_ablation
    factors = tuple(parse_vary(["tread"]))
    plan = AblationPlan("r.toml", "one-at-a-time", factors, (0,), "steps", (),
                        tuple(design_variants((), factors, "one-at-a-time")))
    try:
        run_ablation(Path(sys.argv[1]), "r.toml", plan.runs(), launcher=[sys.executable, sys.argv[2]],
                     console=Console(file=open(os.devnull, "w")))
    except KeyboardInterrupt:
        sys.exit(130)
''')


def test_sigterm_stops_a_background_ablation_and_its_runs_checkpoint(tmp_path):
    """Started as `nohup ... &` starts it (SIGINT ignored), SIGTERM stops it: the running run gets
    its SIGINT (prx run then checkpoints) and no further run starts."""
    (tmp_path / "run.py").write_text(BLOCKING_RUN)
    (tmp_path / "driver.py").write_text(DRIVER)
    folder = tmp_path / "ablation"
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(folder), str(tmp_path / "run.py")],
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    started = folder / "runs" / "baseline" / "seed0" / "started"
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
        assert started.exists(), "the first run never started"
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) == 130
        assert (folder / "runs" / "baseline" / "seed0" / "stopped").read_text() == "SIGINT"
        assert not (folder / "runs" / "+tread").exists()
    finally:  # on a failure, end what this test started (the run is in a session of its own)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        if started.exists() and started.read_text():
            kill_if_running(int(started.read_text()), str(tmp_path / "run.py"))


def kill_if_running(pid: int, script: str) -> None:
    """SIGKILL process ``pid`` if it still runs ``script`` (not another process that got its pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            ours = script.encode() in f.read().split(b"\0")
    except OSError:
        return
    if ours:
        os.kill(pid, signal.SIGKILL)
