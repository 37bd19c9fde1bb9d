"""With ``[train] compile`` each auxiliary loss compiles as a whole: its teacher passes (clean
branch without gradient, prediction branch with it), resizing, distance and weighting form one
graph per technique, with the real teacher architectures (DINOv3 for REPA, DINOv2 with registers
for the DINO perceptual loss, LPIPS' VGG16), and the compiled step computes what the eager one
does."""
from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from prx_core import distributed as D
from prx_core.measure.bench import BenchShape, synthetic_batch
from prx_core.objective import add_noise, v_space_loss
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.techniques import TechniqueSet
from prx_core.testing import TINY_RECIPE
from prx_core.text import load_text_encoder
from prx_core.train.trainer import CompiledLoss, Trainer
from prx_core.types import RunContext, StepTensors


@pytest.fixture(scope="module")
def teacher_overrides(random_vits, random_lpips_vgg) -> list[str]:
    dinov3, dinov2 = random_vits["dinov3_vit"][0], random_vits["dinov2_with_registers"][0]
    return [
        'plugins=["tread", "repa", "lpips", "dino_perceptual"]',
        "tread.routes=[{start = 1, end = 2, keep = 0.5}]",
        f'repa.teacher="{dinov3}"', "repa.block=1", "repa.projector_dim=16",
        f'lpips.teacher="lpips:vgg@{random_lpips_vgg[0]}"', "lpips.min_side=16",
        f'dino_perceptual.teacher="{dinov2}"', "dino_perceptual.size=28",
    ]


def build_trainer(overrides: list[str], compiled: bool) -> Trainer:
    registry = discover()
    recipe = load_recipe(TINY_RECIPE, [*overrides, f"train.compile={'true' if compiled else 'false'}"], registry)
    device = torch.device("cpu")
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, 0, 1, device, lambda message: None), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, device), D.DistInfo(0, 1, 0, "none", device))
    trainer.start_phase(plan_phases(recipe, techniques)[0], 0)
    return trainer


def step_tensors(trainer: Trainer, step: int = 0) -> StepTensors:
    """The tensors the loss terms see in a routed training step with REPA's capture."""
    batch = synthetic_batch(BenchShape(32, 4), trainer.recipe.text.max_length, trainer.recipe.text.dim, trainer.device)
    generator = torch.Generator().manual_seed(1 + step)
    x0 = batch.images
    t = torch.rand(4, generator=generator)
    x_t = add_noise(x0, torch.randn(x0.shape, generator=generator), t)
    patch = trainer.model_config.patch
    route = trainer.router.plan(4, (32 // patch, 32 // patch), step, trainer.device)
    x0_hat, captured = trainer.forward(x_t, t, batch.text.tokens, batch.text.mask, route, trainer.capture)
    return StepTensors(x0, x_t, t, x0_hat, captured, route, patch, step)


def test_every_auxiliary_loss_compiles_as_one_graph_with_its_teachers(teacher_overrides):
    trainer = build_trainer(teacher_overrides, compiled=False)
    tensors = step_tensors(trainer)
    assert sorted(loss.name for loss in trainer.aux_losses) == ["dino_perceptual", "lpips", "repa"]
    for loss in trainer.aux_losses:
        counter = CompileCounter()
        torch._dynamo.reset()
        compiled = torch.compile(loss.__call__, backend=counter, fullgraph=True)  # a graph break raises
        got, want = compiled(tensors), loss(tensors)
        assert counter.frame_count == 1, loss.name
        assert got.keys() == want.keys() == {loss.name}
        torch.testing.assert_close(got[loss.name], want[loss.name])
        assert got[loss.name].requires_grad  # the prediction branch (and REPA's projector) keeps its graph
        compiled(step_tensors(trainer, step=1))  # new noise, a new route: the same graph
        assert counter.frame_count == 1, loss.name


def test_a_compiled_trainer_compiles_every_loss_term_and_the_objective(teacher_overrides):
    trainer = build_trainer(teacher_overrides, compiled=True)
    assert all(isinstance(loss, CompiledLoss) for loss in trainer.aux_losses)
    assert sorted(loss.name for loss in trainer.aux_losses) == ["dino_perceptual", "lpips", "repa"]
    assert trainer.objective_loss._torchdynamo_orig_callable is v_space_loss
    eager = build_trainer(teacher_overrides, compiled=False)
    assert eager.objective_loss is v_space_loss and not any(isinstance(x, CompiledLoss) for x in eager.aux_losses)


@pytest.mark.slow
def test_the_compiled_step_computes_what_the_eager_step_does(teacher_overrides, monkeypatch):
    """Same losses and same updated weights, with every region compiled (``aot_eager``: the
    graphs dynamo and AOTAutograd build, without the C++ compile of inductor on a CPU)."""
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
        trainer = build_trainer(teacher_overrides, compiled)
        monkeypatch.undo()
        batch = synthetic_batch(BenchShape(32, 4), trainer.recipe.text.max_length, trainer.recipe.text.dim,
                                trainer.device)
        metrics = trainer.train_step(iter([batch, batch]), 2)
        results.append((metrics, {n: p.detach().clone() for n, p in trainer.denoiser.named_parameters()}))
    (eager, eager_weights), (compiled, compiled_weights) = results
    assert {"loss/diffusion", "loss/repa", "loss/lpips", "loss/dino_perceptual"} <= eager.keys() == compiled.keys()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)
    for name, weight in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)
