"""cfg: classifier-free guidance against a real random-weight denoiser (the ends, the extrapolation,
the interval), its hook and checks, and its declaration."""
from __future__ import annotations

import importlib.metadata

import pytest
import torch
from sampling_probe import SMALL, Recorder, inputs

from prx_cfg import CFGConfig, ClassifierFreeGuidance, classifier_free, in_interval
from prx_cfg.plugin import CFG, prx_register_techniques
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.schema import Recipe, SampleConfig
from prx_core.registry import discover
from prx_core.types import Conditioning, RunContext


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
    assert config_problems(plugin.config) == []
    assert CFGConfig() == CFGConfig(scale=4.0, interval=(0.0, 1.0))
    problems = [describe_violation(v) for v in config_problems(CFGConfig(scale=float("inf"), interval=(0.9, 0.1)),
                                                                ("cfg",))]
    assert problems[0] == "[cfg] scale = inf: expected a finite number."
    assert problems[1].startswith("[cfg] interval = [0.9, 0.1]: t_lo must not exceed t_hi")
    assert [describe_violation(v) for v in config_problems(CFGConfig(interval=(0.0, 1.5)), ("cfg",))] == [
        "[cfg] interval[1] = 1.5: expected a number in [0, 1]."]


def test_the_technique_holds_the_guidance_role():
    registry = discover(only=["cfg"])
    (technique,) = prx_register_techniques()
    assert registry.roles("cfg") == ("guidance",)
    assert technique.effects == ("guides_sampling",) and technique.requires == ()
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="prx.plugins")}
    assert entry_points["cfg"] == "prx_cfg.plugin"
