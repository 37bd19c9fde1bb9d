"""Training-loader throughput on the CPU: 1024 px JPEGs decoded and fitted into 512 px buckets.

Writes ``--images`` JPEGs (1024 px on the long side, five aspect ratios, textured so that they
compress like photographs at quality 90) into a temporary folder source, then:

1. times each stage of one sample on this thread in CPU time (read, reduced JPEG decode, the
   crop+resize of the previous path (PIL bicubic ``resize(box=...)``) and of the current one
   (torch's antialiased uint8 bicubic, :func:`prx_core.data.decode.crop_resize`), the whole
   sample both ways), medians over the images, and the ratio old / new;
2. measures the quality of both paths: PSNR of each against a reference made from the full-size
   decode (no DCT reduction) resized with PIL's Lanczos filter from the same crop box;
3. runs the real loader (``build_loader``) for each ``--workers`` count and reports images/s
   (wall clock) and images per CPU-second (CPU time of the main process and of the worker
   processes during the timed window, read from /proc: the per-core figure, which does not
   depend on what else the machine runs); with 0 workers also with the previous resize, side by
   side.

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
from unittest import mock

import numpy as np
import torch
from PIL import Image

from prx_core.data.buckets import aspect_buckets, nearest_bucket
from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.decode import _crop_size, crop_resize, decode_to_bucket
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


def previous_crop_resize(image: Image.Image, width: int, height: int) -> np.ndarray:
    """The path before torch resampling: PIL's bicubic resize of the exact (fractional) centre
    crop, kept here as the baseline of the side-by-side ratio."""
    crop_w, crop_h = _crop_size(image.width, image.height, width / height)
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    resized = image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def _reference(data: bytes, width: int, height: int, box_of) -> np.ndarray:
    """Full-size decode, Lanczos resize of the crop box ``box_of(full image size)`` (as (3, H, W) float)."""
    full = Image.open(io.BytesIO(data)).convert("RGB")
    resized = full.resize((width, height), Image.Resampling.LANCZOS, box=box_of(*full.size))
    return np.asarray(resized, dtype=np.float64).transpose(2, 0, 1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def _exact_box(width: float, height: float, ratio: float) -> tuple[float, float, float, float]:
    crop_w, crop_h = _crop_size(width, height, ratio)
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def _rounded_box(width: int, height: int, ratio: float) -> tuple[int, int, int, int]:
    crop_w, crop_h = (round(v) for v in _crop_size(width, height, ratio))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def stage_times(directory: str, resolution: int, patch: int) -> tuple[dict[str, float], dict[str, float]]:
    """(median CPU ms per image of each stage on this thread, mean PSNR in dB of each path)."""
    buckets = aspect_buckets(resolution, patch)
    paths = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".jpg"))
    stages = ("read", "decode reduced", "crop+resize previous", "crop+resize current",
              "sample previous", "sample current", "decode full size")  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in stages}
    quality: dict[str, list[float]] = {"previous": [], "current": []}
    clock = time.thread_time
    for path in paths:
        t0 = clock()
        with open(path, "rb") as f:
            data = f.read()
        t1 = clock()
        image = Image.open(io.BytesIO(data))
        w, h = buckets[nearest_bucket(buckets, *image.size)]
        scale = max(w / image.width, h / image.height)
        image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()
        t2 = clock()
        old = previous_crop_resize(image, w, h)
        t3 = clock()
        new = crop_resize(image, w, h)
        t4 = clock()
        with mock.patch("prx_core.data.decode.crop_resize", previous_crop_resize):
            decode_to_bucket(data, buckets, None)
        t5 = clock()
        decode_to_bucket(data, buckets, None)
        t6 = clock()
        Image.open(io.BytesIO(data)).load()
        t7 = clock()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            times[key].append(1e3 * value)
        # Each path against the ideal picture of its own crop box (the current one rounds the box
        # to whole pixels of the reduced image: mapped back to full size for its reference).
        reduction = Image.open(io.BytesIO(data)).width / image.width
        quality["previous"].append(_psnr(old, _reference(data, w, h, lambda W, H: _exact_box(W, H, w / h))))
        box = tuple(v * reduction for v in _rounded_box(image.width, image.height, w / h))
        quality["current"].append(_psnr(new, _reference(data, w, h, lambda W, H: box)))
    return (
        {key: statistics.median(values) for key, values in times.items()},
        {key: statistics.mean(values) for key, values in quality.items()},
    )


def workers_cpu() -> dict[int, float]:
    """CPU seconds used so far by each live child process, by pid (from /proc: Linux)."""
    used = {}
    for child in multiprocessing.active_children():
        with open(f"/proc/{child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        used[child.pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return used


def loader_throughput(directory: str, workers: int, batch: int, resolution: int, patch: int, seconds: float,
                      label: str = "current") -> dict:
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
        "workers": f"{workers} ({label})",
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
    # One torch thread, as in a decoding worker (prx_core.data.reader.one_thread_in_workers): CPU
    # time is counted on this thread only, and the per-core figure is what the workers get.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        kb = make_jpegs(args.images, directory)
        print(f"{args.images} JPEGs, 1024 px long side, mean {kb:.0f} kB; buckets at {args.resolution} px, "
              f"patch {args.patch}; {os.cpu_count()} CPUs")  # fmt: skip
        stages, quality = stage_times(directory, args.resolution, args.patch)
        print("\nper image, this thread (median CPU ms):")
        for stage, ms in stages.items():
            print(f"  {stage:<22} {ms:7.2f}")
        print(f"  batch assembly         {batch_assembly_ms(args.batch, args.resolution):7.2f}  "
              f"(per batch of {args.batch}, main process)")  # fmt: skip
        ratio = stages["sample previous"] / stages["sample current"]
        print(f"\nwhole sample, previous / current: {ratio:.2f}x; images per CPU-second: "
              f"{1e3 / stages['sample previous']:.0f} previous, {1e3 / stages['sample current']:.0f} current")
        print(f"PSNR against full-size decode + Lanczos (mean dB): previous {quality['previous']:.2f}, "
              f"current {quality['current']:.2f} ({quality['current'] - quality['previous']:+.2f})")
        print("\nloader (build_loader, folder source):")
        print("  workers        images/s  images/CPU-s  main CPU  worker CPU")
        runs = []
        for workers in (int(w) for w in args.workers.split(",")):
            if workers == 0:
                with mock.patch("prx_core.data.decode.crop_resize", previous_crop_resize):
                    runs.append(loader_throughput(directory, 0, args.batch, args.resolution, args.patch, args.seconds,
                                                  "previous"))  # fmt: skip
            runs.append(loader_throughput(directory, workers, args.batch, args.resolution, args.patch, args.seconds))
        for r in runs:
            print(f"  {r['workers']:<13}  {r['images_per_s']:8.1f}  {r['images_per_cpu_s']:12.1f}  "
                  f"{r['main_cpu_share']:8.2f}  {r['worker_cpu_share']:10.2f}")  # fmt: skip

if __name__ == "__main__":
    main()
