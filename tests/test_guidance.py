"""TREAD self-guidance and classifier-free guidance: the combination rules and their plugins."""
from __future__ import annotations

import importlib.metadata

import pytest
import torch

from prx_cfg.config import CFGConfig
from prx_cfg.guidance import ClassifierFreeGuidance, classifier_free, in_interval
from prx_cfg.plugin import CFG
from prx_cfg.plugin import prx_register_techniques as cfg_techniques
from prx_core.errors import PluginError
from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.schema import Recipe, SampleConfig
from prx_core.sampler import sample
from prx_core.types import Conditioning, RunContext
from prx_tread.config import RouteSpan
from prx_tread.router import TreadRouter
from prx_tread_guidance import SAMPLING_STEP, SparseGuidance, TreadGuidanceConfig, sparse_guidance
from prx_tread_guidance.plugin import TreadGuidance
from prx_tread_guidance.plugin import prx_register_techniques as tread_techniques

SMALL = DenoiserConfig(hidden=32, depth=4, heads=2, mlp_ratio=2.0, patch=4, bottleneck=16, text_dim=8)
ROUTER = TreadRouter((RouteSpan(1, 2, 0.5),), seed=0, rank=0)


class Recorder:
    """A real (random-weight) denoiser behind the sampler's ``predict``, recording each call."""

    def __init__(self):
        self.model = PRXDenoiser(SMALL)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        self.calls = []

    def __call__(self, x_t, t, cond, plan):
        self.calls.append((cond, plan))
        return self.model(x_t, t, cond.tokens, cond.mask, route=plan)[0]


def inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(batch, 3, 16, 24, generator=generator)
    t = torch.full((batch,), 0.6)
    text = torch.randn(batch, 5, SMALL.text_dim, generator=generator)
    cond = Conditioning(text, torch.ones(batch, 5, dtype=torch.bool))
    uncond = Conditioning(torch.zeros(batch, 5, SMALL.text_dim), torch.tensor([[True] + [False] * 4] * batch))
    return x_t, t, cond, uncond


# --- self-guidance -------------------------------------------------------------------------


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
    bad = TreadGuidance(TreadGuidanceConfig(scale=-1.0), RunContext(recipe=Recipe()))
    (problem,) = bad.prx_check_recipe()
    assert problem.startswith("scale = -1.0")


# --- classifier-free guidance --------------------------------------------------------------


@pytest.mark.parametrize("scale, which", [(1.0, "cond"), (0.0, "uncond")])
def test_cfg_at_one_is_conditional_and_at_zero_unconditional(scale, which):
    predict, (x_t, t, cond, uncond) = Recorder(), inputs()
    out = ClassifierFreeGuidance(scale)(predict, x_t, t, cond, uncond)
    assert [c for c, _ in predict.calls] == [cond, uncond] and all(p == () for _, p in predict.calls)
    assert torch.equal(out, predict(x_t, t, cond if which == "cond" else uncond, ()))


def test_cfg_extrapolates_from_the_unconditional_prediction():
    predict, (x_t, t, cond, uncond) = Recorder(), inputs()
    out = ClassifierFreeGuidance(4.0)(predict, x_t, t, cond, uncond)
    c, u = predict(x_t, t, cond, ()), predict(x_t, t, uncond, ())
    assert not torch.allclose(c, u, atol=1e-3)
    torch.testing.assert_close(out, u + 4.0 * (c - u))
    assert torch.equal(classifier_free(c, u, 1.0), c) and torch.equal(classifier_free(c, u, 0.0), u)


def test_cfg_guides_only_inside_its_interval():
    predict, (x_t, _, cond, uncond) = Recorder(), inputs(batch=2)
    x_t = torch.cat([x_t, x_t])
    cond = Conditioning(torch.cat([cond.tokens] * 2), torch.cat([cond.mask] * 2))
    uncond = Conditioning(torch.cat([uncond.tokens] * 2), torch.cat([uncond.mask] * 2))
    t = torch.tensor([0.05, 0.2, 0.8, 0.95])
    out = ClassifierFreeGuidance(4.0, (0.2, 0.8))(predict, x_t, t, cond, uncond)
    assert in_interval(t, (0.2, 0.8)).tolist() == [False, True, True, False]
    c, u = predict(x_t, t, cond, ()), predict(x_t, t, uncond, ())
    torch.testing.assert_close(out[1:3], (u + 4.0 * (c - u))[1:3])
    assert torch.equal(out[[0, 3]], c[[0, 3]])


def test_cfg_hook_and_value_checks():
    plugin = CFG(CFGConfig(scale=2.5, interval=(0.1, 0.9)), RunContext(recipe=Recipe()))
    assert plugin.prx_guidance(SampleConfig(), SMALL, None) == ClassifierFreeGuidance(2.5, (0.1, 0.9))
    assert plugin.prx_check_recipe() == []
    assert CFGConfig() == CFGConfig(scale=4.0, interval=(0.0, 1.0))
    bad = CFG(CFGConfig(scale=float("inf"), interval=(0.9, 0.1)), RunContext(recipe=Recipe()))
    problems = bad.prx_check_recipe()
    assert len(problems) == 2 and problems[0].startswith("scale = inf") and problems[1].startswith("interval")


# --- declarations --------------------------------------------------------------------------


def test_both_guidance_techniques_hold_the_guidance_role():
    """The core refuses two active techniques implementing the exclusive prx_guidance."""
    from prx_core.registry import discover

    registry = discover(only=["tread_guidance", "cfg"])
    techniques = {t.name: t for t in [*tread_techniques(), *cfg_techniques()]}
    for name in ("tread_guidance", "cfg"):
        assert registry.roles(name) == ("guidance",)
        assert techniques[name].effects == ("guides_sampling",)
    assert techniques["cfg"].requires == () and techniques["tread_guidance"].requires == ("tread",)
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="prx.plugins")}
    assert entry_points["cfg"] == "prx_cfg.plugin"


def test_the_plugin_manager_refuses_two_guidance_techniques():
    from prx_core.errors import RecipeError
    from prx_core.registry import discover, selection_problems
    from prx_core.techniques import TechniqueSet

    registry = discover(only=["tread", "tread_guidance", "cfg"])
    assert not registry.broken
    (problem,) = selection_problems(["tread", "tread_guidance", "cfg"], registry, "the recipe")
    assert "guidance" in problem and "cfg" in problem and "tread_guidance" in problem
    (missing,) = selection_problems(["tread_guidance"], registry, "the recipe")
    assert "requires tread" in missing
    assert selection_problems(["tread", "tread_guidance"], registry, "the recipe") == []
    with pytest.raises(RecipeError, match="guidance"):
        TechniqueSet(Recipe(plugins=["cfg", "tread", "tread_guidance"]), registry, RunContext(recipe=Recipe()), SMALL)
