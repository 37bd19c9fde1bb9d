"""tread_guidance: self-guidance against a real random-weight denoiser (a dense and a routed
conditional pass, exact ends, determinism), its hook and checks, and its declarations: the
guidance role it shares with cfg and its requirement of tread."""
from __future__ import annotations

import importlib.metadata

import pytest
import torch
from sampling_probe import SMALL, Recorder, inputs

from prx_core.errors import PluginError, RecipeError
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.schema import Recipe, SampleConfig
from prx_core.registry import discover, selection_problems
from prx_core.sampler import sample
from prx_core.techniques import TechniqueSet
from prx_core.types import RunContext
from prx_tread.config import RouteSpan
from prx_tread.router import TreadRouter
from prx_tread_guidance import SAMPLING_STEP, SparseGuidance, TreadGuidanceConfig, sparse_guidance
from prx_tread_guidance.plugin import TreadGuidance, prx_register_techniques

ROUTER = TreadRouter((RouteSpan(1, 2, 0.5),), seed=0, rank=0)


def test_self_guidance_runs_a_dense_and_a_routed_conditional_pass_and_no_unconditional():
    predict, (x_t, t, cond, uncond) = Recorder(), inputs()
    out = SparseGuidance(ROUTER, SMALL.patch, 3.5)(predict, x_t, t, cond, uncond)
    (dense_cond, dense_plan), (routed_cond, routed_plan) = predict.calls
    assert dense_cond is cond and routed_cond is cond
    assert dense_plan == ()
    (route,) = routed_plan
    assert (route.start, route.end) == (1, 2)
    assert torch.equal(route.index, ROUTER.plan(2, (4, 6), SAMPLING_STEP, x_t.device)[0].index)
    dense, routed = predict(x_t, t, cond, ()), predict(x_t, t, cond, routed_plan)
    assert not torch.allclose(dense, routed, atol=1e-3)
    torch.testing.assert_close(out, routed + 3.5 * (dense - routed))


@pytest.mark.parametrize("scale, which", [(1.0, "dense"), (0.0, "routed")])
def test_self_guidance_at_one_is_dense_and_at_zero_is_routed(scale, which):
    predict, (x_t, t, cond, uncond) = Recorder(), inputs()
    out = SparseGuidance(ROUTER, SMALL.patch, scale)(predict, x_t, t, cond, uncond)
    plan = () if which == "dense" else ROUTER.plan(2, (4, 6), SAMPLING_STEP, x_t.device)
    assert torch.equal(out, predict(x_t, t, cond, plan))


def test_sparse_guidance_is_exact_at_both_ends():
    generator = torch.Generator().manual_seed(2)
    dense, routed = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    assert torch.equal(sparse_guidance(dense, routed, 1.0), dense)
    assert torch.equal(sparse_guidance(dense, routed, 0.0), routed)


def test_self_guided_sampling_is_deterministic():
    predict, (x_t, _, cond, uncond) = Recorder(), inputs()
    guidance = SparseGuidance(ROUTER, SMALL.patch, 3.5)
    first = sample(predict, x_t, cond, uncond, steps=3, shift=3.0, guidance=guidance)
    again = sample(predict, x_t, cond, uncond, steps=3, shift=3.0, guidance=guidance)
    assert torch.equal(first, again) and torch.isfinite(first).all()


def test_tread_guidance_hook_uses_the_router_and_the_models_patch():
    plugin = TreadGuidance(TreadGuidanceConfig(), RunContext(recipe=Recipe()))
    guidance = plugin.prx_guidance(SampleConfig(), SMALL, ROUTER)
    assert guidance == SparseGuidance(ROUTER, SMALL.patch, 3.5)
    with pytest.raises(PluginError, match="tread"):
        plugin.prx_guidance(SampleConfig(), SMALL, None)


def test_tread_guidance_rejects_a_negative_scale():
    (problem,) = config_problems(TreadGuidanceConfig(scale=-1.0), ("tread_guidance",))
    assert describe_violation(problem) == "[tread_guidance] scale = -1.0: expected a number >= 0."


def test_the_technique_holds_the_guidance_role_and_requires_tread():
    """The core refuses two active techniques implementing the exclusive prx_guidance (here with
    cfg), and tread_guidance without tread, whose router gives the routed pass."""
    registry = discover(only=["tread", "tread_guidance", "cfg"])
    assert not registry.broken
    (technique,) = prx_register_techniques()
    assert registry.roles("tread_guidance") == ("guidance",)
    assert technique.effects == ("guides_sampling",) and technique.requires == ("tread",)
    (problem,) = selection_problems(["tread", "tread_guidance", "cfg"], registry, "the recipe")
    assert "two guidance techniques: cfg and tread_guidance" in problem
    (missing,) = selection_problems(["tread_guidance"], registry, "the recipe")
    assert "requires tread" in missing
    assert selection_problems(["tread", "tread_guidance"], registry, "the recipe") == []
    with pytest.raises(RecipeError, match="guidance"):
        TechniqueSet(Recipe(plugins=["cfg", "tread", "tread_guidance"]), registry, RunContext(recipe=Recipe()), SMALL)
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="prx.plugins")}
    assert entry_points["tread_guidance"] == "prx_tread_guidance.plugin"
