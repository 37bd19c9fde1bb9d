"""The recipe loader (TOML, extends, --set, strict structuring, error messages) and
``prx recipe show|validate``, with fake techniques so the tests do not depend on the built-in plugins."""
from __future__ import annotations

import functools
import types
from pathlib import Path
from typing import Literal

import attrs
import pytest
import tomllib

from prx_core import cli
from prx_core import registry as plugin_registry
from prx_core.hookspecs import hookimpl
from prx_core.recipe.loader import dump_recipe_toml, load_recipe, recipe_path, recipe_sources, recipe_to_dict
from prx_core.recipe.schema import Recipe
from prx_core.types import Technique

RECIPES = Path(__file__).parents[1] / "fixtures" / "recipes"


@attrs.define(kw_only=True)
class AlphaConfig:
    ratio: float = 0.5
    blocks: tuple[int, int] = (2, 14)
    mode: Literal["a", "b"] = "a"


@attrs.define(kw_only=True)
class GammaConfig:
    weight: float = 1.0


class _Plugin:
    def __init__(self, config, context):
        self.config = config


def _fake_module() -> types.ModuleType:
    module = types.ModuleType("fake_recipe_plugins")

    @hookimpl
    def prx_register_techniques():
        return [
            Technique(name="alpha", plugin=_Plugin, config=AlphaConfig, summary="fake router"),
            Technique(name="beta", plugin=_Plugin, config=None, summary="no settings"),
            Technique(name="gamma", plugin=_Plugin, config=GammaConfig, summary="not selected by fixtures"),
        ]

    module.prx_register_techniques = prx_register_techniques
    return module


FAKE = _fake_module()


@pytest.fixture
def registry() -> plugin_registry.Registry:
    return plugin_registry.discover(only=[], extra_modules=[FAKE])


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``prx ARGS`` as a user runs it, seeing only the fake techniques; returns (code, stdout, stderr).

    Only the commands under test are registered, so these tests do not depend on the other
    command modules."""
    monkeypatch.setattr(plugin_registry, "discover", functools.partial(plugin_registry.discover, only=[], extra_modules=[FAKE]))
    monkeypatch.setattr(cli, "COMMANDS", ("recipe", "plugins"))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _error(run_cli, *args: str) -> str:
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert err.startswith("error: ")
    return err


# --- merging --------------------------------------------------------------------------------


def test_extends_merges_tables_key_by_key_and_replaces_arrays(registry):
    recipe = load_recipe(RECIPES / "grandchild.toml", registry=registry)
    assert recipe.train.steps == 50  # child.toml over base.toml
    assert recipe.train.batch_size == 8  # only in base.toml
    assert recipe.train.log_every == 5  # grandchild.toml
    assert recipe.train.sample_every == 1000  # schema default
    assert recipe.plugins == ["beta", "alpha"]  # replaced, not appended
    assert recipe.techniques["alpha"] == AlphaConfig(ratio=0.25, blocks=(2, 12), mode="b")
    assert recipe.name == "child"
    sources = recipe_sources(recipe)
    assert sources["train.steps"].endswith("child.toml")
    assert sources["train.batch_size"].endswith("base.toml")
    assert sources["plugins"].endswith("grandchild.toml")
    assert "train.sample_every" not in sources
    assert recipe_path(recipe) == RECIPES / "grandchild.toml"


def test_later_extends_entry_overrides_earlier(registry):
    recipe = load_recipe(RECIPES / "two_parents.toml", registry=registry)
    assert recipe.train.steps == 300
    assert recipe.train.batch_size == 8
    assert recipe.name == "two_parents"  # the file's stem when the recipe has no name


def test_set_overrides_win_over_files_and_parse_toml_values(registry):
    recipe = load_recipe(
        RECIPES / "child.toml",
        ["train.steps=7", 'plugins=["alpha","gamma"]', "alpha.blocks=[3, 9]", "text.encoder=org/x", "gamma.weight=2"],
        registry=registry,
    )
    assert recipe.train.steps == 7
    assert recipe.plugins == ["alpha", "gamma"]
    assert recipe.techniques["alpha"].blocks == (3, 9)
    assert recipe.techniques["alpha"].mode == "b"  # untouched key of an overridden table stays
    assert recipe.text.encoder == "org/x"  # not TOML: taken as a bare string
    assert recipe.techniques["gamma"] == GammaConfig(weight=2.0)
    assert recipe_sources(recipe)["train.steps"] == "--set train.steps=7"
    assert recipe.optim.betas == (0.9, 0.99)


def test_technique_configs_selected_unselected_and_without_config(registry, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('plugins = ["beta"]\n[gamma]\nweight = 0.5\n[beta]\n')
    recipe = load_recipe(path, registry=registry)
    assert recipe.techniques == {"beta": None, "gamma": GammaConfig(weight=0.5)}  # gamma: table, not selected
    recipe = load_recipe(path, ['plugins=["alpha"]'], registry=registry)
    assert recipe.techniques["alpha"] == AlphaConfig()  # selected without a table: defaults


def test_dump_round_trips(registry, tmp_path):
    recipe = load_recipe(RECIPES / "grandchild.toml", ["alpha.ratio=0.75"], registry=registry)
    text = dump_recipe_toml(recipe)
    assert tomllib.loads(text) == recipe_to_dict(recipe)
    (tmp_path / "resolved.toml").write_text(text)
    again = load_recipe(tmp_path / "resolved.toml", registry=registry)
    assert recipe_to_dict(again) == recipe_to_dict(recipe)
    assert again.techniques["alpha"].ratio == 0.75
    assert again.model.hidden is None  # None (unset) is left out of the TOML and comes back as the default


def test_recipe_built_in_code_has_no_provenance():
    recipe = Recipe()
    assert recipe_sources(recipe) == {} and recipe_path(recipe) is None


# --- CLI ------------------------------------------------------------------------------------


def test_recipe_show_prints_resolved_toml(run_cli, registry):
    code, out, err = run_cli("recipe", "show", RECIPES / "child.toml", "--set", "train.steps=9")
    assert code == 0, err
    shown = tomllib.loads(out)
    assert shown["train"]["steps"] == 9
    assert shown["alpha"] == {"ratio": 0.25, "blocks": [2, 12], "mode": "b"}
    assert shown == recipe_to_dict(load_recipe(RECIPES / "child.toml", ["train.steps=9"], registry=registry))


def test_recipe_validate_ok(run_cli):
    code, out, err = run_cli("recipe", "validate", RECIPES / "grandchild.toml", "--skip-local-checks")
    assert code == 0, err
    assert "ok (alpha, beta; this machine not checked)" in out


# --- errors: every one exits 2 with file, table and key named -------------------------------


def test_unknown_key_names_file_table_key_and_suggests(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "unknown_key.toml")
    assert "unknown_key.toml: [train] has no setting 'stpes'. Did you mean 'steps'?" in err


def test_wrong_types_all_listed_with_file_key_type_and_value(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "wrong_type.toml")
    assert 'wrong_type.toml: [train] steps = "many": expected an integer.' in err
    assert 'wrong_type.toml: [alpha] ratio = "half": expected a number.' in err


def test_wrong_type_from_set_names_the_option(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "child.toml", "--set", "train.steps=abc")
    assert 'error: --set train.steps=abc: [train] steps = "abc": expected an integer.' in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.betas=[0.9]", "[optim] betas = [0.9]: expected an array of 2 values, each a number"),
        ("plugins=alpha", 'plugins = "alpha": expected an array of strings'),
        ("model.hidden=3.5", "[model] hidden = 3.5: expected an integer"),
        ("train.compile=1", "[train] compile = 1: expected true or false"),
        ("alpha.mode=c", '[alpha] mode = "c": expected one of "a", "b"'),
        ("train=3", "train = 3: expected a table"),
    ],
)
def test_strict_types(run_cli, override, expected):
    err = _error(run_cli, "recipe", "show", RECIPES / "child.toml", "--set", override)
    assert f"--set {override}: {expected}." in err


@pytest.mark.parametrize("override", ["train.steps", "=5", "train..steps=5", "extends=base.toml"])
def test_malformed_set(run_cli, override):
    err = _error(run_cli, "recipe", "show", RECIPES / "child.toml", "--set", override)
    assert f"--set {override}:" in err


def test_missing_recipe_file_lists_nearby_recipes(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "nope.toml")
    assert "recipe file" in err and "nope.toml does not exist" in err and "base.toml" in err


def test_missing_parent_names_both_files(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "missing_parent.toml")
    assert 'missing_parent.toml: extends = "no_such_base.toml", but' in err
    assert "no_such_base.toml does not exist" in err


def test_extends_cycle_names_the_chain(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "cycle_a.toml")
    assert "cycle_b.toml: extends = \"cycle_a.toml\" closes a loop" in err
    assert "cycle_a.toml -> " in err and "cycle_b.toml -> " in err


def test_bad_extends_value(run_cli, tmp_path):
    (tmp_path / "r.toml").write_text("extends = 3\n")
    err = _error(run_cli, "recipe", "show", tmp_path / "r.toml")
    assert "extends = 3: expected a file name or an array of file names" in err


def test_bad_toml_syntax_names_line_and_column(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "bad_syntax.toml")
    assert "bad_syntax.toml:3:14: invalid TOML" in err
    assert "`batch_size = = 8`" in err


def test_unknown_table_lists_tables_and_techniques(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "unknown_table.toml")
    assert "unknown_table.toml: unknown table [trian]. Did you mean 'train'?" in err
    assert "installed: alpha, beta and gamma" in err


def test_unknown_plugin_lists_installed(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "unknown_plugin.toml")
    assert "unknown_plugin.toml: plugins names 'alhpa', which is not an installed technique." in err
    assert "Did you mean 'alpha'?" in err and "alpha, beta and gamma" in err


def test_unknown_preset_lists_presets(run_cli):
    err = _error(run_cli, "recipe", "show", RECIPES / "bad_preset.toml")
    assert "bad_preset.toml: [model] preset = \"prx-tset\": expected one of \"prx-1.2b\"" in err
    assert "Did you mean 'prx-test'?" in err


def test_settings_for_technique_without_config(run_cli, tmp_path):
    (tmp_path / "r.toml").write_text("[beta]\nstrength = 2\n")
    err = _error(run_cli, "recipe", "show", tmp_path / "r.toml")
    assert "[beta] has settings, but technique beta takes none" in err


def test_several_problems_in_one_error(run_cli, tmp_path):
    (tmp_path / "r.toml").write_text('extends = "%s"\nsede = 1\n[train]\nsteps = 1.5\n' % (RECIPES / "base.toml"))
    err = _error(run_cli, "recipe", "show", tmp_path / "r.toml")
    assert "unknown key sede. Did you mean 'seed'?" in err
    assert "[train] steps = 1.5: expected an integer." in err
    assert len(err.strip().split("\n\n")) == 2  # one paragraph per problem
