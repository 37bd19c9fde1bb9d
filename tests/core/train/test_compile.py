"""A fast step: the denoiser compiles as one graph (forward and backward, dense, routed, with
captures and activation checkpointing), the training step reads nothing back to the host, and a
non-finite step is skipped on the device (parameters, optimizer state and EMA unchanged, the
skip counted)."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from prx_core import distributed as D
from prx_core.measure.bench import BenchShape, synthetic_batch
from prx_core.measure.host_sync import HostReads, host_sync_sites
from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.techniques import TechniqueSet
from prx_core.testing import TINY_RECIPE
from prx_core.text import load_text_encoder
from prx_core.train.nonfinite import honours_found_inf, nonfinite_flag, step_unless
from prx_core.train.trainer import Trainer
from prx_core.types import Route, RunContext

CONFIG = DenoiserConfig(hidden=32, depth=3, heads=2, mlp_ratio=2.0, patch=8, bottleneck=16, text_dim=16)


def inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.rand(batch, generator=g)
    text = torch.randn(batch, 5, 16, generator=g)
    mask = torch.arange(5) < torch.tensor([3, 5])[:, None]
    index = torch.rand(batch, 16, generator=g).argsort(dim=1)[:, :8].sort(dim=1).values
    return x_t, t, text, mask, (Route(1, 1, index),)


def denoiser(checkpointing: bool) -> PRXDenoiser:
    torch.manual_seed(0)
    model = PRXDenoiser(CONFIG)
    for p in model.parameters():  # adaLN-Zero starts at the identity: make every path count
        torch.nn.init.normal_(p, std=0.2)
    model.activation_checkpointing = checkpointing
    return model.train()


VARIANTS = {"dense": False, "routed+captured": True}


# --- one graph -------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_denoiser_forward_is_one_graph(variant, checkpointing):
    x_t, t, text, mask, route = inputs()
    routed = VARIANTS[variant]
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(denoiser(checkpointing), backend=counter, fullgraph=True)  # a graph break raises
    out, captured = compiled(x_t, t, text, mask, route if routed else (), (1,) if routed else ())
    assert counter.frame_count == 1 and out.shape == x_t.shape
    assert list(captured) == ([1] if routed else [])
    compiled(*inputs()[:4], route if routed else (), (1,) if routed else ())  # a fresh route: no recompile
    assert counter.frame_count == 1


@pytest.mark.slow
def test_compiled_forward_and_backward_match_eager_with_routing_capture_and_checkpointing():
    x_t, t, text, mask, route = inputs()
    results = []
    for compile_it in (False, True):
        model = denoiser(checkpointing=True)
        torch._dynamo.reset()
        run = torch.compile(model, backend="aot_eager", fullgraph=True) if compile_it else model
        out, captured = run(x_t, t, text, mask, route, (1,))
        (out.square().mean() + captured[1].hidden.square().mean()).backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert eager_grads.keys() == compiled_grads.keys()
    for name, grad in eager_grads.items():
        assert grad is not None and torch.allclose(compiled_grads[name], grad, atol=1e-5), name


@pytest.mark.slow
def test_inductor_compiled_routed_denoiser_matches_eager():
    x_t, t, text, mask, route = inputs()
    model = denoiser(checkpointing=False)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # the default backend, as [train] compile uses
    out, captured = compiled(x_t, t, text, mask, route, (1, 2))
    out.mean().backward()
    reference, reference_captured = model(x_t, t, text, mask, route, (1, 2))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-3)
    for block in (1, 2):  # inside the route (kept rows, with their index) and after it (every row)
        torch.testing.assert_close(captured[block].hidden, reference_captured[block].hidden, rtol=1e-4, atol=1e-3)
    assert torch.equal(captured[1].index, route[0].index) and captured[2].index is None
    assert all(p.grad is not None for p in model.parameters())


# --- no host reads in the step ------------------------------------------------------------------------


INFO = D.DistInfo(0, 1, 0, "none", torch.device("cpu"))


def build_trainer(plugins: str) -> Trainer:
    registry = discover()
    recipe = load_recipe(TINY_RECIPE, [f"plugins={plugins}"], registry)
    device = torch.device("cpu")
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, 0, 1, device, lambda message: None), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, device), D.DistInfo(0, 1, 0, "none", device))
    trainer.start_phase(plan_phases(recipe, techniques)[0], 0)
    return trainer


def stream(trainer: Trainer, poisoned: bool = False):
    recipe = trainer.recipe
    batch = synthetic_batch(BenchShape(recipe.data.resolution, 4), recipe.text.max_length, recipe.text.dim,
                            trainer.device)
    if poisoned:
        batch.images[0, 0, 0, 0] = float("nan")
    while True:
        yield batch


def test_the_training_step_reads_nothing_back_to_the_host():
    with HostReads() as control:
        bool(torch.ones(()))
    assert len(control.sites) == 1  # the detector sees a host read
    trainer = build_trainer('["tread", "muon"]')
    batches = stream(trainer)
    trainer.train_step(batches, 1)  # the first step creates the optimizer state
    with HostReads() as reads:
        metrics = trainer.train_step(batches, 2)
    assert reads.sites == []
    assert torch.isfinite(metrics["loss"])


def test_a_host_read_in_a_loss_term_is_reported_with_the_line_that_made_it():
    """What `prx bench` prints for each synchronisation: the innermost frame, and the innermost
    frame outside torch (here the loss term's own line) when the read happened inside torch."""
    trainer = build_trainer("[]")
    batches = stream(trainer)

    class ReadsTheNoiseLevel:
        name = "reads_t"

        def __call__(self, step):
            return {"reads_t": step.t.mean() * 0 + float(step.t.max())}  # float(): a host read

    trainer.aux_losses = [ReadsTheNoiseLevel()]
    trainer.aux_owners = ["test"]
    trainer.train_step(batches, 1)
    sites = host_sync_sites(lambda: trainer.train_step(batches, 1), trainer.device)
    assert len(sites) == 1
    assert f"{__file__}:" in sites[0] and "float(step.t.max())" in sites[0]


# --- non-finite steps, skipped on the device ------------------------------------------------------------


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"param/{n}": p.detach().clone() for n, p in trainer.denoiser.named_parameters()}
    state.update({f"ema/{n}": v.clone() for n, v in trainer.ema.shadow.items()})
    for label, opt in trainer.optimizers.items():
        for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
            for key, value in opt.state.get(p, {}).items():
                state[f"{label}/{i}/{key}"] = value.clone()
    return state


def test_a_non_finite_step_changes_nothing_and_is_counted_on_the_device():
    trainer = build_trainer('["muon"]')  # two optimizers: the fused AdamW honours found_inf itself
    assert honours_found_inf(trainer.optimizers["adamw"])
    good, bad = stream(trainer), stream(trainer, poisoned=True)
    trainer.train_step(good, 1)
    before = snapshot(trainer)
    metrics = trainer.train_step(bad, 1)
    assert not torch.isfinite(metrics["loss"])
    after = snapshot(trainer)
    assert before.keys() == after.keys() and any(k.startswith("muon/") for k in before)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert trainer.health.skipped_total.device.type == "cpu" and trainer.nonfinite_total == 1
    trainer.train_step(bad, 1)
    assert trainer.health.read(trainer.step, INFO).nonfinite_streak == 2
    for _ in range(3):
        trainer.train_step(bad, 1)
    trainer.train_step(good, 1)
    health = trainer.health.read(trainer.step, INFO)
    assert trainer.nonfinite_total == 5 and health.nonfinite_streak == 0
    assert health.nonfinite_from == 2  # the first run of max_nonfinite_in_row (5) skipped steps, though it ended
    changed = snapshot(trainer)
    assert not torch.equal(changed["param/final.weight"], after["param/final.weight"])


def optimizer_tensors(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [*params, *(v for p in params for v in opt.state[p].values() if isinstance(v, torch.Tensor))]


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.AdamW(params, lr=0.1, fused=True),
    lambda params: torch.optim.AdamW(params, lr=0.1, foreach=True),
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    lambda params: torch.optim.Muon(params, lr=0.1),
], ids=["fused-adamw", "foreach-adamw", "sgd-momentum", "muon"])
def test_a_skipped_step_is_as_if_it_never_happened(make):
    """Good, non-finite, good through step_unless equals two plain steps with the good gradients,
    parameters and optimizer state bit for bit."""
    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(5, 4)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(2)]
    nan = [torch.full_like(w, float("nan")) for w in weights]
    runs = []
    for sequence in ([grads[0], nan, grads[1]], [grads[0], grads[1]]):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = make(params)
        for step_grads in sequence:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            if len(sequence) == 3:
                step_unless(opt, nonfinite_flag(*step_grads))
            else:
                opt.step()
        runs.append(optimizer_tensors(params, opt))
    skipped, plain = runs
    assert len(skipped) == len(plain) > len(weights)
    assert all(torch.equal(a, b) for a, b in zip(skipped, plain))


def test_a_skipped_first_step_creates_no_state():
    param = torch.nn.Parameter(torch.ones(3, 2))
    opt = torch.optim.Muon([param], lr=0.1)
    param.grad = torch.full_like(param, float("inf"))
    step_unless(opt, nonfinite_flag(param.grad))
    assert torch.equal(param, torch.ones(3, 2)) and not opt.state


def test_nonfinite_flag():
    assert nonfinite_flag(torch.tensor(1.0), torch.ones(3)).item() == 0.0
    assert nonfinite_flag(torch.tensor(1.0), torch.tensor([1.0, float("inf")])).item() == 1.0
    assert nonfinite_flag(torch.tensor(float("nan"))).dtype == torch.float32
