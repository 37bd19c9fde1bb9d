"""Checks Muon under FSDP2 and DDP against single-process ``torch.optim.Muon`` (run by torchrun).

    python -m torch.distributed.run --nproc-per-node 2 --standalone tests/plugins/distributed/muon_sharded_check.py DIR

Launched by ``tests/plugins/test_muon.py``; DIR is a scratch directory for the checkpoint round trip.
Every rank builds the same PRX test denoiser (plus two odd-shaped matrices whose row-shards are
uneven, one of them empty on rank 1), shards a copy with ``fully_shard`` and keeps plain copies
as references. Each step gives all copies the same full gradients and checks:

1. the FSDP2 copy stepped by :class:`prx_muon.optimizer.Muon` equals the plain copy stepped by
   ``torch.optim.Muon`` (fp32 tolerance), and each rank orthogonalised only its own matrices;
2. a plain copy stepped by ``Muon(replicated_group=WORLD)`` (the DDP case) equals it too;
3. an optimizer restored from a ``torch.distributed.checkpoint`` save (momentum included)
   continues identically;
4. a real forward/backward through the FSDP2 model (half the batch per rank) gives the same
   update as the plain model on the whole batch, up to the gradients' fp32 rounding;
5. the technique builds this optimizer for sharded and for replicated parameters, and refuses
   ``implementation = "torch"`` on sharded ones.

Prints ``muon sharded check passed`` on rank 0 when every check holds.
"""
from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from prx_core.distributed import exit_process
from prx_core.errors import RecipeError
from prx_core.model.config import PRESETS, DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.types import RunContext
from prx_muon import MuonConfig, block_matrices
from prx_muon.optimizer import Muon
from prx_muon.plugin import MuonTechnique

SETTINGS = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0)


def build_model() -> PRXDenoiser:
    torch.manual_seed(0)
    model = PRXDenoiser(DenoiserConfig(**PRESETS["prx-test"], text_dim=16))
    # (7, 5) splits 4 + 3 rows over two ranks, (1, 7) splits 1 + 0: the uneven cases of Shard(0).
    model.extras["odd"] = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Linear(7, 1, bias=False))
    for p in model.parameters():  # the zero-initialised modulation would make the first step trivial
        p.data.add_(0.02 * torch.randn_like(p))
    return model


def matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    extra = [(n, p) for n, p in model.named_parameters() if n.startswith("extras.odd.")]
    return block_matrices(model) + extra


def shard(model: nn.Module, mesh) -> nn.Module:
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if isinstance(p, DTensor) else p.detach()


def set_grads(named: list[tuple[str, nn.Parameter]], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for _, p in named:
        g = torch.randn(p.shape, generator=gen)
        p.grad = distribute_tensor(g, p.device_mesh, p.placements) if isinstance(p, DTensor) else g


def max_diff(a: list[tuple[str, nn.Parameter]], b: list[tuple[str, nn.Parameter]]) -> float:
    assert [n for n, _ in a] == [n for n, _ in b]
    worst = 0.0
    for (name, p), (_, q) in zip(a, b):
        torch.testing.assert_close(full(p), full(q), msg=lambda m, name=name: f"{name}: {m}")
        worst = max(worst, (full(p) - full(q)).abs().max().item())
    return worst


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def main(scratch: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))

    base = build_model()
    reference, replicated = copy.deepcopy(base), copy.deepcopy(base)
    sharded = shard(copy.deepcopy(base), mesh)
    ref_named, rep_named, sh_named = matrices(reference), matrices(replicated), matrices(sharded)
    check(all(isinstance(p, DTensor) and p.placements == (Shard(0),) for _, p in sh_named), "not FSDP2-sharded")

    ref_opt = torch.optim.Muon([p for _, p in ref_named], adjust_lr_fn="match_rms_adamw", **SETTINGS)
    rep_opt = Muon([p for _, p in rep_named], replicated_group=dist.group.WORLD, **SETTINGS)
    sh_opt = Muon([p for _, p in sh_named], **SETTINGS)

    worst = 0.0
    for step in range(3):
        for named in (ref_named, rep_named, sh_named):
            set_grads(named, step)
        ref_opt.step()
        rep_opt.step()
        sh_opt.step()
        worst = max(worst, max_diff(sh_named, ref_named), max_diff(rep_named, ref_named))
        for opt in (sh_opt, rep_opt):
            share = torch.tensor([opt.orthogonalised_last_step])
            dist.all_reduce(share)
            check(share.item() == len(ref_named), f"ranks orthogonalised {share.item()} of {len(ref_named)} matrices")
            check(0 < opt.orthogonalised_last_step < len(ref_named), "the Newton–Schulz work was not split")

    # DCP round trip: save after three steps, restore into a fresh optimizer, continue both.
    buffers = [sh_opt.state[p]["momentum_buffer"] for _, p in sh_named]
    check(all(isinstance(b, DTensor) and b.placements == (Shard(0),) for b in buffers), "state is not sharded")
    dcp.save({"optim": get_optimizer_state_dict(sharded, sh_opt)}, checkpoint_id=scratch)
    sharded.zero_grad(set_to_none=True)  # as on resume: DCP initialises an empty state by a zero-lr step
    restored_opt = Muon([p for _, p in sh_named], **SETTINGS)
    state = {"optim": get_optimizer_state_dict(sharded, restored_opt)}
    dcp.load(state, checkpoint_id=scratch)
    set_optimizer_state_dict(sharded, restored_opt, state["optim"])
    for (_, p), before in zip(sh_named, buffers):
        torch.testing.assert_close(full(restored_opt.state[p]["momentum_buffer"]), full(before))
    for named in (ref_named, sh_named):
        set_grads(named, 3)
    ref_opt.step()
    restored_opt.step()
    worst = max(worst, max_diff(sh_named, ref_named))

    # A real backward through FSDP2: each rank takes half of the batch, FSDP averages the grads.
    gen = torch.Generator().manual_seed(7)
    x, t = torch.randn(4, 3, 16, 16, generator=gen), torch.rand(4, generator=gen)
    text, mask = torch.randn(4, 5, 16, generator=gen), torch.ones(4, 5, dtype=torch.bool)
    before = [full(p).clone() for _, p in ref_named]
    reference.zero_grad()
    reference(x, t, text, mask)[0].square().mean().backward()
    ref_opt.step()
    half = slice(2 * rank, 2 * rank + 2)
    sharded.zero_grad()
    sharded(x[half], t[half], text[half], mask[half])[0].square().mean().backward()
    restored_opt.step()
    for (name, p), (_, q), p0 in zip(sh_named, ref_named, before):
        moved, expected = full(p) - p0, full(q) - p0
        error = (moved - expected).abs().max().item()
        check(error <= 0.02 * expected.abs().max().item() + 1e-7, f"{name}: FSDP update off by {error}")

    context = RunContext(recipe=None, rank=rank, world_size=world)
    built = MuonTechnique(MuonConfig(), context).build([p for _, p in sh_named])
    check(type(built) is Muon and built.replicated_group is dist.group.WORLD, "FSDP2 build")
    built = MuonTechnique(MuonConfig(), context).build([p for _, p in rep_named])
    check(type(built) is Muon and built.replicated_group is dist.group.WORLD, "DDP build")
    try:
        MuonTechnique(MuonConfig(implementation="torch"), context).build([p for _, p in sh_named])
        check(False, "torch.optim.Muon accepted sharded parameters")
    except RecipeError:
        pass

    if rank == 0:
        print(f"largest difference from torch.optim.Muon over {len(ref_named)} matrices: {worst:.3g}")
        print("muon sharded check passed")
    dist.destroy_process_group()


if __name__ == "__main__":
    exit_process(lambda: main(sys.argv[1]))
