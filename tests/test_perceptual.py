"""Perceptual losses: the plain functions against direct computations (and the lpips package),
the per-step terms (gradient only through the prediction, the noise gate), the plugin hooks."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import pytest
import torch
import torch.nn.functional as F

from prx_core.errors import WeightsNotFoundError
from prx_core.model.config import DenoiserConfig
from prx_core.objective import gated_mean, noise_gate
from prx_core.recipe.schema import Recipe
from prx_core.teachers import QUICKSTART_FEATURE_NETWORK, load_teacher, teacher_forward_flops
from prx_core.types import Phase, RunContext, StepTensors
from prx_dino_perceptual import DinoPerceptualConfig, dino_perceptual_loss
from prx_dino_perceptual.plugin import DinoPerceptual
from prx_dino_perceptual.plugin import prx_register_techniques as dino_techniques
from prx_dino_perceptual.term import DinoPerceptualTerm
from prx_lpips import LpipsConfig, downsampled_size, lpips_distance
from prx_lpips.plugin import Lpips
from prx_lpips.plugin import prx_register_techniques as lpips_techniques
from prx_lpips.term import LpipsTerm

MODEL = DenoiserConfig(hidden=32, depth=4, heads=2, mlp_ratio=2.0, patch=8, bottleneck=16, text_dim=8)


@pytest.fixture(scope="module")
def dino_spec(random_vits) -> str:
    """A tiny DINOv2 with registers (patch 14) with random weights."""
    return random_vits["dinov2_with_registers"][0]


def images(batch: int = 4, side: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def step_of(x0: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor) -> StepTensors:
    return StepTensors(x0, x0, t, x0_hat, {}, (), MODEL.patch, 0)


def half(x: torch.Tensor, antialias: bool = False) -> torch.Tensor:
    """PRX's LPIPS input (algorithm/lpips.py): bilinear at scale 0.5, without antialias by default."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=antialias)


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


def test_dino_perceptual_loss_is_the_mean_of_one_minus_cosine_per_sample():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 7, generator=generator), torch.randn(3, 5, 7, generator=generator)
    expected = [sum(1 - float(p @ q / (p.norm() * q.norm())) for p, q in zip(pred[b], target[b])) / 5 for b in range(3)]
    torch.testing.assert_close(dino_perceptual_loss(pred, target), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_noise_gate_keeps_the_samples_clean_enough():
    t = torch.tensor([0.1, 0.75, 0.69, 1.0])
    assert noise_gate(t, 0.3).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert noise_gate(t, 0.0).tolist() == [1.0] * 4
    assert gated_mean(torch.tensor([1.0, 2.0, 3.0, 4.0]), noise_gate(t, 0.3)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("hw, expected", [((64, 64), (32, 32)), ((512, 256), (256, 128)), ((16, 16), (16, 16)),
                                          ((48, 96), (32, 64))])
def test_downsampled_size_keeps_a_minimum_short_side(hw, expected):
    assert downsampled_size(hw, 0.5, 32) == expected


# --- the per-step terms ---------------------------------------------------------------------------


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


def test_dino_perceptual_term_compares_patch_tokens_at_the_configured_size(dino_spec):
    teacher = load_teacher(dino_spec)
    x0, x0_hat = images(seed=1), images(seed=2).requires_grad_(True)
    t = torch.tensor([0.1, 0.9, 0.5, 0.2])
    value = DinoPerceptualTerm(teacher, weight=0.01, size=28, gate_t_clean=0.0)(step_of(x0, x0_hat, t))
    with torch.no_grad():
        expected = dino_perceptual_loss(teacher.patch_tokens(prx_dino_input(x0_hat)),
                                        teacher.patch_tokens(prx_dino_input(x0)))
    torch.testing.assert_close(value["dino_perceptual"], 0.01 * expected.mean())
    value["dino_perceptual"].backward()
    assert x0_hat.grad.abs().sum() > 0 and all(p.grad is None for p in teacher.parameters())


def prx_dino_input(x: torch.Tensor) -> torch.Tensor:
    """PRX's P-DINO input (algorithm/perceptual_dino.py): bilinear resize without antialias, then
    ((x + 1) / 2).clamp(0, 1)."""
    return ((F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False) + 1) / 2).clamp(0, 1)


def test_dino_perceptual_switches_clamp_the_prediction_and_choose_the_resize(dino_spec):
    teacher = load_teacher(dino_spec)
    x0 = images(seed=1)
    x0_hat = (images(seed=2) * 1.5).requires_grad_(True)  # a prediction partly outside [-1, 1]
    step = step_of(x0, x0_hat, torch.zeros(4))
    term = DinoPerceptualTerm(teacher, 1.0, 28, 0.0, resize="bilinear", clamp=True)
    assert torch.equal(term.teacher_input(x0_hat), prx_dino_input(x0_hat))
    unclamped = DinoPerceptualTerm(teacher, 1.0, 28, 0.0, resize="bilinear", clamp=False)
    assert unclamped.teacher_input(x0_hat).min() < 0 and unclamped.teacher_input(x0_hat).max() > 1
    filtered = DinoPerceptualTerm(teacher, 1.0, 28, 0.0, resize="bilinear-antialias", clamp=False)
    expected = (F.interpolate(x0_hat, size=(28, 28), mode="bilinear", antialias=True) + 1) / 2
    torch.testing.assert_close(filtered.teacher_input(x0_hat), expected)
    # the clamp passes no gradient where the prediction left the range
    term(step)["dino_perceptual"].backward()
    outside = (F.interpolate(x0_hat.detach(), size=(28, 28), mode="bilinear") + 1).div(2)
    assert ((outside < 0) | (outside > 1)).any() and x0_hat.grad.abs().sum() > 0
    config = DinoPerceptualConfig()
    assert (config.resize, config.clamp) == ("bilinear", True)


# --- the plugins' hooks ---------------------------------------------------------------------------


def context(lines: list[str]) -> RunContext:
    return RunContext(Recipe(), log=lines.append)


def test_registration_declares_both_loss_terms_with_the_recipe_defaults():
    (lpips_technique,), (dino_technique,) = lpips_techniques(), dino_techniques()
    assert (lpips_technique.name, lpips_technique.effects) == ("lpips", ("loss_term:lpips",))
    assert (dino_technique.name, dino_technique.effects) == ("dino_perceptual", ("loss_term:dino_perceptual",))
    assert (LpipsConfig().teacher, LpipsConfig().weight, LpipsConfig().scale) == ("lpips:vgg", 0.1, 0.5)
    dino = DinoPerceptualConfig()
    assert (dino.teacher, dino.weight, dino.size) == ("hf:facebook/dinov2-with-registers-base", 0.01, 224)
    assert LpipsConfig().gate_t_clean == dino.gate_t_clean == 0.0


def test_check_recipe_rejects_a_vit_for_lpips_and_bad_values():
    assert Lpips(LpipsConfig(), context([])).prx_check_recipe() == []
    problems = Lpips(LpipsConfig(teacher="hf:facebook/dinov2-base", scale=0.0, gate_t_clean=1.5),
                     context([])).prx_check_recipe()
    assert len(problems) == 3 and "gate_t_clean" in problems[0] and "is a ViT" in problems[1] and "scale" in problems[2]
    assert DinoPerceptual(DinoPerceptualConfig(size=0), context([])).prx_check_recipe() != []


def test_quickstart_network_is_logged_honestly_and_its_terms_run():
    lines: list[str] = []
    lpips_plugin = Lpips(LpipsConfig(teacher="efficientnet-lite0"), context(lines))
    dino_plugin = DinoPerceptual(DinoPerceptualConfig(teacher="efficientnet-lite0", size=64), context(lines))
    for plugin in (lpips_plugin, dino_plugin):
        assert plugin.prx_configure_model() == {}
    assert "not calibrated LPIPS" in lines[0] and "standing in" not in lines[0]
    assert "a CNN standing in for the recipe's DINOv2" in lines[1]
    x0, x0_hat, t = images(2, seed=1), images(2, seed=2), torch.tensor([0.2, 0.6])
    (lpips_term,) = lpips_plugin.prx_auxiliary_losses()
    (dino_term,) = dino_plugin.prx_auxiliary_losses()
    assert lpips_term.stage_weights is None
    assert lpips_term(step_of(x0, x0_hat, t))["lpips"] > 0
    assert dino_term(step_of(x0, x0_hat, t))["dino_perceptual"] > 0


def test_cost_is_three_teacher_forwards_per_image(dino_spec):
    phase = Phase("64", 1, 64, 2)
    (term,) = Lpips(LpipsConfig(teacher="efficientnet-lite0"), context([])).prx_cost(
        model_config=MODEL, phase=phase, text_tokens=5)
    assert term.category == "teacher"
    assert term.flops == 3 * teacher_forward_flops(QUICKSTART_FEATURE_NETWORK, (32, 32), "stages")
    (term,) = DinoPerceptual(DinoPerceptualConfig(teacher=dino_spec, size=28), context([])).prx_cost(
        model_config=MODEL, phase=phase, text_tokens=5)
    assert term.flops == 3 * teacher_forward_flops(dino_spec, (28, 28)) > 0


def test_missing_vgg_weights_stop_the_run_at_model_set_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        Lpips(LpipsConfig(), context([])).prx_configure_model()
