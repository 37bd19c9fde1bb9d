"""dino_perceptual: the plain loss against a direct computation, the per-step loss (size, weight,
gradient only through the prediction), and the plugin's hooks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prx_core.model.config import DenoiserConfig
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.schema import Recipe
from prx_core.teachers import load_teacher, teacher_forward_flops
from prx_core.types import Phase, RunContext, StepTensors
from prx_dino_perceptual import DinoPerceptualConfig, dino_perceptual_loss
from prx_dino_perceptual.plugin import DinoPerceptual, prx_register_techniques
from prx_dino_perceptual.term import DinoPerceptualTerm

MODEL = DenoiserConfig(hidden=32, depth=4, heads=2, mlp_ratio=2.0, patch=8, bottleneck=16, text_dim=8)


@pytest.fixture(scope="module")
def dino_spec(random_vits) -> str:
    """A tiny DINOv2 with registers (patch 14) with random weights."""
    return random_vits["dinov2_with_registers"][0]


def images(batch: int = 4, side: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def step_of(x0: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor) -> StepTensors:
    return StepTensors(x0, x0, t, x0_hat, {}, (), MODEL.patch, 0)


def context(lines: list[str]) -> RunContext:
    return RunContext(Recipe(), log=lines.append)


def test_dino_perceptual_loss_is_the_mean_of_one_minus_cosine_per_sample():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 7, generator=generator), torch.randn(3, 5, 7, generator=generator)
    expected = [sum(1 - float(p @ q / (p.norm() * q.norm())) for p, q in zip(pred[b], target[b])) / 5 for b in range(3)]
    torch.testing.assert_close(dino_perceptual_loss(pred, target), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_the_term_compares_patch_tokens_at_the_configured_size(dino_spec):
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


def test_the_switches_clamp_the_prediction_and_choose_the_resize(dino_spec):
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


def test_registration_declares_the_loss_term_with_the_recipe_defaults():
    (technique,) = prx_register_techniques()
    assert (technique.name, technique.plugin, technique.config) == (
        "dino_perceptual", DinoPerceptual, DinoPerceptualConfig)
    assert technique.effects == ("loss_term:dino_perceptual",)
    config = DinoPerceptualConfig()
    assert (config.teacher, config.weight, config.size, config.gate_t_clean, config.resize, config.clamp) == (
        "hf:facebook/dinov2-with-registers-base", 0.01, 224, 0.0, "bilinear", True)


def test_check_recipe_rejects_bad_values():
    assert DinoPerceptual(DinoPerceptualConfig(), context([])).prx_check_recipe() == []
    (unreadable,) = DinoPerceptual(DinoPerceptualConfig(teacher="vgg"), context([])).prx_check_recipe()
    assert unreadable.startswith("teacher: Teacher 'vgg' cannot be read")
    bad = DinoPerceptualConfig(size=0, weight=-1.0, gate_t_clean=2.0)
    assert [describe_violation(v) for v in config_problems(bad, ("dino_perceptual",))] == [
        "[dino_perceptual] weight = -1.0: expected a number >= 0.",
        "[dino_perceptual] size = 0: expected an integer >= 1.",
        "[dino_perceptual] gate_t_clean = 2.0: expected a number in [0, 1]."]


def test_a_cnn_stand_in_is_logged_as_such_and_its_term_runs():
    lines: list[str] = []
    plugin = DinoPerceptual(DinoPerceptualConfig(teacher="efficientnet-lite0", size=64), context(lines))
    assert plugin.prx_configure_model() == {}
    assert "a CNN standing in for the recipe's DINOv2" in lines[0]
    (term,) = plugin.prx_auxiliary_losses()
    assert term(step_of(images(2, seed=1), images(2, seed=2), torch.tensor([0.2, 0.6])))["dino_perceptual"] > 0


def test_cost_is_three_teacher_forwards_per_image_at_the_configured_size(dino_spec):
    (term,) = DinoPerceptual(DinoPerceptualConfig(teacher=dino_spec, size=28), context([])).prx_cost(
        model_config=MODEL, phase=Phase("64", 1, 64, 2), text_tokens=5)
    assert term.category == "teacher"
    assert term.flops == 3 * teacher_forward_flops(dino_spec, (28, 28)) > 0
