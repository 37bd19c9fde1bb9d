"""``prx data inspect|cache|convert``: look at training data before training on it; precompute
the text encoder's outputs so that training does not run the encoder; convert a source into
Parquet, WebDataset or MDS shards."""
from __future__ import annotations

import argparse
import sys

from prx_core.cli.common import add_set_argument
from prx_core.data.config import DataConfig
from prx_core.data.config import SOURCE_KINDS
from prx_core.data.convert import MDS_IMAGE_ENCODINGS, TARGETS
from prx_core.data.inspection import (
    Inspection, SourceSummary, contact_sheet, data_for_path, guess_kind, inspect_data, length_stats,
)
from prx_core.errors import DataError

DATA_SET_HELP = "override a recipe value (repeatable), e.g. --set data.resolution=256"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect training data, build its text-embedding cache",
        description="Work with training data: the sources of a recipe's [data] table, or one path.",
        epilog="Example: prx data inspect --recipe recipes/quickstart.toml",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = actions.add_parser(
        "inspect",
        help="counts, aspect-ratio buckets, caption lengths, bad samples and a contact sheet",
        description="Read a random sample of a source (a folder of images with .txt/.json captions, Parquet "
        "shards, WebDataset tars, or 'scenes') through the training loader's reader and report what training "
        "would see. Give a path, or --recipe to inspect a recipe's [data] sources.",
    )
    inspect.add_argument("source", nargs="?", metavar="SOURCE", help="path, glob, brace range, URL or 'scenes'")
    add_source_arguments(inspect)
    inspect.add_argument("--recipe", metavar="RECIPE", help="inspect this recipe's [data] sources instead")
    add_set_argument(inspect, DATA_SET_HELP)
    inspect.add_argument("--resolution", type=int, help="target side (default: the recipe's, else 512)")
    inspect.add_argument("--patch", type=int, help="patch size (default: the recipe model's, else 32)")
    inspect.add_argument("--no-buckets", action="store_true", help="square centre crops instead of buckets")
    inspect.add_argument("--samples", type=int, default=200, help="samples read per source (default: 200)")
    inspect.add_argument("--examples", type=int, default=16, help="samples on the contact sheet (default: 16)")
    inspect.add_argument("--seed", type=int, default=0, help="which random samples (default: 0)")
    inspect.add_argument("--out", default="prx-data-inspect.png", help="contact sheet PNG (default: %(default)s)")
    inspect.set_defaults(func=_inspect)

    cache = actions.add_parser(
        "cache",
        help="precompute the text encoder's outputs for every caption of a recipe's sources",
        description="Encode every distinct caption of the recipe's [data] sources with its [text] encoder and "
        "store the outputs next to the data (or in [data] text_cache_dir). Runs with text_cache = true then "
        "read them instead of running the encoder; a cache built by another encoder or max length is refused.",
    )
    cache.add_argument("--recipe", required=True, metavar="RECIPE", help="recipe whose [data] and [text] to use")
    add_set_argument(cache, DATA_SET_HELP)
    cache.add_argument("--batch-size", type=int, default=64, help="captions per encoder call (default: 64)")
    cache.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    cache.add_argument("--force", action="store_true", help="replace an existing cache built differently")
    cache.set_defaults(func=_cache)

    convert = actions.add_parser(
        "convert",
        help="convert a source (folder, parquet, webdataset, hf, mds) into Parquet, WebDataset or MDS shards",
        description="Read every sample of SOURCE in order and write it into OUT (a new or empty directory) as\n"
        "Parquet files (image, caption and key columns), WebDataset tars (<key>.jpg|png|webp + <key>.txt)\n"
        "or MosaicML streaming MDS shards (index.json + shard.NNNNN.mds; columns image, caption, key).\n"
        "Images are copied byte for byte unless the target cannot hold their format. Samples without a\n"
        "caption or with an unreadable image are skipped and counted by reason.",
        epilog="Examples:\n  prx data convert /data/my-hf-dataset --to mds /data/my-mds --compression zstd\n"
        "  prx data convert user/captioned-images --kind hf --streaming --to wds /data/wds --shard-size 1GB\n"
        "  prx data convert /data/mds --to parquet /data/parquet --limit 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source", metavar="SOURCE", help="path, glob, URL, or hub id (with --kind hf)")
    convert.add_argument("--to", required=True, choices=TARGETS, dest="target", help="output format")
    convert.add_argument("out", metavar="OUT", help="output directory (new or empty)")
    add_source_arguments(convert)
    convert.add_argument("--shard-size", default="64MB", help="bytes per output shard (default: %(default)s)")
    convert.add_argument("--compression", help="MDS shard compression: zstd, zstd:LEVEL, gz, bz2, br or snappy")
    convert.add_argument("--image-encoding", default="bytes", choices=MDS_IMAGE_ENCODINGS,
                         help="MDS image column encoding (default: bytes, any format as stored; jpeg/png "
                         "re-encode other formats)")  # fmt: skip
    convert.add_argument("--verify", action="store_true", help="decode every image fully (finds truncated files)")
    convert.add_argument("--limit", type=int, help="convert only the first N samples")
    convert.set_defaults(func=_convert)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """How to read one SOURCE path: its kind and the kind-specific settings of [data] sources."""
    parser.add_argument("--kind", choices=SOURCE_KINDS, help="default: guessed from the path")
    parser.add_argument("--image-column", default="", help="image column (parquet, hf, mds; default: detected)")
    parser.add_argument("--caption-column", default="", help="caption column (parquet, hf, mds; default: detected)")
    parser.add_argument("--split", default="train", help="hf: dataset split (default: %(default)s)")
    parser.add_argument("--subset", default="", help="hf: dataset configuration name")
    parser.add_argument("--streaming", action="store_true", help="hf: read as a stream (nothing downloaded up front)")
    parser.add_argument("--cache-dir", default="", help="hf: datasets cache; mds: local copy of remote shards")


def source_options(args: argparse.Namespace) -> dict:
    """The SourceConfig settings given by :func:`add_source_arguments`."""
    options = {"image_column": args.image_column, "caption_column": args.caption_column,
               "cache_dir": args.cache_dir}  # fmt: skip
    if (args.kind or "") == "hf":
        options.update(split=args.split, subset=args.subset, streaming=args.streaming)
    return options


def _recipe_data(args: argparse.Namespace) -> tuple[DataConfig, int]:
    from prx_core.model.config import PRESETS
    from prx_core.recipe.loader import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    patch = recipe.model.patch if recipe.model.patch is not None else PRESETS[recipe.model.preset]["patch"]
    return recipe.data, patch


def _inspect(args: argparse.Namespace) -> int:
    if args.recipe:
        data, patch = _recipe_data(args)
    elif args.source:
        if args.kind is None:
            args.kind = guess_kind(args.source)
        data, patch = data_for_path(args.source, args.kind, **source_options(args)), 32
    else:
        raise DataError("prx data inspect needs a SOURCE path (or 'scenes'), or --recipe RECIPE.")
    if args.resolution:
        data.resolution = args.resolution
    if args.patch:
        patch = args.patch
    if args.no_buckets:
        data.buckets = False
    report = inspect_data(
        data, resolution=data.resolution, patch=patch, samples=args.samples, examples=args.examples, seed=args.seed
    )
    sheet = contact_sheet(report.examples) if report.examples else None
    if sheet is not None:
        sheet.save(args.out)
    if sys.stdout.isatty():
        _print_rich(report, data.resolution, patch)
    else:
        _print_plain(report, data.resolution, patch)
    print(f"contact sheet: {args.out}" if sheet is not None else "contact sheet: none (no usable sample)")
    return 0


def _size(source: SourceSummary) -> str:
    if source.size is not None:
        return f"{source.size:,}"
    return "infinite" if source.kind == "scenes" else "unknown"


def _rows(report: Inspection) -> dict[str, list[list[str]]]:
    """Every table of the report as rows of strings (shared by the rich and plain output)."""
    sources = [
        [s.name, s.kind, _size(s), f"{s.weight:.3f}", s.description]
        for s in report.sources
    ]
    peak = max(report.bucket_counts) or 1
    buckets = [
        [f"{w}x{h}", f"{w / h:.2f}", str(n), "#" * round(30 * n / peak)]
        for (w, h), n in zip(report.buckets, report.bucket_counts)
    ]
    captions = []
    for label, values in (("words", report.caption_words), ("characters", report.caption_chars)):
        stats = length_stats(values)
        captions.append([label] + [f"{stats[k]:.1f}" if isinstance(stats[k], float) else str(stats[k]) for k in stats])
    bad = [[reason, str(n)] for reason, n in sorted(report.bad.items(), key=lambda kv: -kv[1])]
    examples = [[sample_id, reason, detail[:100]] for sample_id, reason, detail in report.bad_examples[:10]]
    return {"sources": sources, "buckets": buckets, "captions": captions, "bad": bad, "bad examples": examples}


HEADERS = {
    "sources": ["source", "kind", "samples", "weight", "description"],
    "buckets": ["bucket (WxH px)", "ratio", "count", ""],
    "captions": ["caption length", "min", "mean", "median", "p95", "max"],
    "bad": ["bad reason", "count"],
    "bad examples": ["sample", "reason", "detail"],
}


def _title(report: Inspection, resolution: int, patch: int) -> str:
    good = sum(report.bucket_counts)
    return f"{report.sampled} samples read at {resolution}px (patch {patch}): {good} usable, {report.sampled - good} bad"


def _print_rich(report: Inspection, resolution: int, patch: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{_title(report, resolution, patch)}")
    for name, rows in _rows(report).items():
        if not rows:
            continue
        table = Table(title=name, title_justify="left")
        for header in HEADERS[name]:
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _print_plain(report: Inspection, resolution: int, patch: int) -> None:
    print(_title(report, resolution, patch))
    for name, rows in _rows(report).items():
        if not rows:
            continue
        print(f"\n{name}:")
        table = [HEADERS[name]] + rows
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _cache(args: argparse.Namespace) -> int:
    import torch

    from prx_core.data.loader import open_sources, text_cache_dirs
    from prx_core.data.text_cache import build_text_cache
    from prx_core.recipe.loader import load_recipe
    from prx_core.text import load_text_encoder

    recipe = load_recipe(args.recipe, args.overrides)
    if any(s.kind == "scenes" for s in recipe.data.sources):
        raise DataError(
            f"{args.recipe}: [data] sources include 'scenes', whose captions are generated on the fly and "
            "cannot be cached; the text cache is for folder, parquet and webdataset sources."
        )
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    sources = open_sources(recipe.data, recipe.seed)
    directories = text_cache_dirs(recipe.data, sources)
    encoder = load_text_encoder(recipe.text, device)
    for source, directory in zip(sources, directories):
        print(f"{source.name}: {source.describe()} -> {directory}")
        manifest = build_text_cache(
            source.iter_captions(), directory, encoder, batch_size=args.batch_size, force=args.force
        )
        print(f"{source.name}: {manifest['captions']} distinct captions cached")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from prx_core.data.config import SourceConfig
    from prx_core.data.convert import convert, parse_size

    kind = args.kind or guess_kind(args.source)
    args.kind = kind
    source = SourceConfig(kind=kind, path=args.source, **source_options(args))
    problems = DataConfig(sources=[source]).problems()
    if problems:
        raise DataError(" ".join(problems))
    shard_bytes = parse_size(args.shard_size)
    with _progress(f"{args.source} -> {args.target}") as progress:
        report = convert(source, args.target, args.out, shard_bytes=shard_bytes, compression=args.compression,
                         image_encoding=args.image_encoding, verify=args.verify, limit=args.limit,
                         progress=progress)  # fmt: skip
    skipped = sum(report.skipped.values())
    print(f"wrote {report.written} samples into {len(report.files)} files in {args.out} ({args.target}); "
          f"skipped {skipped}; re-encoded {report.re_encoded}")  # fmt: skip
    for reason, count in report.skipped.most_common():
        print(f"  skipped {count} {reason} (e.g. {report.examples[reason][:150]})")
    return 0


class _progress:
    """A rich progress bar on a terminal, else a plain line every 10 % (or 5000 samples when
    the total is unknown); used as ``with _progress(label) as update: update(done, total)``."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.task = None
        self.next_report = 0

    def __enter__(self):
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn())  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
            return
        if done >= self.next_report or done == total:
            print(f"{self.label}: {done}" + (f" of {total}" if total else "") + " samples", flush=True)
            self.next_report = done + (max(1, total // 10) if total else 5000)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
