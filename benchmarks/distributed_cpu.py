"""Training throughput on the CPU: one process against two (DDP and FSDP2 over gloo).

Each configuration is a real ``prx run`` of ``prx_core/testing/tiny.toml`` with the model, image
size and batch set below, launched as a user launches it (``python -m torch.distributed.run
--nproc-per-node 2 --standalone -m prx_core run ...`` for two processes). Step times are read
from the run's ``metrics.jsonl`` (``step_ms`` of every step after ``--skip`` warm-up steps, on rank
0's clock), so start-up, the final sampling and the evaluation are left out; images/s is the
global batch over a step's time. Rows, one feature per row: one process with 1 thread, one
process with 2 threads (the cores two processes use), then DDP and FSDP2 with 1 thread per
process. The configurations run in turn, ``--rounds`` times, so that drift in the machine's load
hits them alike; on a shared machine the fastest step is the steadier number (other work only
ever adds time), the median is printed beside it with the load average.

    python benchmarks/distributed_cpu.py [--preset prx-tiny --resolution 64 --batch 16 --steps 12 --rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "prx_core" / "testing" / "tiny.toml"
CONFIGS = (  # label, processes, threads per process, strategy
    ("1 process, 1 thread", 1, 1, "none"),
    ("1 process, 2 threads", 1, 2, "none"),
    ("2 processes DDP, 1 thread each", 2, 1, "ddp"),
    ("2 processes FSDP2, 1 thread each", 2, 1, "fsdp"),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="prx-tiny", help="model preset (prx-tiny: the quickstart's model)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration, in turn")
    return parser.parse_args()


def train(run_dir: Path, processes: int, threads: int, strategy: str, args: argparse.Namespace) -> list[float]:
    """Milliseconds of each step after the warm-up of one run."""
    settings = [f"model.preset={args.preset}", f"data.resolution={args.resolution}", f"train.batch_size={args.batch}",
                f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.log_every=1",
                f"distributed.strategy={strategy}", "eval.num_prompts=1", "sample.num_prompts=1"]
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--standalone"] \
        if processes > 1 else [sys.executable]
    command = [*prefix, "-m", "prx_core", "run", str(RECIPE), "--run-dir", str(run_dir), "--plain"]
    for setting in settings:
        command += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step_ms"] for row in rows[args.skip:]]


def main() -> None:
    args = parse_args()
    step_ms: dict[str, list[float]] = {label: [] for label, *_ in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (label, processes, threads, strategy) in enumerate(CONFIGS):
                step_ms[label] += train(Path(tmp) / f"{round_}_{i}", processes, threads, strategy, args)
                print(f"  round {round_ + 1}, {label}: median step {statistics.median(step_ms[label]):.0f} ms",
                      flush=True)
    best = {label: 1e3 * args.batch / min(times) for label, times in step_ms.items()}
    median = {label: 1e3 * args.batch / statistics.median(times) for label, times in step_ms.items()}
    base_1, base_2 = best[CONFIGS[0][0]], best[CONFIGS[1][0]]
    print(f"\n{args.preset}, {args.resolution} px, global batch {args.batch}, steps {args.skip + 1}-{args.steps} "
          f"timed; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| configuration | images/s, fastest step | median step | vs 1 process, 1 thread | vs 1 process, 2 threads |")
    print("|---|---:|---:|---:|---:|")
    for label, value in best.items():
        print(f"| {label} | {value:.1f} | {median[label]:.1f} | {value / base_1:.2f}x | {value / base_2:.2f}x |")


if __name__ == "__main__":
    main()
