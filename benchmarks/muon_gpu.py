"""Muon's cost on a GPU for PRX-1.2B: Newton–Schulz alone, and as part of an accumulated step.

Prints one JSON line per measurement:

* ``newton_schulz``: all block matrices orthogonalised in bf16, batched by shape (one call
  per shape, as :class:`prx_muon.optimizer.Muon` does) and one matrix at a time (as
  ``torch.optim.Muon`` does), with the analytic FLOPs and the achieved rate;
* ``optimizer_step``: one step of ``torch.optim.Muon`` and of the batched Muon on the block
  matrices (momentum and weight update included);
* ``train_step``: the real PRXDenoiser (fp32 weights, bf16 autocast, random text embeddings)
  trained with gradient accumulation (default 4 micro-batches of 8 at 512 px), once with
  Muon + AdamW and once with AdamW alone; the optimizer runs once per step, after the last
  micro-batch, and its share of the step is reported.

    python benchmarks/muon_gpu.py                 # PRX-1.2B, text_dim 2304, on the GPU
    python benchmarks/muon_gpu.py --tiny          # prx-test at 32 px: a smoke test on a CPU
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import defaultdict

import torch

from prx_core.model.config import PRESETS, DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.model.flops import tokens_for, train_flops_per_image
from prx_core.objective import add_noise, v_space_loss
from prx_muon.newton_schulz import newton_schulz, newton_schulz_flops
from prx_muon.optimizer import Muon
from prx_muon.owners import assign_owners
from prx_muon import block_matrices, block_matrix_shapes

SETTINGS = dict(lr=1e-4, momentum=0.95, nesterov=True, weight_decay=0.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="prx-test at 32 px, 2x2 images, 2 reps (CPU smoke test)")
    parser.add_argument("--preset", default="prx-1.2b", choices=sorted(PRESETS))
    parser.add_argument("--text-dim", type=int, default=2304)
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true", help="only the Newton–Schulz and optimizer timings")
    args = parser.parse_args()
    if args.tiny:
        args.preset, args.text_dim, args.text_tokens, args.resolution = "prx-test", 32, 8, 32
        args.micro_batch, args.accumulation, args.reps, args.warmup = 2, 2, 2, 1
    return args


def timed(fn, reps: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of each of ``reps`` calls after ``warmup`` calls, synchronised."""
    out = []
    for i in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append(time.perf_counter() - start)
    return out


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def bench_newton_schulz(config: DenoiserConfig, args, device: torch.device) -> None:
    shapes = block_matrix_shapes(config) * config.depth
    flops = sum(newton_schulz_flops(s) for s in shapes)
    gen = torch.Generator(device=device).manual_seed(0)
    grads = [torch.randn(s, generator=gen, device=device) for s in shapes]
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        by_shape[tuple(g.shape)].append(g)
    stacks = [torch.stack(gs).bfloat16() for gs in by_shape.values()]
    singles = [g.bfloat16() for g in grads]
    for name, run in (
        ("batched_by_shape", lambda: [newton_schulz(s) for s in stacks]),
        ("one_matrix_at_a_time", lambda: [newton_schulz(g) for g in singles]),
    ):
        seconds = statistics.median(timed(run, args.reps, args.warmup, device))
        emit(what="newton_schulz", how=name, preset=args.preset, matrices=len(shapes), ranks=1,
             ms=round(1e3 * seconds, 2), gflop=round(flops / 1e9, 3), tflop_per_s=round(flops / seconds / 1e12, 1),
             device=str(device))
    costs = [newton_schulz_flops(s) for s in shapes]
    for ranks in (8, 32):  # the most loaded owner's share under FSDP with one owner per matrix
        owners = assign_owners(costs, ranks)
        busiest = max(range(ranks), key=lambda r: sum(c for c, o in zip(costs, owners) if o == r))
        owned: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
        for g, o in zip(singles, owners):
            if o == busiest:
                owned[tuple(g.shape)].append(g)
        owned_stacks = [torch.stack(gs) for gs in owned.values()]
        seconds = statistics.median(timed(lambda: [newton_schulz(s) for s in owned_stacks], args.reps, args.warmup,
                                          device))
        share = sum(c for c, o in zip(costs, owners) if o == busiest)
        emit(what="newton_schulz", how="busiest_owner_batched", preset=args.preset, ranks=ranks,
             matrices=sum(o == busiest for o in owners), ms=round(1e3 * seconds, 2), gflop=round(share / 1e9, 3),
             tflop_per_s=round(share / seconds / 1e12, 1), device=str(device))


def make_optimizers(model: PRXDenoiser, kind: str, fused: bool) -> list[torch.optim.Optimizer]:
    adamw = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=fused)
    if kind == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw)]
    matrices = [p for _, p in block_matrices(model)]
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in ids]
    muon = (
        torch.optim.Muon(matrices, adjust_lr_fn="match_rms_adamw", **SETTINGS)
        if kind == "muon-torch"
        else Muon(matrices, **SETTINGS)
    )
    return [muon, torch.optim.AdamW(rest, **adamw)]


def bench_optimizer_step(model: PRXDenoiser, args, device: torch.device) -> None:
    matrices = [p for _, p in block_matrices(model)]
    for p in matrices:
        p.grad = torch.randn_like(p)
    for kind, opt in (
        ("muon-torch", torch.optim.Muon(matrices, adjust_lr_fn="match_rms_adamw", **SETTINGS)),
        ("muon-prx-batched", Muon(matrices, **SETTINGS)),
    ):
        seconds = statistics.median(timed(opt.step, args.reps, args.warmup, device))
        emit(what="optimizer_step", how=kind, preset=args.preset, matrices=len(matrices), ms=round(1e3 * seconds, 2),
             device=str(device))
        del opt
    for p in matrices:
        p.grad = None


def bench_train_step(base: PRXDenoiser, config: DenoiserConfig, args, device: torch.device) -> None:
    b, res = args.micro_batch, args.resolution
    gen = torch.Generator(device=device).manual_seed(1)
    x0 = torch.rand(b, 3, res, res, generator=gen, device=device) * 2 - 1
    text = torch.randn(b, args.text_tokens, args.text_dim, generator=gen, device=device)
    mask = torch.ones(b, args.text_tokens, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    images = b * args.accumulation
    flops_per_image = train_flops_per_image(config, tokens_for(res, config.patch), args.text_tokens)
    for kind in ("muon-prx", "muon-torch", "adamw"):
        model = copy.deepcopy(base) if device.type == "cpu" else base  # one 1.2 B model on the GPU at a time
        opts = make_optimizers(model, kind, fused=device.type == "cuda")
        parts: dict[str, list[float]] = defaultdict(list)

        def step() -> None:
            start = time.perf_counter()
            for _ in range(args.accumulation):  # nothing of the optimizer runs per micro-batch
                t = torch.rand(b, device=device).clamp(1e-3, 1 - 1e-6)
                x_t = add_noise(x0, torch.randn_like(x0), t)
                with autocast:
                    x0_hat, _ = model(x_t, t, text, mask)
                (v_space_loss(x0_hat, x0, x_t, t, 0.05) / args.accumulation).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            middle = time.perf_counter()
            for opt in opts:
                opt.step()
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            parts["micro_batches"].append(middle - start)
            parts["optimizer"].append(time.perf_counter() - middle)

        total = statistics.median(timed(step, args.reps, args.warmup, device))
        fb = statistics.median(parts["micro_batches"][args.warmup :])
        opt_s = statistics.median(parts["optimizer"][args.warmup :])
        emit(what="train_step", optimizer=kind, preset=args.preset, resolution=res, micro_batch=b,
             accumulation=args.accumulation, step_ms=round(1e3 * total, 1), micro_batches_ms=round(1e3 * fb, 1),
             optimizer_ms=round(1e3 * opt_s, 1), optimizer_share=round(opt_s / total, 4),
             images_per_s=round(images / total, 1), model_tflop_per_s=round(images * flops_per_image / total / 1e12, 1),
             device=str(device))
        del opts
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    config = DenoiserConfig(**PRESETS[args.preset], text_dim=args.text_dim)
    bench_newton_schulz(config, args, device)
    torch.manual_seed(0)
    with device:
        model = PRXDenoiser(config)
    bench_optimizer_step(model, args, device)
    if not args.skip_train:
        bench_train_step(model, config, args, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        emit(what="memory", peak_gib=round(peak, 2), device=torch.cuda.get_device_name())


if __name__ == "__main__":
    main()
