"""The optimizer step's share of a CPU training step: Muon (+ AdamW for the rest) vs AdamW alone.

Three copies of the same model train side by side in one process, in rotating order each
repetition so that drift in the machine's load hits all alike:

* "adamw": AdamW on every parameter (the core's default optimizer);
* "muon-torch": ``torch.optim.Muon`` on the block matrices (what the "muon" technique builds on
  one process) and AdamW on the rest;
* "muon-prx": :class:`prx_muon.optimizer.Muon` (Newton–Schulz batched by shape) on the block
  matrices and AdamW on the rest.

Each step is timed in two parts, forward+backward and optimizer step; the share is
step / (forward+backward+step), medians over the timed repetitions.

    python benchmarks/optimizer_cpu.py [--preset prx-small --resolution 64 --batch 8 --reps 10]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from prx_core.model.denoiser import PRXDenoiser
from prx_core.objective import add_noise, v_space_loss
from prx_muon.optimizer import Muon
from prx_muon import block_matrices, newton_schulz_flops_per_step
from cpu_common import add_model_arguments, model_config, synthetic_batch

SETTINGS = dict(lr=1e-4, momentum=0.95, nesterov=True, weight_decay=0.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, resolution=64, reps=10, warmup=2)
    return parser.parse_args()


def optimizers(model: PRXDenoiser, kind: str) -> list[torch.optim.Optimizer]:
    adamw = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    if kind == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw)]
    matrices = [p for _, p in block_matrices(model)]
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if kind == "muon-torch":
        muon = torch.optim.Muon(matrices, adjust_lr_fn="match_rms_adamw", **SETTINGS)
    else:
        muon = Muon(matrices, **SETTINGS)
    return [muon, torch.optim.AdamW(rest, **adamw)]


def main() -> None:
    args = parse_args()
    config = model_config(args)
    base = PRXDenoiser(config)
    kinds = ("adamw", "muon-torch", "muon-prx")
    models = {kind: copy.deepcopy(base) for kind in kinds}
    opts = {kind: optimizers(models[kind], kind) for kind in kinds}

    x0, text, mask = synthetic_batch(args)

    def train_step(kind: str) -> tuple[float, float]:
        model = models[kind]
        start = time.perf_counter()
        t = torch.rand(args.batch).clamp(1e-3, 1 - 1e-6)
        x_t = add_noise(x0, torch.randn_like(x0), t)
        x0_hat, _ = model(x_t, t, text, mask)
        loss = v_space_loss(x0_hat, x0, x_t, t, 0.05)
        model.zero_grad(set_to_none=True)
        loss.backward()
        middle = time.perf_counter()
        for opt in opts[kind]:
            opt.step()
        return middle - start, time.perf_counter() - middle

    times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for rep in range(args.warmup + args.reps):
        for kind in kinds[rep % 3 :] + kinds[: rep % 3]:
            measured = train_step(kind)
            if rep >= args.warmup:
                times[kind].append(measured)

    n_muon = sum(p.numel() for _, p in block_matrices(base))
    n_all = sum(p.numel() for p in base.parameters())
    tokens = (args.resolution // config.patch) ** 2
    print(f"model {args.preset}: depth {config.depth}, hidden {config.hidden}, {n_all / 1e6:.2f} M parameters "
          f"({n_muon / 1e6:.2f} M in {len(block_matrices(base))} block matrices); {args.resolution} px "
          f"({tokens} tokens), batch {args.batch}, {torch.get_num_threads()} threads; "
          f"Newton–Schulz {newton_schulz_flops_per_step(config, 5) / 1e9:.1f} GFLOP per step")
    print(f"{args.reps} timed reps each (medians)")
    print(f"{'optimizer':<12} {'fwd+bwd ms':>11} {'step ms':>9} {'total ms':>9} {'step share':>11}")
    for kind in kinds:
        fb = 1000 * statistics.median(t for t, _ in times[kind])
        st = 1000 * statistics.median(s for _, s in times[kind])
        total = 1000 * statistics.median(t + s for t, s in times[kind])
        share = statistics.median(s / (t + s) for t, s in times[kind])
        print(f"{kind:<12} {fb:11.1f} {st:9.1f} {total:9.1f} {100 * share:10.1f}%")


if __name__ == "__main__":
    main()
