"""Dense vs TREAD-routed training steps on the CPU, timed side by side in one process.

Each repetition runs one dense and one routed step (forward, backward, AdamW) in alternating
order on the same model, so drift in the machine's load hits both alike. Prints the median and
the fastest step times, the measured ratios routed/dense, and the analytic FLOP ratio from the
"tread" cost hook. On a shared machine the fastest-step ratio is the steadier one: other
processes only ever add time.

    python benchmarks/routing_cpu.py [--preset prx-small --resolution 128 --batch 8 --reps 6 --threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from prx_core.model.denoiser import PRXDenoiser
from prx_core.model.flops import tokens_for, train_flops_per_image
from prx_core.objective import add_noise, v_space_loss
from prx_core.recipe.schema import Recipe
from prx_core.types import Phase, RunContext
from prx_tread.config import TreadConfig
from prx_tread.plugin import Tread
from cpu_common import add_model_arguments, model_config, synthetic_batch



def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, resolution=128, reps=6, warmup=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = model_config(args)
    phase = Phase("bench", steps=args.reps, resolution=args.resolution, batch_size=args.batch)
    tread = Tread(TreadConfig(), RunContext(recipe=Recipe(), seed=0))
    router = tread.prx_routing(phase, config)
    image_tokens = tokens_for(args.resolution, config.patch)
    dense_flops = train_flops_per_image(config, image_tokens, args.text_tokens)
    (saving,) = tread.prx_cost(config, phase, args.text_tokens)
    analytic = (dense_flops + saving.flops) / dense_flops

    model = PRXDenoiser(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0, text, mask = synthetic_batch(args)
    grid = (args.resolution // config.patch, args.resolution // config.patch)

    def train_step(step: int, routed: bool) -> float:
        start = time.perf_counter()
        t = torch.rand(args.batch).clamp(1e-3, 1 - 1e-6)
        x_t = add_noise(x0, torch.randn_like(x0), t)
        route = router.plan(args.batch, grid, step, torch.device("cpu")) if routed else ()
        x0_hat, _ = model(x_t, t, text, mask, route=route)
        loss = v_space_loss(x0_hat, x0, x_t, t, 0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.warmup + args.reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for routed in order:
            elapsed = train_step(rep, routed)
            if rep >= args.warmup:
                times[routed].append(elapsed)

    dense_ms, routed_ms = (1000 * statistics.median(times[kind]) for kind in (False, True))
    dense_min, routed_min = (1000 * min(times[kind]) for kind in (False, True))
    (span,) = router.routes
    print(f"model {args.preset}: depth {config.depth}, hidden {config.hidden}, {image_tokens} image tokens "
          f"({args.resolution} px, patch {config.patch}), {args.text_tokens} text tokens, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"route: blocks {span.start}..{span.end}, keep {span.keep}; {args.reps} timed reps of each (median)")
    print(f"dense  step: median {dense_ms:8.1f} ms, fastest {dense_min:8.1f} ms")
    print(f"routed step: median {routed_ms:8.1f} ms, fastest {routed_min:8.1f} ms")
    print(f"step-time ratio routed/dense: median {routed_ms / dense_ms:.3f}, fastest {routed_min / dense_min:.3f}; "
          f"analytic FLOP ratio {analytic:.3f}")


if __name__ == "__main__":
    main()
