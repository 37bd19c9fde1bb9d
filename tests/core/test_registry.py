"""Discovery and the selection checks (prx_core.registry): plugins found through entry points
(broken ones isolated, PRX_PLUGINS), declaration checks, exclusive hooks, conflicts and
requirements refused before anything is built, and ``prx plugins``."""
from __future__ import annotations

import json
import textwrap
import types

import pytest
from fake_techniques import (
    ALPHA,
    BETA,
    MOD_AB,
    MOD_REST,
    MODEL,
    PHASE,
    Misspelled,
    Plain,
    fake_module,
    fake_registry,
    fake_set,
)

from prx_core import cli, hookspecs
from prx_core import registry as plugins
from prx_core.errors import RecipeError
from prx_core.hookspecs import hookimpl
from prx_core.recipe.loader import load_recipe
from prx_core.techniques import TechniqueSet
from prx_core.types import RunContext, Technique

# --- discovery through real entry points ----------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A distribution 'fakeprx' 1.2.3 on sys.path with three entry points: one good, one whose
    import fails, one with a hook asking for an argument the hook does not pass."""
    root = tmp_path_factory.mktemp("site")
    (root / "fakeprx_good.py").write_text(
        textwrap.dedent(
            """
            from prx_core.hookspecs import hookimpl
            from prx_core.types import Technique

            class Good:
                def __init__(self, config, context):
                    pass

                @hookimpl
                def prx_cost(self, phase):
                    return []

            @hookimpl
            def prx_register_techniques():
                return [Technique(name="good_technique", plugin=Good, summary="works", effects=("loss_term:good",),
                                  conflicts=("rival",), requires=("helper",))]
            """
        )
    )
    (root / "fakeprx_boom.py").write_text('raise ImportError("needs libfoo")\n')
    (root / "fakeprx_badsig.py").write_text(
        "from prx_core.hookspecs import hookimpl\n\n@hookimpl\ndef prx_register_techniques(recipe):\n    return []\n"
    )
    dist = root / "fakeprx-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeprx\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[prx.plugins]\ngood = fakeprx_good\nboom = fakeprx_boom\nbadsig = fakeprx_badsig\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield


def test_discover_isolates_broken_plugins(installed):
    registry = plugins.discover(only=["good", "boom", "badsig"])
    assert list(registry.techniques) == ["good_technique"]
    assert registry.origins["good_technique"] == ("good", "fakeprx_good", "1.2.3")
    assert registry.hooks_by_technique["good_technique"] == ("prx_cost",)
    broken = {b.entry_point: b for b in registry.broken}
    assert set(broken) == {"boom", "badsig"}
    assert broken["boom"].module == "fakeprx_boom" and "ImportError: needs libfoo" in broken["boom"].error
    assert "prx_register_techniques asks for recipe, which the hook does not pass" in broken["badsig"].error


def test_prx_plugins_env_restricts_loading(installed, monkeypatch):
    monkeypatch.setenv(plugins.ENV_ONLY, "good")
    registry = plugins.discover()
    assert list(registry.techniques) == ["good_technique"] and registry.broken == ()
    monkeypatch.setenv(plugins.ENV_ONLY, "")
    assert plugins.discover() == plugins.Registry({}, {}, {}, ())
    monkeypatch.setenv(plugins.ENV_ONLY, " good , goood")
    registry = plugins.discover()
    assert list(registry.techniques) == ["good_technique"]
    [missing] = registry.broken
    assert missing.entry_point == "goood" and "Did you mean 'good'?" in missing.error


def test_prx_plugins_command(installed, monkeypatch, capsys):
    """Each technique with what it declares and implements; a broken plugin listed with its error
    and the exit code 2, so that a CI job fails on a broken installation."""
    monkeypatch.setattr(cli, "COMMANDS", ("plugins",))
    monkeypatch.setenv(plugins.ENV_ONLY, "good")
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "good_technique  (good -> fakeprx_good 1.2.3)" in out
    assert "effects: loss_term:good" in out and "conflicts: rival" in out and "requires: helper" in out
    assert "hooks: prx_cost" in out and "Failed to load" not in out
    monkeypatch.setenv(plugins.ENV_ONLY, "good,boom")
    assert cli.main(["plugins"]) == 2
    assert "boom (fakeprx_boom): ImportError: needs libfoo" in capsys.readouterr().out
    assert cli.main(["plugins", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["techniques"][0]["effects"] == ["loss_term:good"]
    assert report["techniques"][0]["conflicts"] == ["rival"] and report["techniques"][0]["requires"] == ["helper"]
    assert report["techniques"][0]["name"] == "good_technique" and report["techniques"][0]["version"] == "1.2.3"
    assert report["broken"] == [
        {"entry_point": "boom", "module": "fakeprx_boom", "error": "ImportError: needs libfoo"}
    ]


# --- declaration checks at discovery --------------------------------------------------------


class Unmarked:
    def __init__(self, config, context):
        pass

    def prx_routing(self, phase):  # no @hookimpl: pluggy would ignore it silently
        return None


class WrongArgument:
    def __init__(self, config, context):
        pass

    @hookimpl
    def prx_routing(self, phase, stepp):
        return None


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (
            Misspelled,
            "defines prx_routin, which is not a prx hook (see prx_core/hookspecs.py). Did you mean 'prx_routing'?",
        ),
        (Unmarked, "defines prx_routing without @hookimpl"),
        (WrongArgument, "prx_routing asks for stepp, which the hook does not pass (it passes: phase and model_config)"),
    ],
)
def test_bad_plugin_class_is_broken_and_others_survive(plugin, message):
    module = fake_module("fake_bad", Technique(name="bad", plugin=plugin), ALPHA)
    registry = fake_registry(module, fake_module("fake_ok", BETA))
    assert sorted(registry.techniques) == ["alpha", "beta"]
    [broken] = registry.broken
    assert broken.module == "fake_bad" and message in broken.error


def test_unknown_module_level_hook_and_bad_returns():
    typo = types.ModuleType("fake_typo")
    typo.prx_register_technique = hookimpl(lambda: [ALPHA])
    not_list = types.ModuleType("fake_dict")
    not_list.prx_register_techniques = hookimpl(lambda: {"alpha": ALPHA})
    bad_name = fake_module("fake_name", Technique(name="train", plugin=Plain))
    bad_effect = fake_module("fake_effect", Technique(name="effect", plugin=Plain, effects=("loss:effect",)))
    unnamed = fake_module("fake_unnamed", Technique(name="unnamed", plugin=Plain, effects=("loss_term",)))
    raises = types.ModuleType("fake_raise")

    def crash():
        raise RuntimeError("kaput")

    raises.prx_register_techniques = hookimpl(crash)
    registry = fake_registry(typo, not_list, bad_name, bad_effect, unnamed, raises, MOD_AB)
    errors = {b.module: b.error for b in registry.broken}
    assert "Did you mean 'prx_register_techniques'?" in errors["fake_typo"]
    assert "must return a list of prx_core.types.Technique" in errors["fake_dict"]
    assert "has the name of a core recipe key" in errors["fake_name"]
    assert "technique 'effect': unknown effect kind 'loss'" in errors["fake_effect"]
    assert "technique 'unnamed': effect 'loss_term' must be written 'loss_term:<name>'" in errors["fake_unnamed"]
    assert "raised RuntimeError: kaput" in errors["fake_raise"]
    assert sorted(registry.techniques) == ["alpha", "beta"]


def test_name_clash_marks_both_providers_broken():
    registry = fake_registry(MOD_AB, fake_module("fake_other", Technique(name="alpha", plugin=Plain)), MOD_REST)
    assert "alpha" not in registry.techniques and "beta" in registry.techniques
    clash = {b.module: b.error for b in registry.broken}
    assert set(clash) == {"fake_ab", "fake_other"}
    assert all("technique name clash: 'alpha' is provided by fake_ab and fake_other" in e for e in clash.values())


def test_a_third_party_taking_a_built_in_name_is_the_broken_one_and_the_built_in_keeps_working(tmp_path):
    """Discovery through the real entry points: prx's own "cfg" and a third party's module that
    registers a "cfg" of its own."""
    impostor = fake_module("prx_impostor", Technique(name="cfg", plugin=Plain), ALPHA)
    registry = plugins.discover(only=["cfg"], extra_modules=[impostor])
    assert registry.origins["cfg"][:2] == ("cfg", "prx_cfg.plugin") and registry.techniques["cfg"].config is not None
    assert "alpha" in registry.techniques  # the impostor's other technique still loads
    [broken] = registry.broken
    assert broken.module == "prx_impostor"
    assert broken.error.startswith("technique name clash: 'cfg' is prx's built-in technique (prx_cfg.plugin); this "
                                   "plugin's technique of that name is not loaded. Rename it")
    (tmp_path / "r.toml").write_text('plugins = ["cfg"]\n[cfg]\nscale = 2.0\n')
    recipe = load_recipe(tmp_path / "r.toml", registry=registry)
    techniques = TechniqueSet(recipe, registry, RunContext(recipe=recipe), MODEL)
    _, guidance = techniques.call_one("prx_guidance", sample_config=recipe.sample, model_config=MODEL, router=None)
    assert type(guidance).__module__ == "prx_cfg.guidance" and guidance.scale == 2.0


def test_a_name_the_core_uses_is_refused_at_discovery():
    registry = fake_registry(
        fake_module("fake_term", Technique(name="term", plugin=Plain, effects=("loss_term:diffusion",))),
        fake_module("fake_optimizer", Technique(name="opt", plugin=Plain, effects=("optimizer:adamw",))), MOD_AB)
    errors = {b.module: b.error for b in registry.broken}
    assert errors == {
        "fake_term": "technique 'term' declares loss_term:diffusion, a name the core uses itself; choose another name",
        "fake_optimizer": "technique 'opt' declares optimizer:adamw, a name the core uses itself; choose another name"}


class Inert:
    def __init__(self, config, context):
        pass


def test_two_techniques_declaring_one_loss_term_are_refused_at_validation_naming_both(tmp_path):
    module = fake_module("fake_terms", *(Technique(name=name, plugin=Inert, effects=effects) for name, effects in (
        ("left", ("loss_term:perceptual",)), ("right", ("loss_term:perceptual", "adds_module:head")),
        ("third", ("adds_module:head",)), ("fine", ("loss_term:fine",)))))
    registry = fake_registry(module)
    (tmp_path / "r.toml").write_text('plugins = ["right", "left", "fine"]\n')
    recipe = load_recipe(tmp_path / "r.toml", registry=registry)
    with pytest.raises(RecipeError) as info:
        TechniqueSet(recipe, registry, RunContext(recipe=recipe), MODEL)
    assert str(info.value) == (
        f"{tmp_path / 'r.toml'}: plugins selects left and right, which both add a loss term named 'perceptual' (each "
        "declares loss_term:perceptual); one would hide the other: keep one, or rename one technique's.")
    with pytest.raises(RecipeError, match=r"selects right and third, which both attach a module named 'head'"):
        fake_set(["right", "third"], registry=registry)
    assert fake_set(["left", "fine", "third"], registry=registry).names == ("fine", "left", "third")


# --- TechniqueSet: selection checks ---------------------------------------------------------


def test_implementing_an_exclusive_hook_is_the_role_and_two_holders_are_refused(tmp_path):
    registry = fake_registry()
    assert hookspecs.EXCLUSIVE == {"prx_resolution_schedule": "schedule", "prx_routing": "routing",
                                   "prx_guidance": "guidance"}
    assert registry.roles("beta") == registry.roles("gamma") == ("guidance",) and registry.roles("alpha") == ()
    (tmp_path / "r.toml").write_text('plugins = ["gamma", "beta"]\n')
    recipe = load_recipe(tmp_path / "r.toml", registry=registry)
    with pytest.raises(RecipeError, match=r"r\.toml: plugins selects two guidance techniques: beta and gamma; keep one "
                                          r"\(at most one technique may implement prx_guidance\)"):
        TechniqueSet(recipe, registry, RunContext(recipe=recipe), MODEL)
    # the one holder answers alone; a hook that is not exclusive is not called this way
    assert fake_set(["alpha", "beta"]).call_one("prx_guidance", sample_config=None, model_config=None,
                                            router=None) == ("beta", "beta-guidance")
    assert fake_set(["alpha"]).call_one("prx_guidance", sample_config=None, model_config=None, router=None) == ("", None)
    with pytest.raises(ValueError, match="prx_cost is not an exclusive hook"):
        fake_set(["alpha"]).call_one("prx_cost", phase=PHASE, model_config=None, text_tokens=8)


def test_declared_conflict_and_missing_requirement():
    with pytest.raises(RecipeError, match=r"selects delta and alpha, which cannot be used together \(delta declares a"):
        fake_set(["alpha", "delta"])
    with pytest.raises(RecipeError, match='epsilon requires alpha; add "alpha" to plugins'):
        fake_set(["epsilon"])
    assert fake_set(["epsilon", "alpha"]).names == ("alpha", "epsilon")


def test_unknown_technique_lists_installed_and_broken():
    broken = types.ModuleType("fake_broken")
    broken.prx_register_techniques = hookimpl(lambda: "nonsense")
    with pytest.raises(RecipeError) as info:
        fake_set(["alhpa"], registry=fake_registry(MOD_AB, broken))
    message = str(info.value)
    assert message.startswith("the recipe: plugins names 'alhpa', which is not an installed technique.")
    assert "Did you mean 'alpha'?" in message and "Installed techniques: alpha and beta." in message
    assert "Plugin 'fake_broken' (fake_broken) failed to load: prx_register_techniques must return" in message
