"""Checks FSDP2's bf16 mixed precision in the trainer (run by torchrun, 2 gloo processes on CPU).

    python -m torch.distributed.run --nproc-per-node 2 --standalone tests/core/distributed/mixed_precision_check.py

Launched by ``tests/core/test_distributed.py``. With ``precision = "bf16"`` and ``strategy = "fsdp"``:

1. the blocks compute with bf16 weights (gathered in bf16), while the shards, their gradients'
   reduction, the optimizer state and the EMA stay fp32;
2. three optimizer steps give the losses, gradient norms and weights of FSDP2 without the
   policy (fp32 weights gathered, then cast by autocast at each use), up to the bf16 rounding
   of the RMSNorm scales, which autocast leaves in fp32;
3. with half the batch per rank, the losses and gradient norms are those of one process with
   bf16 autocast on the whole batch, up to bf16 rounding.

Prints ``mixed precision check passed`` on rank 0 when every check holds.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from prx_core import distributed as D
from prx_core.data.batcher import Batch
from prx_core.measure.bench import BenchShape, synthetic_batch
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.loader import load_recipe
from prx_core.registry import discover
from prx_core.techniques import TechniqueSet
from prx_core.testing import TINY_RECIPE
from prx_core.text import load_text_encoder
from prx_core.train.trainer import Trainer
from prx_core.types import Conditioning, RunContext

STEPS = 3
# bf16-gathered against fp32-gathered weights: autocast rounds every matmul weight to bf16 as the
# gather does, but the RMSNorm scales (elementwise, fp32 under autocast) are rounded too. Observed
# after 3 steps: 4e-5 .. 1e-4 relative on the losses, 2.8e-2 on the weights' update; gradients
# summed instead of averaged, or reduced in bf16, would show in the gradient norm.
REL_STEP = 1e-3
REL_UPDATE = 0.1  # |update (bf16 gathered) - update (fp32 gathered)| / |update|


def build(info: D.DistInfo, strategy: str) -> Trainer:
    registry = discover()
    recipe = load_recipe(TINY_RECIPE, ['plugins=["tread"]', "tread.routes=[{start = 1, end = 2, keep = 0.5}]",
                                "train.precision=bf16", f"distributed.strategy={strategy}"], registry)
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, info.rank, info.world_size,
                                                           info.device, lambda message: None), model_config(recipe))
    trainer = Trainer(recipe, techniques, load_text_encoder(recipe.text, info.device), info)
    trainer.start_phase(plan_phases(recipe, techniques)[0], 0)
    return trainer


def perturb(trainer: Trainer) -> None:
    """The same random offsets on every copy (whole tensors, sharded where the copy is): with
    adaLN-Zero's zero gates the blocks would otherwise get no gradient in the first steps."""
    with torch.no_grad():
        for index, p in enumerate(trainer.denoiser.parameters()):
            offset = 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(index))
            p.add_(distribute_tensor(offset, p.device_mesh, p.placements) if isinstance(p, DTensor) else offset)


def rows(batch: Batch, part: slice) -> Batch:
    return Batch(batch.images[part], batch.captions[part], batch.ids[part],
                 Conditioning(batch.text.tokens[part], batch.text.mask[part]))


def full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if isinstance(p, DTensor) else p.detach()


def without_policy(model, info, compute_dtype=None):
    """FSDP2 as it was before the mixed-precision policy: fp32 weights gathered."""
    return WRAP(model, info)


WRAP = D.wrap_model


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    fsdp = D.DistInfo(rank, world, rank, "fsdp", device)
    sharded = build(fsdp, "fsdp")
    D.wrap_model = without_policy
    fp32_gathered = build(fsdp, "fsdp")
    D.wrap_model = WRAP
    plain = build(D.DistInfo(0, 1, 0, "none", device), "none")  # every rank keeps the same reference
    for trainer in (sharded, fp32_gathered, plain):
        perturb(trainer)
    initial = [p.detach().clone() for p in plain.denoiser.parameters()]  # the same seeded init everywhere
    assert sharded.autocast == torch.bfloat16

    seen: list[torch.dtype] = []
    sharded.denoiser.blocks[1].qkv.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))

    batch = synthetic_batch(BenchShape(32, 4 * world), sharded.recipe.text.max_length, sharded.recipe.text.dim, device)
    mine = rows(batch, slice(4 * rank, 4 * (rank + 1)))
    for step in range(STEPS):
        got = sharded.train_step(iter([mine]), 1)
        before = fp32_gathered.train_step(iter([mine]), 1)
        want = plain.train_step(iter([batch]), 1)
        for name in ("loss", "loss/diffusion", "grad_norm"):
            torch.testing.assert_close(got[name], before[name], rtol=REL_STEP, atol=0)
        for name in ("loss", "loss/diffusion"):
            mean = D.all_reduce_mean(got[name].detach().float().reshape(()), fsdp)
            assert torch.allclose(mean, want[name], rtol=2e-2), (step, name, float(mean), float(want[name]))
        assert torch.allclose(got["grad_norm"], want["grad_norm"], rtol=2e-2), (step, got["grad_norm"])
    assert seen and set(seen) == {torch.bfloat16}, seen  # the block computed with gathered bf16 weights

    weight = sharded.denoiser.blocks[1].qkv.weight
    assert isinstance(weight, DTensor) and weight.dtype == torch.float32  # the shard stays fp32
    assert sharded.optimizers["adamw"].state[weight]["exp_avg"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in sharded.ema.shadow.values())
    update = torch.cat([(full(p) - p0).flatten() for p, p0 in zip(fp32_gathered.denoiser.parameters(), initial)])
    difference = torch.cat([(full(p) - full(q)).flatten() for p, q in
                            zip(sharded.denoiser.parameters(), fp32_gathered.denoiser.parameters(), strict=True)])
    relative = float(difference.norm() / update.norm())
    assert update.norm() > 0 and relative < REL_UPDATE, relative
    if rank == 0:
        print(f"mixed precision check passed (update difference {relative:.2e} relative)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    D.exit_process(main)
