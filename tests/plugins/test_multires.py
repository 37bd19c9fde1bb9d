"""multires: the schedule as plain functions (config -> phases, the problems it names), its
declaration, and its table structured from a recipe into phases by the core."""
from __future__ import annotations

import importlib.metadata

from prx_core.plan import model_config
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.techniques import TechniqueSet
from prx_core.types import Phase, RunContext
from prx_multires import MultiresConfig, PhaseConfig, schedule_phases, schedule_problems
from prx_multires.plugin import prx_register_techniques

PRX = [
    Phase(name="512px", steps=100_000, resolution=512, batch_size=1024),
    Phase(name="1024px", steps=20_000, resolution=1024, batch_size=512, disabled=("repa",)),
]


def _config():
    return MultiresConfig(
        phases=[
            PhaseConfig(name="512px", resolution=512, batch_size=1024, steps=100_000),
            PhaseConfig(name="1024px", resolution=1024, batch_size=512, steps=20_000, disabled=["repa"]),
        ]
    )


def test_config_becomes_phases():
    assert schedule_phases(_config()) == PRX


def test_schedule_problems_name_the_key():
    assert schedule_problems(_config(), 32, ("multires", "repa")) == []
    problems = schedule_problems(_config(), 32, ("multires",))
    assert len(problems) == 1 and "phases[1]" in problems[0] and "'repa'" in problems[0]
    # an ablation without REPA keeps the recipe's [repa] table and its phase-2 "disabled" entry
    assert schedule_problems(_config(), 32, ("multires",), configured=("repa",)) == []
    bad = MultiresConfig(phases=[PhaseConfig(name="x", resolution=500, batch_size=1, steps=1)])
    assert "phases[0] ('x'): resolution 500 must be a positive multiple of the patch size 32" in " ".join(
        schedule_problems(bad, 32, ("multires",)))


def test_phase_values_are_constrained():
    bad = MultiresConfig(phases=[PhaseConfig(name="x", resolution=0, batch_size=0, steps=0),
                                 PhaseConfig(name="x", resolution=32, batch_size=8, steps=1)])
    assert [describe_violation(v) for v in config_problems(bad, ("multires",))] == [
        "[multires] phases[0].resolution = 0: expected an integer >= 1.",
        "[multires] phases[0].batch_size = 0: expected an integer >= 1.",
        "[multires] phases[0].steps = 0: expected an integer >= 1."]
    duplicate = MultiresConfig(phases=[PhaseConfig(name="x", resolution=32, batch_size=8, steps=1)] * 2)
    assert [describe_violation(v) for v in config_problems(duplicate, ("multires",))] == [
        "[multires] phases: names must be distinct, got ['x', 'x']."]
    assert [describe_violation(v) for v in config_problems(MultiresConfig(), ("multires",))] == [
        "[multires] phases = []: expected a non-empty array."]


def test_technique_declaration_and_hook():
    (technique,) = prx_register_techniques()
    assert technique.name == "multires"
    assert technique.effects == ("changes_schedule",)
    assert discover(only=["multires"]).roles("multires") == ("schedule",)
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="prx.plugins")}
    assert entry_points["multires"] == "prx_multires.plugin"
    instance = technique.plugin(_config(), None)
    assert instance.prx_resolution_schedule(recipe=None) == PRX


def test_recipe_table_structures_into_the_schedule(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        'plugins = ["multires"]\n[model]\npreset = "prx-test"\n[multires]\nphases = [\n'
        '  { name = "a", resolution = 32, batch_size = 8, steps = 3 },\n'
        '  { name = "b", resolution = 64, batch_size = 4, steps = 2 },\n]\n'
    )
    recipe = load_recipe(path)
    techniques = TechniqueSet(recipe, discover(), RunContext(recipe=recipe), model_config(recipe, 8))
    ((name, phases),) = techniques.call("prx_resolution_schedule", recipe=recipe)
    assert name == "multires"
    assert [(p.name, p.resolution, p.batch_size, p.steps) for p in phases] == [("a", 32, 8, 3), ("b", 64, 4, 2)]
