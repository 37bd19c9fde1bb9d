"""The Muon technique: Newton–Schulz, the optimizer against torch.optim.Muon, the parameter
claim, the cost hook, and (under torchrun, 2 gloo processes) FSDP2 and DDP against one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
import torch
from torch import nn

from prx_core import hookspecs
from prx_core.errors import PluginError
from prx_core.model.config import PRESETS, DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.types import RunContext
from prx_muon import MuonConfig, block_matrices, block_matrix_shapes, newton_schulz_flops_per_step
from prx_muon.exchange import shard_range
from prx_muon.newton_schulz import QUINTIC, newton_schulz, newton_schulz_flops
from prx_muon.optimizer import Muon, update_scale
from prx_muon.owners import assign_owners
from prx_muon.plugin import MuonTechnique, prx_register_techniques

BLOCK_WEIGHTS = ("qkv", "text_kv", "attn_out", "gate", "up", "down", "modulation")


def singular_structure(g: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diagonal, off-diagonal) of U^T O V where G = U S V^T: O keeps G's singular vectors iff the
    off-diagonal part is ~0, and the diagonal holds O's singular values."""
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    d = u.T @ o.float() @ vh.T
    return d.diagonal(), d - torch.diag(d.diagonal())


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (64, 256), (33, 17)])
def test_newton_schulz_maps_singular_values_near_one(shape):
    gen = torch.Generator().manual_seed(0)
    m, n = shape
    k = min(m, n)
    # Spread the singular values over two decades (square Gaussian matrices have some near 0).
    u = torch.linalg.qr(torch.randn(m, k, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(n, k, generator=gen))[0]
    g = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T * 5.0
    o = newton_schulz(g)
    assert o.dtype == torch.bfloat16 and o.shape == g.shape
    diagonal, off = singular_structure(g, o)
    assert diagonal.min() > 0.6 and diagonal.max() < 1.25
    assert off.abs().max() < 0.05
    sv = torch.linalg.svdvals(o.float())
    assert sv.min() > 0.6 and sv.max() < 1.25


def test_newton_schulz_batched_equals_each_matrix_and_leaves_input_alone():
    g = torch.randn(3, 48, 80, generator=torch.Generator().manual_seed(1)).bfloat16()
    copy = g.clone()
    batched = newton_schulz(g)
    assert torch.equal(g, copy)
    for i in range(3):
        torch.testing.assert_close(batched[i], newton_schulz(g[i]), rtol=0, atol=0)
    assert newton_schulz(g.reshape(3, 1, 48, 80)).shape == (3, 1, 48, 80)
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(5))


def test_newton_schulz_of_zero_is_zero():
    assert torch.equal(newton_schulz(torch.zeros(8, 4)).float(), torch.zeros(8, 4))


def test_newton_schulz_flops():
    # (m, n) = (3, 5): s = 3, l = 5, per step 4·9·5 + 2·27 = 234.
    assert newton_schulz_flops((5, 3), steps=2) == newton_schulz_flops((3, 5), steps=2) == 468
    prx = DenoiserConfig(**PRESETS["prx-1.2b"])
    # docs/recipe.md §7: about 50 TFLOP of Newton–Schulz per optimizer step for PRX-1.2B.
    assert 45e12 < newton_schulz_flops_per_step(prx, 5) < 52e12


def test_update_scale():
    assert update_scale((400, 100), "match_rms_adamw") == pytest.approx(0.2 * 20)
    assert update_scale((100, 400), "match_rms_adamw") == pytest.approx(0.2 * 20)
    assert update_scale((400, 100), "original") == pytest.approx(2.0)
    assert update_scale((100, 400), "original") == pytest.approx(1.0)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_torch_muon(nesterov):
    gen = torch.Generator().manual_seed(2)
    # Two matrices share a shape, so one batched Newton–Schulz call covers both.
    shapes = [(64, 64), (96, 32), (32, 96), (96, 32), (7, 5)]
    ours = [nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    settings = dict(lr=0.01, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    ours_opt = Muon(ours, **settings)
    theirs_opt = torch.optim.Muon(theirs, adjust_lr_fn="match_rms_adamw", **settings)
    start = [p.detach().clone() for p in ours]
    for _ in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours_opt.step()
        theirs_opt.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q)
            torch.testing.assert_close(ours_opt.state[p]["momentum_buffer"], theirs_opt.state[q]["momentum_buffer"])
    assert all(not torch.equal(p, p0) for p, p0 in zip(ours, start))
    assert ours_opt.orthogonalised_last_step == len(shapes)


def test_muon_skips_params_without_grad_and_rejects_non_matrices():
    a, b = nn.Parameter(torch.ones(4, 3)), nn.Parameter(torch.ones(4, 3))
    opt = Muon([a, b], lr=0.1)
    a.grad = torch.randn(4, 3)
    opt.step()
    assert not torch.equal(a, torch.ones(4, 3)) and torch.equal(b, torch.ones(4, 3))
    assert b not in opt.state
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.ones(4))])
    with pytest.raises(ValueError, match="momentum"):
        Muon([a], momentum=1.0)


def test_assign_owners_balances_flops_deterministically():
    costs = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    owners = assign_owners(costs, 3)
    assert owners == [0, 1, 2, 2, 1, 0, 0, 1]  # largest first, each to the least-loaded rank
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(3)]
    assert loads == [13.0, 12.0, 11.0]  # the optimum is 12 each; LPT stays within 4/3 of it
    assert owners == assign_owners(costs, 3)
    assert assign_owners([1.0, 1.0], 4) == [0, 1]
    assert assign_owners([], 2) == []
    prx = DenoiserConfig(**PRESETS["prx-1.2b"])
    costs = [newton_schulz_flops(s) for s in block_matrix_shapes(prx)] * prx.depth
    loads = [0.0] * 32
    for c, o in zip(costs, assign_owners(costs, 32)):
        loads[o] += c
    assert max(loads) < 4 / 3 * sum(costs) / 32  # 112 matrices over 32 ranks: near 1/32 each


@pytest.mark.parametrize("rows,ranks", [(8, 2), (7, 2), (1, 2), (10, 4), (5, 8)])
def test_shard_range_matches_torch_chunk(rows, ranks):
    chunks = torch.arange(rows).chunk(ranks)
    for rank in range(ranks):
        start, stop = shard_range(rows, ranks, rank)
        expected = chunks[rank].tolist() if rank < len(chunks) else []
        assert list(range(start, stop)) == expected


class FakeProjector(nn.Module):
    """A technique's extra module with its own 2-D weights (like REPA's projector)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 16))


def make_model() -> PRXDenoiser:
    torch.manual_seed(0)
    model = PRXDenoiser(DenoiserConfig(**PRESETS["prx-test"], text_dim=16))
    model.extras["projector"] = FakeProjector()
    return model


def make_technique(**config) -> tuple[MuonTechnique, list[str]]:
    lines: list[str] = []
    return MuonTechnique(MuonConfig(**config), RunContext(recipe=None, log=lines.append)), lines


def test_claim_is_exactly_the_block_matrices_and_the_rest_goes_to_the_default_group():
    model = make_model()
    technique, lines = make_technique()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(technique)  # pluggy checks the method signatures against the hookspecs
    [claims] = pm.hook.prx_optimizer_groups(model=model, recipe=None)
    [claim] = claims
    assert claim.owner == "muon" and claim.label == "muon"
    claimed = {name for name, _ in claim.params}
    depth = model.config.depth
    assert claimed == {f"blocks.{i}.{w}.weight" for i in range(depth) for w in BLOCK_WEIGHTS}
    everything = dict(model.named_parameters())
    assert all(everything[name] is p for name, p in claim.params)
    rest = set(everything) - claimed  # what the core's default AdamW receives
    assert {"extras.projector.blocks.0.weight", "patch_in.weight", "final.weight", "blocks.0.modulation.bias"} <= rest
    assert {"blocks.0.q_norm.scale", "text_in.weight", "time_in.0.weight"} <= rest
    assert all(everything[name].ndim == 2 for name in claimed)
    assert all(everything[name].ndim != 2 or not name.startswith("blocks.") for name in rest)
    n_claimed = sum(everything[n].numel() for n in claimed)
    n_rest = sum(everything[n].numel() for n in rest)
    assert n_claimed + n_rest == sum(p.numel() for p in model.parameters())
    assert lines == [
        f"muon: Muon steps {len(claimed)} block matrices ({n_claimed / 1e6:.2f} M parameters); the default AdamW "
        f"steps the other {len(rest)} tensors ({n_rest / 1e6:.2f} M parameters)"
    ]


def test_claim_names_follow_a_wrapper():
    wrapper = nn.Module()
    wrapper.module = make_model()
    names = {name for name, _ in block_matrices(wrapper)}
    assert "module.blocks.0.qkv.weight" in names and len(names) == 7 * wrapper.module.config.depth


def test_claim_without_a_denoiser_is_a_plugin_error():
    with pytest.raises(PluginError, match="PRXDenoiser"):
        block_matrices(nn.Linear(3, 3))


def test_build_on_one_process():
    model = make_model()
    params = [p for _, p in block_matrices(model)]
    technique, _ = make_technique(implementation="torch")
    theirs = technique.build(params)
    assert type(theirs) is torch.optim.Muon
    group = theirs.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-4, 0.95, True, 0.0)
    assert (group["ns_steps"], group["ns_coefficients"], group["adjust_lr_fn"]) == (5, QUINTIC, "match_rms_adamw")
    for implementation in ("auto", "prx"):
        technique, _ = make_technique(implementation=implementation, lr=3e-4)
        ours = technique.build(params)
        assert type(ours) is Muon and ours.param_groups[0]["lr"] == 3e-4 and ours.replicated_group is None


def test_cost_hook_counts_newton_schulz_of_every_block_matrix():
    model = make_model()
    technique, _ = make_technique(ns_steps=4)
    [term] = technique.prx_cost(model.config, phase=None, text_tokens=8)
    assert (term.category, term.per, term.name) == ("optimizer", "step", "muon_newton_schulz")
    assert term.flops == sum(newton_schulz_flops(tuple(p.shape), 4) for _, p in block_matrices(model))


def test_config_and_registration():
    bad = MuonConfig(lr=-1.0, momentum=1.0, ns_steps=0, weight_decay=-0.1)
    assert [describe_violation(v) for v in config_problems(bad, ("muon",))] == [
        "[muon] lr = -1.0: expected a number >= 0.", "[muon] momentum = 1.0: expected a number in [0, 1).",
        "[muon] ns_steps = 0: expected an integer >= 1.", "[muon] weight_decay = -0.1: expected a number >= 0."]
    [technique] = prx_register_techniques()
    assert technique.name == "muon" and technique.effects == ("optimizer:muon",)
    assert technique.config is MuonConfig and technique.plugin is MuonTechnique


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_sharded_and_replicated_muon_equal_one_process(tmp_path):
    script = Path(__file__).parent / "distributed" / "muon_sharded_check.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(script),
         str(tmp_path / "checkpoint")],
        capture_output=True, text=True, env=env, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "muon sharded check passed" in result.stdout


def test_found_inf_skips_the_step_on_the_device():
    from prx_core.train.nonfinite import step_unless

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    reference = torch.nn.Parameter(w.detach().clone())
    ours, plain = Muon([w], lr=0.1), Muon([reference], lr=0.1)
    for found_inf in (0.0, 1.0, 0.0):
        grad = torch.randn(6, 4)
        w.grad, reference.grad = grad.clone(), grad.clone()
        before = (w.detach().clone(), ours.state[w]["momentum_buffer"].clone() if ours.state[w] else None)
        step_unless(ours, torch.tensor(found_inf))
        if found_inf:
            assert torch.equal(w, before[0]) and torch.equal(ours.state[w]["momentum_buffer"], before[1])
            reference.grad = None  # the plain optimizer does not step either
        plain.step()
        assert torch.equal(w, reference)
        assert torch.equal(ours.state[w]["momentum_buffer"], plain.state[reference]["momentum_buffer"])
