"""What is in a data source: counts, bucket histogram, caption lengths, bad samples, and a
contact sheet of random samples with their captions (``prx data inspect``).

Inspection reads a random sample of each source through the loader's own reader, so what it
reports (buckets, skipped files and why) is what training will see.
"""
from __future__ import annotations

import collections
import itertools
import textwrap

import attrs
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prx_core.data import files
from prx_core.data.buckets import buckets_for
from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.loader import mixture_weights, open_sources
from prx_core.data.mds_format import INDEX as MDS_INDEX
from prx_core.data.reader import Loaded, SampleReader
from prx_core.data.sources import IMAGE_SUFFIXES, is_streaming
from prx_core.errors import DataError


@attrs.frozen
class SourceSummary:
    name: str
    kind: str
    description: str
    size: int | None  # None: infinite, or unknown (a stream)
    weight: float


@attrs.frozen
class Inspection:
    """The result of :func:`inspect_data` over ``sampled`` samples."""

    sources: list[SourceSummary]
    buckets: tuple[tuple[int, int], ...]
    bucket_counts: list[int]
    sampled: int
    bad: dict[str, int]
    bad_examples: list[tuple[str, str, str]]  # (id, reason, detail)
    caption_words: list[int]
    caption_chars: list[int]
    examples: list[tuple[str, str, np.ndarray]]  # (id, caption, (3, H, W) uint8)


def guess_kind(path: str) -> str:
    """The source kind of a path: "scenes", "parquet", "webdataset", "hf" (a save_to_disk
    directory), "mds" (a directory with index.json, or sub-directories with one) or "folder"."""
    from prx_core.data.hf import saved_to_disk

    if path == "scenes":
        return "scenes"
    low = path.lower()
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(".tar"):
        return "webdataset"
    if not files.exists(path):
        raise DataError(
            f"There is nothing at {path}: give a directory, a .parquet/.tar file or pattern, or 'scenes' (for a "
            "Hugging Face hub dataset, pass --kind hf)."
        )
    if not files.is_dir(path):
        raise DataError(f"{path} is neither a directory nor a .parquet/.tar file (or pattern); pass --kind.")
    if saved_to_disk(path):
        return "hf"
    names = files.list_tree(path)
    if any(n == MDS_INDEX or (n.endswith("/" + MDS_INDEX) and n.count("/") == 1) for n in names):
        return "mds"
    for suffix, kind in ((".parquet", "parquet"), (".tar", "webdataset")):
        if any(n.lower().endswith(suffix) for n in names):
            return kind
    if any(n.lower().endswith(IMAGE_SUFFIXES) for n in names):
        return "folder"
    raise DataError(f"{path} holds no images, .parquet, .tar or MDS files (pass --kind hf for a dataset directory).")


def data_for_path(path: str, kind: str | None = None, resolution: int = 512, **source_options) -> DataConfig:
    """A one-source ``[data]`` table for ``path`` (what ``prx data inspect PATH`` reads)."""
    kind = kind or guess_kind(path)
    source = SourceConfig(kind=kind, path="" if kind == "scenes" else path, **source_options)
    return DataConfig(resolution=resolution, sources=[source])


def inspect_data(
    data: DataConfig, *, resolution: int, patch: int, samples: int = 200, examples: int = 16, seed: int = 0
) -> Inspection:
    """Read up to ``samples`` random samples of each source (the first ``samples`` scenes)."""
    sources = open_sources(data, seed)
    weights = mixture_weights(data, sources)
    buckets = buckets_for(data, resolution, patch)
    reader = SampleReader(sources, buckets, data.min_side, seed)
    rng = np.random.default_rng(seed)
    counts = [0] * len(buckets)
    bad: collections.Counter[str] = collections.Counter()
    bad_examples, words, chars, shown = [], [], [], []
    total = 0
    for slot, source in enumerate(sources):
        if is_streaming(source):  # no random access: the first samples of the stream
            refs = [(slot, -1, raw) for raw in itertools.islice(source.iter_samples(), samples)]
        elif source.kind == "scenes":
            refs = [(slot, i) for i in range(samples)]
        else:
            picked = np.sort(rng.choice(len(source), size=min(samples, len(source)), replace=False))
            refs = [(slot, int(i)) for i in picked]
        for ref in refs:
            item = reader(ref)
            total += 1
            sample_id = f"{source.name}:{item.key}"
            if isinstance(item, Loaded):
                counts[item.bucket] += 1
                words.append(len(item.caption.split()))
                chars.append(len(item.caption))
                shown.append((sample_id, item.caption, item.pixels))
            else:
                bad[item.reason] += 1
                bad_examples.append((sample_id, item.reason, item.detail))
    picks = rng.permutation(len(shown))[:examples] if shown else []
    return Inspection(
        sources=[
            SourceSummary(s.name, s.kind, s.describe(), None if c.infinite else len(s), weights[s.name])
            for c, s in zip(data.sources, sources)
        ],
        buckets=buckets,
        bucket_counts=counts,
        sampled=total,
        bad=dict(bad),
        bad_examples=bad_examples,
        caption_words=words,
        caption_chars=chars,
        examples=[shown[i] for i in sorted(picks)],
    )


def length_stats(values: list[int]) -> dict[str, float]:
    """min / mean / median / p95 / max of a list of lengths (zeros when empty)."""
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0}
    array = np.asarray(values)
    return {
        "min": int(array.min()),
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "max": int(array.max()),
    }


def contact_sheet(examples: list[tuple[str, str, np.ndarray]], columns: int = 4, tile: int = 256) -> Image.Image:
    """A grid of samples, each fitted into a ``tile`` square with its id and caption below."""
    if not examples:
        raise DataError("No usable sample to draw: every sample read was bad (see the bad-sample table).")
    font = ImageFont.load_default(size=max(10, tile // 20))
    line_height = font.getbbox("Ag")[3] + 2
    chars_per_line = max(16, int(tile / (line_height * 0.55)))
    text_lines = 5
    cell_h = tile + text_lines * line_height + 8
    rows = (len(examples) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tile + 8) + 8, rows * cell_h + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, (sample_id, caption, pixels) in enumerate(examples):
        x, y = 8 + (n % columns) * (tile + 8), 8 + (n // columns) * cell_h
        image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
        scale = tile / max(image.size)  # small samples are enlarged (nearest: pixels stay visible)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
        sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        lines = [sample_id[:chars_per_line]] + textwrap.wrap(caption, chars_per_line)
        if len(lines) > text_lines:
            lines = lines[: text_lines - 1] + [lines[text_lines - 1][: chars_per_line - 1] + "…"]
        for k, line in enumerate(lines):
            draw.text((x, y + tile + 4 + k * line_height), line, fill=(90, 90, 90) if k == 0 else (0, 0, 0), font=font)
    return sheet
