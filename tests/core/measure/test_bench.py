"""``prx bench``: which plugin combinations it times, the default shape, and a run on the tiny
recipe that writes the table and a JSON file ``prx cost --measured`` reads."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from prx_core.cli import bench_cmd
from prx_core.errors import UserError
from prx_core.measure.bench import BenchShape, Combo, default_shape, plugin_combos
from prx_core.measure.cost import load_measurements
from prx_core.recipe.loader import load_recipe
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry, discover
from prx_core.testing import TINY_RECIPE
from prx_core.types import Technique

ROOT = Path(__file__).resolve().parents[3]


def registry_of(*techniques: Technique) -> Registry:
    return Registry({t.name: t for t in techniques}, {}, {}, ())


def test_each_technique_that_changes_the_step_gets_a_row_with_what_it_requires():
    registry = registry_of(
        Technique("align", object, effects=("loss_term:align",), requires=("route",)),
        Technique("route", object, effects=("routes_tokens",)),
        Technique("guide", object, effects=("guides_sampling",), requires=("route",)),
        Technique("phases", object, effects=("changes_schedule",)),
    )
    recipe = Recipe(plugins=["phases", "guide", "route", "align"])
    assert plugin_combos(recipe, registry) == [
        Combo("baseline", ()),
        Combo("+align", ("align", "route")),
        Combo("+route", ("route",)),
        Combo("full", ("align", "guide", "phases", "route")),
    ]
    assert plugin_combos(recipe, registry, ["full"]) == [Combo("full", ("align", "guide", "phases", "route"))]
    with pytest.raises(UserError, match="unknown fastest"):
        plugin_combos(recipe, registry, ["fastest"])


def test_a_row_equal_to_the_full_recipe_is_not_repeated():
    registry = registry_of(Technique("route", object, effects=("routes_tokens",)))
    assert plugin_combos(Recipe(plugins=["route"]), registry) == [Combo("baseline", ()), Combo("full", ("route",))]


def test_the_default_shape_is_the_first_phase_on_one_device_with_accumulation_up_to_its_global_batch():
    registry = discover()
    recipe = load_recipe(ROOT / "recipes" / "speedrun.toml", (), registry)
    assert default_shape(recipe, registry) == BenchShape(512, 32, 32)
    assert default_shape(recipe, registry, resolution=1024) == BenchShape(1024, 32, 16)
    assert default_shape(recipe, registry, accumulation=1) == BenchShape(512, 32, 1)


def prx_bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def test_prx_bench_on_the_tiny_recipe_writes_a_table_and_json_with_the_baseline(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = prx_bench(str(TINY_RECIPE), "--set", 'plugins=["tread", "repa"]', "--set", "repa.block=1",
                     "--set", "repa.teacher=hf:/nowhere/dinov3", "--steps", "1", "--warmup", "1", "--out", str(out))
    assert code == 0
    printed = capsys.readouterr().out
    assert "training step" in printed and "baseline" in printed and str(out) in printed
    data = json.loads(out.read_text())
    assert data["shape"] == {"resolution": 32, "micro_batch": 8, "accumulation": 1}
    rows = {r["combo"]: r for r in data["results"]}
    assert list(rows) == ["baseline", "+repa", "+tread", "full"]
    base, tread = rows["baseline"], rows["+tread"]
    assert base["ratio"] == 1.0 and base["plugins"] == [] and base["images_per_s"] > 0
    assert tread["plugins"] == ["tread"]
    assert tread["ratio"] == pytest.approx(tread["images_per_s"] / base["images_per_s"])
    assert tread["denoiser_tflop_per_image"] < base["denoiser_tflop_per_image"]  # routing's cost hook
    assert set(base["optimizer_ms"]) == {"adamw"} and base["peak_mem_mb"] is None  # CPU
    assert base["host_syncs"] == 0 and tread["host_syncs"] == 0
    for failed in (rows["+repa"], rows["full"]):  # no teacher weights here: a row says so, the others run
        assert "/nowhere/dinov3" in failed["failed"] and "images_per_s" not in failed
    measured = load_measurements(out)  # what `prx cost --measured` reads
    assert sorted((m.resolution, sorted(m.plugins)) for m in measured) == [(32, []), (32, ["tread"])]
