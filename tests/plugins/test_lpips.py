"""lpips: the plain distance against the lpips package and a direct computation, the per-step loss
(weight, noise gate, gradient only through the prediction), and the plugin's hooks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prx_core.errors import WeightsNotFoundError
from prx_core.model.config import DenoiserConfig
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.schema import Recipe
from prx_core.teachers import QUICKSTART_FEATURE_NETWORK, load_teacher, teacher_forward_flops
from prx_core.types import Phase, RunContext, StepTensors
from prx_lpips import LpipsConfig, downsampled_size, lpips_distance
from prx_lpips.plugin import Lpips, prx_register_techniques
from prx_lpips.term import LpipsTerm

MODEL = DenoiserConfig(hidden=32, depth=4, heads=2, mlp_ratio=2.0, patch=8, bottleneck=16, text_dim=8)


def images(batch: int = 4, side: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def step_of(x0: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor) -> StepTensors:
    return StepTensors(x0, x0, t, x0_hat, {}, (), MODEL.patch, 0)


def half(x: torch.Tensor, antialias: bool = False) -> torch.Tensor:
    """PRX's LPIPS input (algorithm/lpips.py): bilinear at scale 0.5, without antialias by default."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=antialias)


def context(lines: list[str]) -> RunContext:
    return RunContext(Recipe(), log=lines.append)


# --- plain functions ------------------------------------------------------------------------------


def test_lpips_distance_with_the_calibrated_heads_equals_the_lpips_package(random_lpips_vgg):
    path, reference = random_lpips_vgg
    teacher = load_teacher(f"lpips:vgg@{path}")
    x, y = images(2, 32, seed=1), images(2, 32, seed=2)
    ours = lpips_distance(teacher.stages((x + 1) / 2), teacher.stages((y + 1) / 2), list(teacher.stage_weights))
    with torch.no_grad():
        expected = reference(x, y).flatten()
    assert ours.shape == (2,)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_lpips_distance_with_uniform_weights_sums_two_minus_two_cosines():
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 8, 6, 6), (2, 16, 3, 3)]
    fx = [torch.randn(s, generator=generator) for s in shapes]
    fy = [torch.randn(s, generator=generator) for s in shapes]
    expected = sum((2 - 2 * F.cosine_similarity(a, b, dim=1)).mean(dim=(1, 2)) for a, b in zip(fx, fy))
    torch.testing.assert_close(lpips_distance(fx, fy), expected)
    torch.testing.assert_close(lpips_distance(fx, fx), torch.zeros(2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw, expected", [((64, 64), (32, 32)), ((512, 256), (256, 128)), ((16, 16), (16, 16)),
                                          ((48, 96), (32, 64))])
def test_downsampled_size_keeps_a_minimum_short_side(hw, expected):
    assert downsampled_size(hw, 0.5, 32) == expected


# --- the per-step loss ----------------------------------------------------------------------------


def test_lpips_term_is_weighted_gated_lpips_with_gradient_through_the_prediction_only(random_lpips_vgg):
    path, reference = random_lpips_vgg
    teacher = load_teacher(f"lpips:vgg@{path}")
    x0 = images(seed=1).requires_grad_(True)
    x0_hat = images(seed=2).requires_grad_(True)
    t = torch.tensor([0.1, 0.9, 0.5, 0.2])
    term = LpipsTerm(teacher, weight=0.1, scale=0.5, min_side=32, gate_t_clean=0.3)
    value = term(step_of(x0, x0_hat, t))["lpips"]
    with torch.no_grad():
        per_sample = reference(half(x0_hat), half(x0)).flatten()
    torch.testing.assert_close(value, 0.1 * (per_sample * torch.tensor([1.0, 0.0, 1.0, 1.0])).mean(), rtol=1e-4,
                               atol=1e-7)
    value.backward()
    assert x0.grad is None and all(p.grad is None for p in teacher.parameters())
    per_sample_grad = x0_hat.grad.abs().sum(dim=(1, 2, 3))
    assert per_sample_grad[1] == 0 and (per_sample_grad[[0, 2, 3]] > 0).all()


def test_lpips_resize_switch_filters_before_halving_only_when_asked(random_lpips_vgg):
    path, reference = random_lpips_vgg
    teacher = load_teacher(f"lpips:vgg@{path}")
    x0, x0_hat, t = images(seed=1), images(seed=2), torch.zeros(4)
    values = {}
    for resize in ("bilinear", "bilinear-antialias"):
        values[resize] = LpipsTerm(teacher, 1.0, 0.5, 32, 0.0, resize=resize)(step_of(x0, x0_hat, t))["lpips"]
        with torch.no_grad():
            antialias = resize == "bilinear-antialias"
            expected = reference(half(x0_hat, antialias), half(x0, antialias)).mean()
        torch.testing.assert_close(values[resize], expected, rtol=1e-4, atol=1e-7)
    assert abs(values["bilinear"] - values["bilinear-antialias"]) > 1e-4
    assert LpipsConfig().resize == "bilinear"


# --- the plugin's hooks ---------------------------------------------------------------------------


def test_registration_declares_the_loss_term_with_the_recipe_defaults():
    (technique,) = prx_register_techniques()
    assert (technique.name, technique.plugin, technique.config) == ("lpips", Lpips, LpipsConfig)
    assert technique.effects == ("loss_term:lpips",)
    config = LpipsConfig()
    assert (config.teacher, config.weight, config.scale, config.min_side, config.gate_t_clean) == (
        "lpips:vgg", 0.1, 0.5, 32, 0.0)


def test_check_recipe_rejects_a_vit_and_bad_values():
    assert Lpips(LpipsConfig(), context([])).prx_check_recipe() == []
    problems = Lpips(LpipsConfig(teacher="hf:facebook/dinov2-base"), context([])).prx_check_recipe()
    assert len(problems) == 1 and "is a ViT" in problems[0]
    bad = LpipsConfig(scale=0.0, gate_t_clean=1.5, min_side=0, weight=-1.0)
    assert [describe_violation(v) for v in config_problems(bad, ("lpips",))] == [
        "[lpips] weight = -1.0: expected a number >= 0.", "[lpips] scale = 0.0: expected a number in (0, 1].",
        "[lpips] min_side = 0: expected an integer >= 1.", "[lpips] gate_t_clean = 1.5: expected a number in [0, 1]."]
    (unreadable,) = Lpips(LpipsConfig(teacher="vgg"), context([])).prx_check_recipe()
    assert unreadable.startswith("teacher: Teacher 'vgg' cannot be read")


def test_the_quickstart_network_is_logged_as_uncalibrated_and_its_term_runs():
    lines: list[str] = []
    plugin = Lpips(LpipsConfig(teacher="efficientnet-lite0"), context(lines))
    assert plugin.prx_configure_model() == {}
    assert "not calibrated LPIPS" in lines[0] and "standing in" not in lines[0]
    x0, x0_hat, t = images(2, seed=1), images(2, seed=2), torch.tensor([0.2, 0.6])
    (term,) = plugin.prx_auxiliary_losses()
    assert term.stage_weights is None
    assert term(step_of(x0, x0_hat, t))["lpips"] > 0


def test_cost_is_three_teacher_forwards_per_image_at_the_downsampled_size():
    (term,) = Lpips(LpipsConfig(teacher="efficientnet-lite0"), context([])).prx_cost(
        model_config=MODEL, phase=Phase("64", 1, 64, 2), text_tokens=5)
    assert term.category == "teacher"
    assert term.flops == 3 * teacher_forward_flops(QUICKSTART_FEATURE_NETWORK, (32, 32), "stages") > 0


def test_missing_vgg_weights_stop_the_run_at_model_set_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        Lpips(LpipsConfig(), context([])).prx_configure_model()
