"""The techniques of one run (prx_core.techniques.TechniqueSet): configs and instances, hook
checks on instances, recipe checks, order-free calls, the hook trace and optimizer claims."""
from __future__ import annotations

import attrs
import pytest
import torch
from fake_techniques import ALPHA, BETA, MOD_AB, PHASE, AlphaConfig, Misspelled, fake_module, fake_registry, fake_set
from torch import nn

from prx_core import registry as plugins
from prx_core.errors import PluginError, PluginFailure, RecipeError, WeightsNotFoundError
from prx_core.hookspecs import hookimpl
from prx_core.techniques import ENV_TRACE
from prx_core.types import OptimizerClaim, Phase, Technique

# --- building the set ---------------------------------------------------------------------------


def test_misspelled_hook_on_an_instance_is_caught():
    """A registry built by hand skips discovery's class checks; the run's manager still refuses."""
    registry = plugins.Registry({"typo": Technique(name="typo", plugin=Misspelled)}, {}, {}, ())
    with pytest.raises(PluginError, match="defines prx_routin, which is not a prx hook.*prx_routing"):
        fake_set(["typo"], registry=registry)


def test_prx_check_recipe_problems_raise():
    with pytest.raises(RecipeError, match=r"alpha: \[alpha\] ratio must be at most 1\."):
        fake_set(["alpha"], alpha=AlphaConfig(ratio=2.0))


class Fragile:
    """Raises in its constructor, or in prx_cost, as its config says; a UserError it means for the user."""

    def __init__(self, config, context):
        if config.where == "constructor":
            raise KeyError("missing")
        self.where = config.where

    @hookimpl
    def prx_cost(self, phase):
        if self.where == "cost":
            return [1 / 0]
        if self.where == "user":
            raise WeightsNotFoundError("Teacher 'x' is not on this machine: download it first.")
        return []


@pytest.mark.parametrize(("where", "words", "line"), [
    ("constructor", "its plugin class's constructor, plugin(config, context): KeyError: 'missing'",
     "raise KeyError(\"missing\")"),
    ("cost", "its hook prx_cost: ZeroDivisionError: division by zero", "return [1 / 0]"),
])
def test_an_exception_in_a_techniques_code_is_a_plugin_failure_naming_it_and_the_hook(where, words, line):
    config = attrs.make_class("FragileConfig", {"where": attrs.field(default="")})
    registry = fake_registry(fake_module("fake_fragile", Technique(name="fragile", plugin=Fragile, config=config)))
    with pytest.raises(PluginFailure) as info:
        fake_set(["fragile"], registry=registry, fragile=config(where=where)).call("prx_cost", phase=PHASE)
    failure = info.value
    assert (failure.technique, failure.exit_code) == ("fragile", 2)
    assert str(failure).startswith(f"technique 'fragile' ({__name__}.Fragile) failed in {words}. This is a fault of "
                                   "the plugin, not of the recipe")
    assert "Traceback (most recent call last):" in failure.details and line in failure.details
    with pytest.raises(WeightsNotFoundError, match="^Teacher 'x' is not on this machine"):  # the plugin's own message
        fake_set(["fragile"], registry=registry, fragile=config(where="user")).call("prx_cost", phase=PHASE)


# --- TechniqueSet: calls --------------------------------------------------------------------


def test_instances_get_recipe_config_or_default():
    techniques = fake_set(["alpha", "beta"], alpha=AlphaConfig(ratio=0.1))
    assert techniques.instances["alpha"].config == AlphaConfig(ratio=0.1)
    assert fake_set(["alpha"]).instances["alpha"].config == AlphaConfig()


def test_call_order_and_arguments_do_not_depend_on_registration_or_recipe_order():
    forward = fake_set(["alpha", "beta"], registry=fake_registry(MOD_AB))
    backward = fake_set(
        ["beta", "alpha"], registry=fake_registry(fake_module("fake_b", BETA), fake_module("fake_a", ALPHA))
    )
    expected = [("alpha", ("alpha", "p", 0.5)), ("beta", ("beta", "cfg"))]
    assert forward.call("prx_cost", phase=PHASE, model_config="cfg", text_tokens=8) == expected
    assert backward.call("prx_cost", phase=PHASE, model_config="cfg", text_tokens=8) == expected
    # pluggy's own call order is reverse registration order; ours ignores it
    assert [r[0] for r in forward.pm.hook.prx_cost(phase=PHASE, model_config="cfg", text_tokens=8)] == ["beta", "alpha"]


def test_call_skips_disabled_techniques_and_drops_none():
    techniques = fake_set(["alpha", "beta"])
    off = Phase(name="hi", steps=1, resolution=64, batch_size=1, disabled=("alpha",))
    assert techniques.call("prx_cost", phase=off, model_config="m", text_tokens=8) == [("beta", ("beta", "m"))]
    assert techniques.call("prx_state_dict") == []
    with pytest.raises(ValueError, match="unknown hook"):
        techniques.call("prx_routin")


def test_trace_records_hooks_and_logs_with_prx_trace(monkeypatch):
    lines: list[str] = []
    monkeypatch.setenv(ENV_TRACE, "1")
    techniques = fake_set(["alpha", "gamma"], log=lines.append)
    techniques.trace.clear()
    techniques.call("prx_guidance", sample_config=None, model_config=None, router=None)
    techniques.call("prx_state_dict")
    techniques.trace.record("route", "keep=0.5", "alpha", step=3)
    assert techniques.trace.events == [
        (None, "hook", "prx_guidance", "gamma"),
        (None, "hook", "prx_state_dict", "alpha"),
        (3, "route", "keep=0.5", "alpha"),
    ]
    assert lines[-1] == "trace: step 3 route keep=0.5 [alpha]"
    monkeypatch.delenv(ENV_TRACE)
    quiet: list[str] = []
    fake_set(["alpha"], log=quiet.append).call("prx_state_dict")
    assert quiet == []


# --- optimizer claims -----------------------------------------------------------------------


def _claim(owner: str, model: nn.Module, names: list[str]) -> tuple[str, OptimizerClaim]:
    params = dict(model.named_parameters())
    chosen = tuple((name, params[name]) for name in names)
    return owner, OptimizerClaim(owner=owner, params=chosen, build=lambda p: torch.optim.SGD(p, lr=0.1))


def test_check_claims():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    techniques = fake_set(["alpha", "beta"])
    techniques.check_claims([_claim("alpha", model, ["0.weight"]), _claim("beta", model, ["1.weight"])], model)
    with pytest.raises(RecipeError, match="parameter '0.weight' is claimed by both alpha and beta"):
        techniques.check_claims([_claim("beta", model, ["0.weight"]), _claim("alpha", model, ["0.weight"])], model)
    stranger = nn.Parameter(torch.zeros(1))
    foreign = ("alpha", OptimizerClaim(owner="alpha", params=(("extra.w", stranger),), build=torch.optim.SGD))
    with pytest.raises(RecipeError, match="alpha claims 'extra.w', which is not a parameter of the model"):
        techniques.check_claims([foreign], model)
