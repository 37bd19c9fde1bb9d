"""Training-loader throughput on the CPU: 1024 px JPEGs decoded and fitted into 512 px buckets.

Writes ``--images`` JPEGs (1024 px on the long side, five aspect ratios, textured so that they
compress like photographs at quality 90) into a temporary folder source, then:

1. times each stage of one sample on this thread (read, reduced JPEG decode, crop+resize, and a
   full-size decode for comparison), medians over the images;
2. runs the real loader (``build_loader``) for each ``--workers`` count and reports images/s
   (wall clock) and images per CPU-second (CPU time of the main process and of the worker
   processes during the timed window, read from /proc: the per-core figure, which does not
   depend on what else the machine runs).

    python benchmarks/loader_cpu.py [--images 200 --workers 0,1,2 --batch 32 --seconds 8]
"""
from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from prx_core.data.buckets import aspect_buckets, nearest_bucket
from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.decode import _crop_size, decode_to_bucket
from prx_core.data.loader import build_loader
from prx_core.data.scenes import render_scene, scene_for_index
from prx_core.data.writers import Record, encode_image, write_folder

SIZES = ((1024, 1024), (1024, 768), (768, 1024), (1024, 576), (576, 1024))


def make_jpegs(count: int, directory: str) -> float:
    """Write ``count`` captioned JPEGs; returns their mean size in kB."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        scene = scene_for_index(i)
        pixels = render_scene(scene, height, width, index=i).astype(np.float32)
        # Smooth shading plus fine grain: JPEG sizes and decode costs close to photographs'.
        ramp = np.linspace(-25, 25, width, dtype=np.float32)[None, :, None]
        grain = rng.normal(0, 10, size=(height, width, 1)).astype(np.float32)
        pixels = np.clip(pixels + ramp + grain, 0, 255).astype(np.uint8)
        records.append(Record(f"img-{i:05d}", encode_image(pixels, "JPEG", quality=90), scene.caption()))
    write_folder(directory, records)
    return sum(len(r.image) for r in records) / count / 1024


def stage_times(directory: str, resolution: int, patch: int) -> dict[str, float]:
    """Median ms per image of each stage, on this thread."""
    buckets = aspect_buckets(resolution, patch)
    paths = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".jpg"))
    stages = ("read", "decode reduced", "crop+resize", "full path", "decode full size", "resize bilinear")
    times: dict[str, list[float]] = {k: [] for k in stages}
    for path in paths:
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        t1 = time.perf_counter()
        image = Image.open(io.BytesIO(data))
        w, h = buckets[nearest_bucket(buckets, *image.size)]
        scale = max(w / image.width, h / image.height)
        image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()
        t2 = time.perf_counter()
        crop_w, crop_h = _crop_size(image.width, image.height, w / h)
        left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        image.resize((w, h), Image.Resampling.BICUBIC, box=box)
        t3 = time.perf_counter()
        decode_to_bucket(data, buckets, None)
        t4 = time.perf_counter()
        Image.open(io.BytesIO(data)).load()
        t5 = time.perf_counter()
        image.resize((w, h), Image.Resampling.BILINEAR, box=box)
        t6 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            times[key].append(1e3 * value)
    return {key: statistics.median(values) for key, values in times.items()}


def workers_cpu() -> dict[int, float]:
    """CPU seconds used so far by each live child process, by pid (from /proc: Linux)."""
    used = {}
    for child in multiprocessing.active_children():
        with open(f"/proc/{child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        used[child.pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return used


def loader_throughput(directory: str, workers: int, batch: int, resolution: int, patch: int, seconds: float) -> dict:
    data = DataConfig(resolution=resolution, sources=[SourceConfig(kind="folder", path=directory)], workers=workers)
    loader = build_loader(data, resolution=resolution, batch_size=batch, patch=patch, seed=0)
    it = iter(loader)
    for _ in range(2):  # start-up: worker processes, first buffers
        next(it)
    before, before_workers = os.times(), workers_cpu()
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        images += next(it).images.shape[0]
    wall = time.perf_counter() - start
    after, after_workers = os.times(), workers_cpu()
    worker_cpu = sum(used - before_workers.get(pid, 0.0) for pid, used in after_workers.items())
    main_cpu = after.user + after.system - before.user - before.system
    loader.close()
    return {
        "workers": workers,
        "images_per_s": images / wall,
        "images_per_cpu_s": images / (main_cpu + worker_cpu),
        "main_cpu_share": main_cpu / wall,
        "worker_cpu_share": worker_cpu / wall,
    }


def batch_assembly_ms(batch: int, resolution: int) -> float:
    """Main-process cost of one batch: stack uint8 samples and map them to float32 [-1, 1]."""
    from prx_core.data.batcher import to_unit_range

    samples = [np.zeros((3, resolution, resolution), np.uint8) for _ in range(batch)]
    start = time.perf_counter()
    for _ in range(5):
        to_unit_range(np.stack(samples))
    return 1e3 * (time.perf_counter() - start) / 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per worker count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        kb = make_jpegs(args.images, directory)
        print(f"{args.images} JPEGs, 1024 px long side, mean {kb:.0f} kB; buckets at {args.resolution} px, "
              f"patch {args.patch}; {os.cpu_count()} CPUs")  # fmt: skip
        print("\nper image, this thread (median ms):")
        for stage, ms in stage_times(directory, args.resolution, args.patch).items():
            print(f"  {stage:<18} {ms:7.2f}")
        print(f"  batch assembly     {batch_assembly_ms(args.batch, args.resolution):7.2f}  (per batch of {args.batch}, main process)")
        print("\nloader (build_loader, folder source):")
        print("  workers  images/s  images/CPU-s  main CPU  worker CPU")
        for workers in (int(w) for w in args.workers.split(",")):
            r = loader_throughput(directory, workers, args.batch, args.resolution, args.patch, args.seconds)
            print(f"  {r['workers']:>7}  {r['images_per_s']:8.1f}  {r['images_per_cpu_s']:12.1f}  "
                  f"{r['main_cpu_share']:8.2f}  {r['worker_cpu_share']:10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
