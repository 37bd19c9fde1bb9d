"""Ablations at equal wall-clock from measured throughput (``--budget bench:SECONDS``; the
measuring itself is tested in tests/core/measure/test_throughput.py), the add-and-remove design
with more seeds for its anchors, and what the report makes of them: the throughput section, the
technique table, prompt following by attribute and against training time."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from prx_core.ablation.bench_budget import BENCH_FILE, Throughput, budget_steps, load_throughput
from prx_core.ablation.design import PLAN_FILE, AblationPlan, budget_overrides, budget_seconds, design_variants, parse_vary
from prx_core.ablation.plots import QualityCurve
from prx_core.ablation.report import build_report, spreads_by_variant, technique_rows
from prx_core.ablation.results import collect
from prx_core.cli import main
from prx_core.errors import UserError
from prx_core.measure.throughput import Attempt, PhaseSpeed
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.testing import TINY_RECIPE

from test_ablation import PNG_SIGNATURE, fake_run  # noqa: F401 (a fixture)

TWO_PHASES = ('plugins=["multires"]', 'multires.phases=[{name="a",resolution=32,batch_size=8,steps=5},'
              '{name="b",resolution=32,batch_size=4,steps=7}]')


# -- design -------------------------------------------------------------------------------------

def test_add_and_remove_has_both_ends_of_the_ladder():
    factors = parse_vary(["tread+tread_guidance,repa,muon"])
    variants = design_variants(("multires", "muon", "repa", "tread", "tread_guidance"), factors, "add-and-remove")
    assert [v.name for v in variants] == [
        "baseline", "+tread+tread_guidance", "+repa", "+muon",
        "full", "full -tread+tread_guidance", "full -repa", "full -muon"]
    by_name = {v.name: v.plugins for v in variants}
    assert by_name["baseline"] == ("multires",)
    assert by_name["+repa"] == ("multires", "repa")
    assert by_name["full"] == ("multires", "muon", "repa", "tread", "tread_guidance")
    assert by_name["full -repa"] == ("multires", "muon", "tread", "tread_guidance")
    two = design_variants((), parse_vary(["tread,repa"]), "add-and-remove")
    assert [v.name for v in two] == ["baseline", "+tread", "+repa", "full"]  # full -tread is +repa
    with pytest.raises(UserError, match="techniques only"):
        design_variants((), parse_vary(["tread", "optim.lr=1e-4,3e-4"]), "add-and-remove")
    with pytest.raises(UserError, match="at least two"):
        design_variants((), parse_vary(["tread"]), "add-and-remove")


def test_anchor_seeds_and_phase_steps_in_the_runs():
    factors = tuple(parse_vary(["tread,repa"]))
    variants = tuple(design_variants((), factors, "add-and-remove"))
    plan = AblationPlan("r.toml", "add-and-remove", factors, (0, 1), "bench:60", ("eval.every=5",), variants,
                        anchor_seeds=(0, 1, 2))
    assert plan.anchors == ("baseline", "full")
    runs = plan.runs({v.name: (3, 4) for v in variants})
    assert [(r.variant, r.seed) for r in runs if r.seed == 2] == [("baseline", 2), ("full", 2)]
    assert len(runs) == 2 * 4 + 2
    assert runs[1].overrides == ("eval.every=5", 'plugins=["tread"]', "seed=0", "train.phase_steps=[3, 4]")
    assert AblationPlan.from_json(plan.to_json()) == plan
    assert [r.directory for r in plan.runs()] == [r.directory for r in runs]


def test_budget_kinds():
    assert budget_seconds("steps") == ("steps", 0.0)
    assert budget_seconds("bench:480") == ("bench", 480.0)
    assert budget_overrides("bench:480") == ()
    assert budget_overrides("wall:90") == ("train.max_wall_s=90",)
    for bad in ("bench", "bench:0", "bench:inf", "cpu:10"):
        with pytest.raises(UserError, match="bench:SECONDS"):
            budget_seconds(bad)


# -- steps from throughput ----------------------------------------------------------------------

def speeds(*phases: tuple[int, int, float]) -> tuple[PhaseSpeed, ...]:
    """(recipe steps, batch, seconds per step) per phase, measured as three rounds around it."""
    return tuple(PhaseSpeed(f"p{i}", 32, batch, steps, (step_s * 1.5, step_s, step_s * 0.9))
                 for i, (steps, batch, step_s) in enumerate(phases))


def test_budget_steps_scale_the_schedule_to_the_budget():
    slow = speeds((300, 32, 0.5), (450, 32, 1.0))  # 150 + 450 = 600 s for the recipe's 750 steps
    assert slow[0].median_step_s == 0.5 and slow[0].images_per_s == 64.0
    assert budget_steps(slow, 600.0) == (300, 450)
    assert budget_steps(slow, 300.0) == (150, 225)
    fast = speeds((300, 32, 0.25), (450, 32, 0.5))  # twice as fast: twice the steps
    assert budget_steps(fast, 600.0) == (600, 900)
    assert budget_steps(speeds((1, 8, 10.0)), 1.0) == (1,)  # never below one step
    attempt = Attempt("t", 1.0, 2, 3, 1, (0.4, 0.5, 0.3, 0.6), {"slow": slow, "fast": fast})
    throughput = Throughput(600.0, 3.0, (attempt,))
    assert throughput.phase_steps() == {"slow": (300, 450), "fast": (600, 900)}
    assert throughput.seconds_at("slow", 300) == pytest.approx(150.0)
    assert throughput.seconds_at("slow", 750) == pytest.approx(600.0)
    assert throughput.seconds_at("fast", 1500) == pytest.approx(600.0)
    assert Throughput.from_json(throughput.to_json()) == throughput


def test_a_stored_measurement_must_match_the_variants(tmp_path):
    registry = discover()
    recipes = {"two phases": load_recipe(TINY_RECIPE, list(TWO_PHASES), registry)}
    assert load_throughput(tmp_path, recipes, registry, 5.0) is None
    attempt = Attempt("t", 1.0, 2, 1, 1, (0.1, 0.1), {"two phases": speeds((5, 8, 0.1), (7, 4, 0.1))})
    (tmp_path / BENCH_FILE).write_text(Throughput(5.0, 3.0, (attempt,)).to_json())
    with pytest.raises(UserError, match="measured other variants"):
        load_throughput(tmp_path, recipes, registry, 5.0)  # the phases are named a, b, not p0, p1
    matching = {"two phases": tuple(PhaseSpeed(n, 32, b, s, (0.1,)) for n, b, s in (("a", 8, 5), ("b", 4, 7)))}
    (tmp_path / BENCH_FILE).write_text(Throughput(5.0, 3.0, (Attempt("t", 1.0, 2, 1, 1, (0.1,), matching),)).to_json())
    assert load_throughput(tmp_path, recipes, registry, 5.0) is not None
    with pytest.raises(UserError, match="budget"):
        load_throughput(tmp_path, recipes, registry, 6.0)


# -- report -------------------------------------------------------------------------------------

# variant -> prompt following per seed; anchors have three seeds
SCORES = {"baseline": (0.30, 0.32, 0.31), "+tread": (0.40, 0.42), "+repa": (0.33, 0.35), "+muon": (0.30, 0.32),
          "full": (0.50, 0.52, 0.51), "full -tread": (0.33, 0.35), "full -repa": (0.49, 0.51),
          "full -muon": (0.50, 0.52)}


def write_run(directory: Path, score: float, seed: int, steps: int) -> None:
    directory.mkdir(parents=True)
    rows = [{"step": s, "phase": "p0", "wall_s": 2.0 * s, "loss": 1.0 / s, "loss/diffusion": 1.0 / s,
             "images_per_s": 16.0} for s in range(1, steps + 1)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = [{"step": s, "wall_s": 2.0 * s, "prompt_following": {"overall": score * s / steps}}
             for s in range(steps // 2, steps + 1, steps // 2)]
    summary = {"steps": steps, "wall_s": 2.0 * steps, "images_per_s": 16.0, "final": {"loss/diffusion": 1.0 / steps},
               "eval": {"step": steps, "prompt_following": {"overall": score, "position": score / 2},
                        "distribution": {"fd_efficientnet": 9.0 - score}},
               "evals": evals}
    (directory / "summary.json").write_text(json.dumps(summary))


def bench_ablation(folder: Path) -> AblationPlan:
    factors = tuple(parse_vary(["tread,repa,muon"]))
    plan = AblationPlan("r.toml", "add-and-remove", factors, (0, 1), "bench:8", (),
                        tuple(design_variants((), factors, "add-and-remove")), anchor_seeds=(0, 1, 2))
    (folder / PLAN_FILE).write_text(plan.to_json())
    step_s = {v.name: 0.5 if "tread" in v.plugins else 1.0 for v in plan.variants}  # tread: twice as fast
    attempt = Attempt("2026-01-01T00:00:00", 9.0, 2, 3, 1, (0.2, 0.3, 0.2, 0.4),
                      {name: (PhaseSpeed("p0", 32, 16, 4, (s, s, s)),) for name, s in step_s.items()})
    throughput = Throughput(8.0, 3.0, (attempt,))
    (folder / BENCH_FILE).write_text(throughput.to_json())
    steps = throughput.phase_steps()
    for spec in plan.runs(steps):
        write_run(folder / spec.directory, SCORES[spec.variant][spec.seed], spec.seed, steps[spec.variant][0])
    return plan


def test_the_technique_table_measures_each_technique_alone_and_in_full(tmp_path):
    plan = bench_ablation(tmp_path)
    rows, missing = collect(tmp_path, plan)
    assert not missing and len(rows) == 2 * 8 + 2
    spreads = spreads_by_variant(rows, ["prompt_following"])
    assert spreads["baseline"]["prompt_following"].n == 3 and spreads["+tread"]["prompt_following"].n == 2
    table = {r.technique: r for r in technique_rows(plan, spreads, ["prompt_following"])}
    tread = table["tread"]
    assert tread.alone.value == pytest.approx(0.41 - 0.31)
    assert tread.in_full.value == pytest.approx(0.51 - 0.34)
    assert tread.interaction.value == pytest.approx((0.51 - 0.34) - (0.41 - 0.31))
    # every seed deviates 0.01 from its variant's mean but the anchors' middle seeds (0):
    # s_p^2 = (0.0002 + 0.0002 + 0.0002 + 0.0002) / (2 + 1 + 2 + 1)
    s_p = math.sqrt(0.0008 / 6)
    assert tread.interaction.se == pytest.approx(s_p * math.sqrt(1 / 3 + 1 / 2 + 1 / 2 + 1 / 3), rel=1e-6)
    assert tread.verdict == "synergy"  # 0.07 > 2 SE = 0.030
    assert table["repa"].in_full.value == pytest.approx(0.51 - 0.50) and table["repa"].verdict == "additive"
    assert table["muon"].alone.value == pytest.approx(0.0) and table["muon"].verdict == "additive"


def test_bench_report_has_throughput_steps_and_the_quality_curves(tmp_path):
    bench_ablation(tmp_path)
    report = build_report(tmp_path).read_text()
    assert "## Throughput" in report and "Warning" not in report
    assert "| +tread | 32.0 | 16 | 8 |" in report and "| baseline | 16.0 | 8 | 8 |" in report
    assert "seeds: 0, 1 (0, 1, 2 for baseline and full)" in report
    assert "## Each technique alone and in the full recipe" in report and "| tread | prompt_following |" in report
    assert "## Prompt following by attribute" in report and "position 0.11" in report
    assert "## Interactions" not in report
    assert "fd_efficientnet" in report.split("## Outcomes")[1].split("##")[0]
    data = (tmp_path / "plots" / "prompt_following.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_quality_curve_means_over_seeds():
    curve = QualityCurve((((1.0, 0.2), (2.0, 0.4)), ((1.0, 0.4), (2.0, 0.6), (3.0, 0.7))))
    (t1, s1), (t2, s2) = curve.mean()  # the evaluations both seeds have
    assert (t1, t2) == (1.0, 2.0) and (s1, s2) == (pytest.approx(0.3), pytest.approx(0.5))


# -- the command --------------------------------------------------------------------------------

@pytest.mark.slow
def test_prx_ablate_with_a_bench_budget_measures_once_and_sets_phase_steps(tmp_path, fake_run):
    from prx_core.cli import ablate_cmd

    launcher, read_calls = fake_run
    parser = argparse.ArgumentParser()
    ablate_cmd.register(parser.add_subparsers())
    out = tmp_path / "abl"
    argv = ["ablate", str(TINY_RECIPE), "--vary", "multires", "--design", "one-at-a-time", "--budget", "bench:3",
            "--bench-rounds", "1", "--bench-steps", "1", "--bench-max-load", "1000", "--out", str(out),
            "--set", TWO_PHASES[1], "--launcher", " ".join(launcher)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    stored = Throughput.from_json((out / BENCH_FILE).read_text())
    steps = stored.phase_steps()
    calls = {Path(c["dir"]).parent.name: c["sets"] for c in read_calls()}
    assert calls["baseline"][-1] == f"train.phase_steps={list(steps['baseline'])}"
    assert calls["+multires"][-1] == f"train.phase_steps={list(steps['+multires'])}"
    assert len(steps["+multires"]) == 2
    for run in out.glob("runs/*/seed0"):  # as if killed: continued with the stored measurement
        (run / "summary.json").unlink()
    args = parser.parse_args([*argv, "--resume"])
    assert args.func(args) == 0
    assert Throughput.from_json((out / BENCH_FILE).read_text()) == stored
    assert read_calls()[-1]["sets"][-1] == calls["+multires"][-1] and read_calls()[-1]["resume"]
    with pytest.raises(UserError, match="phase_steps"):
        args = parser.parse_args([*argv, "--set", "train.phase_steps=[3]"])
        args.func(args)


def test_a_bench_budget_is_refused_with_the_slurm_executor(capsys):
    argv = ["ablate", str(TINY_RECIPE), "--vary", "cfg", "--budget", "bench:60", "--executor", "slurm", "--plan-only"]
    assert main(argv) == 2
    assert "not where the runs train" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["steps", "wall:60"])
def test_bench_options_without_a_bench_budget_are_refused_not_ignored(budget, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["ablate", str(TINY_RECIPE), "--vary", "cfg", "--budget", budget, "--bench-clock", "cpu", "--bench-rounds",
            "2", "--out", str(out)]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--bench-clock, --bench-rounds set how a bench budget measures each variant's throughput, but --budget is " \
           f"{budget}" in err and "Use --budget bench:SECONDS" in err
    assert not out.exists()


def test_a_stored_cpu_clock_measurement_is_not_continued_on_the_wall_clock(tmp_path):
    registry = discover()
    recipes = {"plain": load_recipe(TINY_RECIPE, [], registry)}
    attempt = Attempt("t", 1.0, 1, 1, 1, (50.0, 50.0), {"plain": (PhaseSpeed("train", 32, 8, 6, (0.1,)),)}, "cpu")
    throughput = Throughput(5.0, 2.0, (attempt,))
    assert throughput.clock == "cpu" and throughput.quiet  # CPU time needs no quiet machine
    (tmp_path / BENCH_FILE).write_text(throughput.to_json())
    assert load_throughput(tmp_path, recipes, registry, 5.0, "cpu") == throughput
    with pytest.raises(UserError, match="clock"):  # continuing with the other clock would mix budgets
        load_throughput(tmp_path, recipes, registry, 5.0, "wall")
