"""The ``[data]`` table: where training images and captions come from and how they are batched.

A recipe lists its sources as an array of tables::

    [data]
    resolution = 512
    workers = 8
    sources = [
        { kind = "parquet", path = "/data/flux-1.7m", weight = 1.7 },
        { kind = "webdataset", path = "s3://bucket/reason-{000000..000599}.tar" },
        { kind = "folder", path = "/data/mj-v6" },
        { kind = "hf", path = "user/captioned-images", streaming = true, weight = 0.5 },
        { kind = "mds", path = "s3://bucket/prx-mds", cache_dir = "/scratch/mds" },
    ]
"""
from __future__ import annotations

from typing import ClassVar, Literal

import attrs

from prx_core.recipe.constraints import (
    NON_EMPTY_ARRAY,
    NON_EMPTY_STRING,
    Rule,
    at_least,
    between,
    config_problems,
    describe_violation,
    greater_than,
    setting,
)

SOURCE_KINDS = ("folder", "parquet", "webdataset", "hf", "mds", "scenes")
SCENE_SPLITS = ("train", "eval")


@attrs.define(kw_only=True)
class SourceConfig:
    """One entry of ``[data] sources``.

    - ``kind``: "folder" (images with ``.txt``/``.json`` caption sidecars of the same stem,
      searched recursively), "parquet" (shards with an image column and a caption column),
      "webdataset" (tar shards of ``key.jpg|png|webp`` + ``key.txt|json``), "hf" (a Hugging Face
      dataset: a ``save_to_disk`` directory, a local dataset directory that
      ``datasets.load_dataset`` reads, or a hub id; needs ``pip install 'prx[hf]'``), "mds"
      (MosaicML streaming shards: a directory with ``index.json``, or whose sub-directories hold
      one each) or "scenes" (the embedded procedural generator: infinite, rendered directly at
      the bucket size).
    - ``path``: a directory, a file, a glob (``shards/*.parquet``) or a brace range
      (``train-{000000..000099}.tar``); local, or any fsspec URL (``s3://...``) when fsspec and
      the filesystem's driver are installed. A hub id (``user/name``) for "hf". Not used by
      "scenes".
    - ``name``: the prefix of this source's sample ids (``name:sample-id``) and the key of its
      text cache; default: the last path component (``"scenes"`` for scenes).
    - ``weight``: share of the mixture, relative to the other sources' weights. Default: the
      source's size (natural proportions); required for every source when one is "scenes" or
      a streaming "hf" source (infinite, or of unknown size).
    - ``image_column`` / ``caption_column`` (parquet, hf, mds): column names. Default: detected
      (the column of image type, else one named image/img/jpg/png/...; the text column named
      caption/text/prompt/..., else the only text column); when it cannot decide, the error
      lists the columns. The image column holds encoded bytes, a ``{bytes, path}`` struct (as
      Hugging Face datasets write it) or a path; a caption column may hold a list of captions
      (the first non-empty one is used).
    - ``id_column`` (parquet, hf, mds): a column of sample ids; default: ``<file stem>/<row>``
      (parquet), the row number (hf), ``<shard>/<row>`` (mds, streaming hf).
    - ``caption_key``: the key holding the caption in ``.json`` sidecars (folder, webdataset)
      and in "json"-encoded MDS caption columns.
    - ``split``: "scenes": which split of the generator to draw ("train", or "eval" for
      held-out combinations); "hf": the dataset split (default "train").
    - ``subset`` (hf): the dataset's configuration name, for hub datasets that have several.
    - ``streaming`` (hf): read the dataset as a stream (``datasets``' streaming mode: nothing
      is downloaded or converted up front) instead of by random access. Each rank reads its own
      shards (or every n-th row when there are fewer shards than ranks) and shuffles
      ``[data] shuffle_window`` samples at a time; a resume re-reads at most one window.
    - ``cache_dir``: hf: the ``datasets`` cache (downloads and Arrow copies; default:
      ``datasets``' own, ``~/.cache/huggingface/datasets``); mds: where remote shards are
      downloaded and compressed shards decompressed (required for a URL; default for local
      compressed shards: a ``.prx-mds-cache`` folder next to ``index.json``).
    """

    kind: Literal["folder", "parquet", "webdataset", "hf", "mds", "scenes"]
    path: str = ""
    name: str = ""
    weight: float | None = setting(None, greater_than(0))
    image_column: str = ""
    caption_column: str = ""
    id_column: str = ""
    caption_key: str = setting("caption", NON_EMPTY_STRING)
    split: str = setting("train", NON_EMPTY_STRING)
    subset: str = ""
    streaming: bool = False
    cache_dir: str = ""

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("path", "kind"), 'path is set unless kind = "scenes"',
             lambda s: None if s.kind == "scenes" or s.path else
             f"kind = {s.kind!r} needs a path (directory, file, glob or URL)."),
        Rule(("split", "kind"), f'split is one of {SCENE_SPLITS} when kind = "scenes"',
             lambda s: f"a scenes source's split is one of {SCENE_SPLITS}."
             if s.kind == "scenes" and s.split not in SCENE_SPLITS else None),
        Rule(("streaming", "kind"), 'streaming = true only when kind = "hf"',
             lambda s: 'only kind = "hf" sources stream (the others read by index).'
             if s.streaming and s.kind != "hf" else None),
        Rule(("kind",), 'kind = "hf" needs the datasets library installed',
             lambda s: "needs the Hugging Face datasets library: pip install 'prx[hf]' (or pip install datasets)."
             if s.kind == "hf" and not _has_module("datasets") else None),
    )

    @property
    def infinite(self) -> bool:
        """True when the source has no size to weigh it by (scenes, a streaming dataset)."""
        return self.kind == "scenes" or (self.kind == "hf" and self.streaming)


def _default_sources() -> list[SourceConfig]:
    return [SourceConfig(kind="scenes")]


@attrs.define(kw_only=True)
class DataConfig:
    """The ``[data]`` table.

    - ``resolution``: the target side in pixels. A batch holds ``(resolution / patch)²`` tokens
      per image, whatever its bucket. The resolution schedule (``[multires]``) overrides it per
      phase.
    - ``sources``: list of :class:`SourceConfig` tables, mixed by weight.
    - ``buckets``: aspect-ratio buckets of about constant token count, ratios 0.5-2, sides
      multiples of the patch; every batch holds one bucket. ``false``: every image is
      centre-cropped to a ``resolution`` square.
    - ``bucket_sizes``: ``"prx"``: PRX's lists (13 buckets at 512 px, 27 at 1024 px, none with
      more tokens than the square); ``"nearest_area"``: each bucket's area closest to the
      square's (13 at 512 px, 27 at 1024 px, up to 3 % more tokens). See prx_core.data.buckets.
    - ``workers``: decoding processes per rank; 0 decodes on the calling thread (the quickstart).
    - ``prefetch``: batches assembled ahead by a background thread when ``workers > 0``.
    - ``min_side``: images whose shorter side is below this many pixels are skipped (counted as
      ``bad/too_small``) and smaller images are upscaled. Default (unset): upscale an image when
      it covers at least half of its bucket's width and height, skip it otherwise.
    - ``max_bad_share`` / ``bad_window``: the run stops with a ``DataError`` naming the source and
      the sample ids when more than this share of the last ``bad_window`` samples were unusable
      (unreadable, truncated, empty, without caption, too small, unsupported pixel mode).
    - ``shuffle_row_groups``: Parquet row groups (and compressed or remote MDS shards) whose
      rows are shuffled together. Rows are read a whole row group at a time, so each worker
      keeps this many row groups in memory.
    - ``shuffle_window``: samples of a streaming "hf" source read ahead and shuffled together
      (held in memory as encoded bytes; a resume re-reads the current window).
    - ``text_cache``: take text-encoder outputs from a cache built by ``prx data cache`` instead
      of running the encoder in the training step (not available for "scenes").
    - ``text_cache_dir``: where caches live, one sub-folder per source name; default: a
      ``.prx-text-cache`` folder next to each source's data.
    """

    resolution: int = setting(512, at_least(1))
    sources: list[SourceConfig] = setting(attrs.Factory(_default_sources), NON_EMPTY_ARRAY)
    buckets: bool = True
    bucket_sizes: Literal["prx", "nearest_area"] = "prx"
    workers: int = setting(0, at_least(0))
    prefetch: int = setting(2, at_least(1))
    min_side: int | None = setting(None, at_least(0))
    max_bad_share: float = setting(0.1, between(0, 1, high_strict=True))
    bad_window: int = setting(1000, at_least(1))
    shuffle_row_groups: int = setting(4, at_least(1))
    shuffle_window: int = setting(1000, at_least(1))
    text_cache: bool = False
    text_cache_dir: str = ""

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("sources",), "source names are distinct", lambda d: _duplicate_names(d.sources)),
        Rule(("sources",), "every source has a weight, or none does; every one when a source is scenes or a "
             "streaming hf source", lambda d: _weights_problem(d.sources)),
        Rule(("text_cache", "sources"), "text_cache = true only without scenes sources",
             lambda d: "cannot serve a scenes source (its captions are generated on the fly): set text_cache = false, "
             "or use only stored sources (folder, parquet, webdataset, hf, mds)."
             if d.text_cache and any(s.kind == "scenes" for s in d.sources) else None),
    )

    def problems(self) -> list[str]:
        """Values that cannot work, each naming the key and what to change (empty if none)."""
        return [describe_violation(v) for v in config_problems(self, ("data",))]


def _duplicate_names(sources: list[SourceConfig]) -> str | None:
    names = [source_name(source) for source in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    return f"names {duplicates} are used twice; give each source a distinct name = ...." if duplicates else None


def _weights_problem(sources: list[SourceConfig]) -> str | None:
    weighted = [s.weight is not None for s in sources]
    if all(weighted):
        return None
    if any(s.infinite for s in sources) and len(sources) > 1:
        return ("a scenes source is infinite and a streaming hf source has no known size, so a mixture with one has "
                "no natural proportions: give every source a weight.")
    if any(weighted):
        return "give every source a weight, or none (natural proportions = sizes)."
    return None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def source_name(source: SourceConfig) -> str:
    """The source's id prefix: ``name`` if set, else the last path component (without pattern)."""
    if source.name:
        return source.name
    if source.kind == "scenes":
        return "scenes" if source.split == "train" else f"scenes-{source.split}"
    tail = source.path.rstrip("/").rsplit("/", 1)[-1]
    for mark in ("*", "?", "[", "{"):
        if mark in tail:
            tail = source.path.rstrip("/").rsplit("/", 2)[-2] if source.path.count("/") else source.kind
            break
    stem = tail.split(".", 1)[0]
    return stem or source.kind
