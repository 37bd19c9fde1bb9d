"""REPA: the plain loss and projector, the routed token gather, gradients, the plugin hooks, and
the technique inside the core's trainer across a phase that disables it."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prx_core import distributed as D
from prx_core.data.loader import Batch
from prx_core.errors import WeightsNotFoundError
from prx_core.model.config import DenoiserConfig
from prx_core.plan import model_config
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.schema import ModelConfig, OptimConfig, Recipe
from prx_core.registry import discover
from prx_core.teachers import load_teacher, teacher_forward_flops
from prx_core.techniques import TechniqueSet
from prx_core.train.trainer import Trainer
from prx_core.types import Conditioning, Phase, Route, RunContext, StepTensors
from prx_repa import build_projector, projector_forward_flops, repa_loss, teacher_tokens_on_grid
from prx_repa.alignment import RepaAlignment
from prx_repa.config import RepaConfig
from prx_repa.plugin import Repa, prx_register_techniques
from random_denoiser import random_denoiser

MODEL = DenoiserConfig(hidden=32, depth=4, heads=2, mlp_ratio=2.0, patch=8, bottleneck=16, text_dim=8)
SIDE = 32  # a 4 x 4 token grid; the patch-16 teacher sees 64 px


@pytest.fixture(scope="module")
def teacher_spec(random_vits) -> str:
    """A tiny DINOv3 (patch 16) with random weights."""
    return random_vits["dinov3_vit"][0]


@pytest.fixture(scope="module")
def teacher(teacher_spec):
    return load_teacher(teacher_spec)


def step_inputs(batch: int = 2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 3, SIDE, SIDE, generator=generator) * 2 - 1
    t = torch.rand(batch, generator=generator)
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * torch.randn(x0.shape, generator=generator)
    text = torch.randn(batch, 5, MODEL.text_dim, generator=generator)
    return x0, x_t, t, text, torch.ones(batch, 5, dtype=torch.bool)


def context(recipe: Recipe | None = None, lines: list[str] | None = None) -> RunContext:
    recipe = recipe or Recipe(model=ModelConfig(preset="prx-test"))
    return RunContext(recipe, log=(lines.append if lines is not None else print))


# --- plain functions ------------------------------------------------------------------------------


def test_repa_loss_is_minus_the_mean_cosine_over_tokens():
    generator = torch.Generator().manual_seed(0)
    projected, target = torch.randn(3, 5, 7, generator=generator), torch.randn(3, 5, 7, generator=generator)
    cosines = [
        float(p @ q / (p.norm() * q.norm()))
        for b in range(3) for p, q in zip(projected[b], target[b])
    ]
    assert repa_loss(projected, target).item() == pytest.approx(-sum(cosines) / len(cosines), rel=1e-5)
    assert repa_loss(target, target).item() == pytest.approx(-1.0)


def test_projector_is_a_three_layer_silu_mlp_and_its_flops_are_counted():
    projector = build_projector(32, 64, 24)
    assert [type(m) for m in projector] == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in projector if isinstance(m, nn.Linear)] == [
        (32, 64), (64, 64), (64, 24)]
    with FlopCounterMode(display=False) as counter:
        projector(torch.zeros(1, 1, 32))
    assert projector_forward_flops(32, 64, 24) == counter.get_total_flops()


# --- the loss object on the denoiser's captured tokens --------------------------------------------


def test_routed_capture_gathers_the_teacher_tokens_at_the_route_index(teacher):
    """Under routing the captured rows are the kept tokens; the loss must equal the dense loss
    restricted to exactly those grid positions (checked against an explicit per-token loop)."""
    model = random_denoiser(MODEL)
    x0, x_t, t, text, mask = step_inputs()
    index = torch.tensor([[0, 3, 5, 6, 9, 10, 12, 15], [1, 2, 4, 7, 8, 11, 13, 14]])
    route = (Route(1, 2, index),)
    _, captured = model(x_t, t, text, mask, route, capture=(1,))
    hidden = captured[1].hidden
    assert captured[1].index is index and hidden.shape == (2, 8, MODEL.hidden)

    projector = build_projector(MODEL.hidden, 16, teacher.dim)
    loss_object = RepaAlignment(projector, teacher, block=1, weight=0.5, input_scale=None, resize="bilinear-antialias")
    loss = loss_object(StepTensors(x0, x_t, t, x0, captured, route, MODEL.patch, 0))["repa"]

    with torch.no_grad():
        dense = teacher.patch_tokens(F.interpolate((x0 + 1) / 2, size=(64, 64), mode="bilinear", antialias=True))
    assert dense.shape == (2, 16, teacher.dim)
    projected = projector(hidden)
    cosines = [F.cosine_similarity(projected[b, k], dense[b, index[b, k]], dim=0)
               for b in range(2) for k in range(8)]
    torch.testing.assert_close(loss, 0.5 * -torch.stack(cosines).mean())
    # The dense capture of the same block aligns all 16 tokens with the unpermuted grid.
    _, dense_captured = model(x_t, t, text, mask, (), capture=(1,))
    dense_loss = loss_object(StepTensors(x0, x_t, t, x0, dense_captured, (), MODEL.patch, 0))["repa"]
    torch.testing.assert_close(dense_loss, 0.5 * repa_loss(projector(dense_captured[1].hidden), dense))


def test_the_teacher_sees_the_clean_image_resized_by_the_chosen_mode(teacher):
    """PRX's REPA input: nearest-neighbour, no antialias (every other pixel when halving)."""
    x0 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    projector = build_projector(MODEL.hidden, 16, teacher.dim)
    nearest = RepaAlignment(projector, teacher, 1, 0.5, None, resize="nearest").targets(x0, (2, 2), None)
    with torch.no_grad():
        expected = teacher.patch_tokens(((x0 + 1) / 2)[:, :, ::2, ::2])  # 2 x 2 tokens of patch 32 -> 32 px
    torch.testing.assert_close(nearest, expected)
    filtered = RepaAlignment(projector, teacher, 1, 0.5, None, resize="bilinear-antialias").targets(x0, (2, 2), None)
    assert (filtered - nearest).abs().max() > 1e-3
    assert RepaConfig().resize == "nearest"


def test_gradients_reach_the_projector_and_the_denoiser_never_the_teacher(teacher):
    model = random_denoiser(MODEL)
    x0, x_t, t, text, mask = step_inputs()
    x0_hat, captured = model(x_t, t, text, mask, (), capture=(2,))
    projector = build_projector(MODEL.hidden, 16, teacher.dim)
    loss = RepaAlignment(projector, teacher, 2, 0.5, None)(StepTensors(x0, x_t, t, x0_hat, captured, (), 8, 0))["repa"]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert model.blocks[2].qkv.weight.grad.abs().sum() > 0
    assert model.blocks[3].qkv.weight.grad is None  # after the captured block: no path
    assert all(p.grad is None for p in teacher.parameters())


# --- the plugin's hooks, called directly ----------------------------------------------------------


def test_registration_declares_the_loss_term_and_the_module():
    (technique,) = prx_register_techniques()
    assert (technique.name, technique.plugin, technique.config) == ("repa", Repa, RepaConfig)
    assert technique.effects == ("loss_term:repa", "adds_module:repa_projector")
    assert (RepaConfig().block, RepaConfig().projector_dim, RepaConfig().weight) == (7, 1024, 0.5)


def test_check_recipe_keeps_the_block_inside_the_model_and_reads_the_teacher():
    recipe = Recipe(model=ModelConfig(preset="prx-test"))
    four_blocks = recipe.model.resolve(text_dim=8)
    assert Repa(RepaConfig(block=3), context(recipe)).prx_check_recipe(model_config=four_blocks) == []
    problems = Repa(RepaConfig(block=4, teacher="dinov3", input_scale=0.0), context(recipe)).prx_check_recipe(
        model_config=four_blocks)
    assert len(problems) == 2
    assert "block = 4" in problems[0] and "0..3" in problems[0]
    assert problems[1].startswith("teacher:")
    bad = RepaConfig(block=-1, projector_dim=0, weight=float("nan"), input_scale=0.0)
    assert [describe_violation(v) for v in config_problems(bad, ("repa",))] == [
        "[repa] block = -1: expected an integer >= 0.", "[repa] projector_dim = 0: expected an integer >= 1.",
        "[repa] weight = nan: expected a finite number.", "[repa] input_scale = 0.0: expected a number > 0."]


def test_hooks_attach_the_projector_capture_the_block_and_return_the_loss(teacher_spec, teacher):
    lines: list[str] = []
    plugin = Repa(RepaConfig(teacher=teacher_spec, block=1, projector_dim=16), context(lines=lines))
    model = random_denoiser(MODEL)
    modules = plugin.prx_configure_model(model_config=MODEL)
    projector = modules["repa_projector"]
    assert [(m.in_features, m.out_features) for m in projector if isinstance(m, nn.Linear)] == [
        (MODEL.hidden, 16), (16, 16), (16, teacher.dim)]
    assert any(teacher_spec in line for line in lines)
    model.extras["repa_projector"] = projector  # what the core does with the result
    phase = Phase("512", 10, SIDE, 2)
    (loss_object,) = plugin.prx_auxiliary_losses(phase=phase, model=model, model_config=MODEL)
    assert loss_object.name == "repa" and loss_object.projector is projector and loss_object.blocks == (1,)
    x0, x_t, t, text, mask = step_inputs()
    x0_hat, captured = model(x_t, t, text, mask, (), capture=(1,))
    terms = loss_object(StepTensors(x0, x_t, t, x0_hat, captured, (), MODEL.patch, 0))
    with torch.no_grad():
        resized = F.interpolate((x0 + 1) / 2, size=(64, 64), mode="nearest")  # [repa] resize's default, PRX's
        target = plugin.teacher.patch_tokens(resized)
    torch.testing.assert_close(terms["repa"], 0.5 * repa_loss(projector(captured[1].hidden), target))


def test_quickstart_teacher_is_logged_as_a_stand_in():
    lines: list[str] = []
    plugin = Repa(RepaConfig(teacher="efficientnet-lite0", block=1, projector_dim=16), context(lines=lines))
    modules = plugin.prx_configure_model(model_config=MODEL)
    assert modules["repa_projector"][-1].out_features == 112
    assert any("standing in for the recipe's ViT teacher" in line for line in lines)


def test_missing_teacher_weights_stop_the_run_at_model_set_up():
    plugin = Repa(RepaConfig(teacher="hf:/nonexistent/dinov3"), context())
    with pytest.raises(WeightsNotFoundError, match="/nonexistent/dinov3"):
        plugin.prx_configure_model(model_config=MODEL)


def test_cost_counts_the_teacher_forward_and_the_projector(teacher_spec):
    plugin = Repa(RepaConfig(teacher=teacher_spec, projector_dim=16), context())
    teacher_term, projector_term = plugin.prx_cost(model_config=MODEL, phase=Phase("p", 1, SIDE, 2), text_tokens=5)
    assert (teacher_term.category, projector_term.category) == ("teacher", "denoiser")
    assert teacher_term.flops == teacher_forward_flops(teacher_spec, (64, 64))
    assert projector_term.flops == 3 * 16 * projector_forward_flops(MODEL.hidden, 16, 24)


# --- inside the core's trainer --------------------------------------------------------------------


class ZeroText:
    """A stand-in text encoder: 4 zero tokens of width 8 per caption."""

    dim = 8

    def encode(self, captions: list[str]) -> Conditioning:
        return Conditioning(torch.zeros(len(captions), 4, self.dim), torch.ones(len(captions), 4, dtype=torch.bool))


def test_projector_is_stepped_by_adam_and_repa_switches_off_in_a_disabled_phase(teacher_spec):
    recipe = Recipe(plugins=["repa"], model=ModelConfig(preset="prx-test"), optim=OptimConfig(warmup_steps=0),
                    techniques={"repa": RepaConfig(teacher=teacher_spec, block=1, projector_dim=16)})
    info = D.DistInfo(rank=0, world_size=1, local_rank=0, strategy="none", device=torch.device("cpu"))
    techniques = TechniqueSet(recipe, discover(only=["repa"]), RunContext(recipe, log=lambda line: None),
                              model_config(recipe, ZeroText.dim))
    trainer = Trainer(recipe, techniques, ZeroText(), info)
    projector = trainer.denoiser.extras["repa_projector"]
    adam = {id(p) for group in trainer.optimizers["adamw"].param_groups for p in group["params"]}
    assert all(id(p) in adam for p in projector.parameters())

    images = torch.rand(2, 3, SIDE, SIDE) * 2 - 1
    batch = Batch(images=images, captions=["a", "b"], ids=["s:0", "s:1"], text=None)

    def step(phase: Phase, index: int) -> dict:
        trainer.start_phase(phase, index)
        return trainer.train_step(iter([batch]), 1)

    before = [p.detach().clone() for p in projector.parameters()]
    metrics = step(Phase("512", 1, SIDE, 2), 0)
    assert "loss/repa" in metrics and trainer.capture == (1,)
    assert all(not torch.equal(p, q) for p, q in zip(projector.parameters(), before))

    kept = [p.detach().clone() for p in projector.parameters()]
    metrics = step(Phase("1024", 1, SIDE, 2, disabled=("repa",)), 1)
    assert "loss/repa" not in metrics and trainer.capture == () and trainer.aux_losses == []
    assert all(torch.equal(p, q) for p, q in zip(projector.parameters(), kept))

    metrics = step(Phase("again", 1, SIDE, 2), 2)
    assert "loss/repa" in metrics


def test_tokens_on_grid_resize_the_image_to_the_teachers_patch_or_resample_the_features(random_vits, random_effnet):
    vit = load_teacher(random_vits["dinov3_vit"][0])
    images = torch.rand(2, 3, 32, 24)
    grid = (4, 3)  # a patch-8 denoiser on 32 x 24 px
    expected = vit.patch_tokens(F.interpolate(images, size=(64, 48), mode="bilinear", align_corners=False))
    torch.testing.assert_close(teacher_tokens_on_grid(vit, images, grid), expected)

    cnn = load_teacher(random_effnet[0])
    own = cnn.stages(images)[3]  # stride 16: 2 x 2 at the image's own size
    expected = F.interpolate(own, size=grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(teacher_tokens_on_grid(cnn, images, grid, input_scale=1.0), expected)
