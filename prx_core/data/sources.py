"""The kinds of training-data source, each with random access to its samples by index.

A source is built once per process from its :class:`SourceConfig` (listing files, reading
Parquet footers, scanning tar headers) and then only reads: ``read(i)`` returns the encoded
image and the caption of sample ``i``. Sources are plain picklable objects so that the loader's
worker processes can hold a copy; per-process caches are rebuilt on demand after unpickling.

``blocks`` are the units that must be read whole (Parquet row groups); the sampler shuffles
blocks and shards them across ranks, then shuffles rows within a few blocks at a time, so each
worker reads each row group once instead of once per row.
"""
from __future__ import annotations

import collections
import json
import posixpath
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Union

import attrs
import numpy as np

from prx_core.data import files
from prx_core.data.columns import Column, choose_columns
from prx_core.data.config import SOURCE_KINDS, SourceConfig, source_name
from prx_core.data.decode import BadSample
from prx_core.data.scenes import render_scene, scene_for_index
from prx_core.errors import DataError

if TYPE_CHECKING:
    from prx_core.data.hf import HFSource, HFStreamSource
    from prx_core.data.mds import MDSSource

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_SUFFIXES = (".txt", ".json")


@attrs.frozen
class RawSample:
    """One sample as stored: ``key`` (unique within the source), encoded image, caption
    (None when the sample has none)."""

    key: str
    image: bytes
    caption: str | None


@attrs.frozen
class Unreadable:
    """A sample of a stream that could not be read (its image file is missing, ...): it is
    counted as bad with ``reason`` like any other, where it would have been decoded."""

    key: str
    reason: str
    detail: str


def parse_caption(data: bytes, suffix: str, caption_key: str, where: str) -> str | None:
    """A caption from a ``.txt`` or ``.json`` payload; a JSON list of captions gives its first."""
    try:
        if suffix == ".txt":
            return data.decode("utf-8").strip()
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSample("bad_caption", f"{where}: {err}") from None
    if isinstance(value, dict):
        value = value.get(caption_key)
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value.strip() if isinstance(value, str) else None


def captions_by_index(source) -> Iterator[str | None]:
    """Every caption of a finite source in index order; None where a sample's caption is
    missing or unreadable (what the text cache builder needs). The ``iter_captions`` of sources
    that read captions one sample at a time; Parquet reads its caption column instead."""
    for index in range(len(source)):
        try:
            yield source.caption(index)
        except BadSample:
            yield None


class FolderSource:
    """Images under a directory, each with an optional ``stem.txt`` or ``stem.json`` sidecar."""

    kind = "folder"

    def __init__(self, config: SourceConfig):
        self.name = source_name(config)
        self.path = config.path
        self.caption_key = config.caption_key
        if not files.is_dir(config.path):
            raise DataError(
                f"[data] source {self.name!r}: {config.path} is not a directory. A folder source is a "
                "directory of images with .txt/.json caption files of the same name."
            )
        listing = files.list_tree(config.path)
        by_stem: dict[str, list[str]] = collections.defaultdict(list)
        for rel in listing:
            stem, dot, suffix = rel.rpartition(".")
            if dot and "." + suffix.lower() in CAPTION_SUFFIXES:
                by_stem[stem].append(rel)
        self.images: list[str] = []
        self.sidecars: list[str] = []
        for rel in listing:
            stem, dot, suffix = rel.rpartition(".")
            if dot and "." + suffix.lower() in IMAGE_SUFFIXES:
                self.images.append(rel)
                sidecars = sorted(by_stem.get(stem, ()), key=lambda p: not p.lower().endswith(".txt"))
                self.sidecars.append(sidecars[0] if sidecars else "")
        if not self.images:
            raise DataError(
                f"[data] source {self.name!r}: no images ({', '.join(IMAGE_SUFFIXES)}) under {config.path}."
            )
        self.blocks = None

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        return f"{len(self)} images in {self.path}"

    def key(self, index: int) -> str:
        return self.images[index].rpartition(".")[0]

    def caption(self, index: int) -> str | None:
        sidecar = self.sidecars[index]
        if not sidecar:
            return None
        path = files.join(self.path, sidecar)
        suffix = "." + sidecar.rpartition(".")[2].lower()
        return parse_caption(files.read_bytes(path), suffix, self.caption_key, path)

    def read(self, index: int) -> RawSample:
        path = files.join(self.path, self.images[index])
        try:
            image = files.read_bytes(path)
        except FileNotFoundError:
            raise BadSample("missing", path) from None
        return RawSample(self.key(index), image, self.caption(index))

    iter_captions = captions_by_index


class ParquetSource:
    """Parquet shards with an image column (bytes, or a ``{bytes, path}`` struct) and a caption
    column; read one row group at a time, keeping the last few in a per-process cache."""

    kind = "parquet"

    def __init__(self, config: SourceConfig, cached_row_groups: int = 4):
        import pyarrow.parquet as pq

        self.name = source_name(config)
        self.path = config.path
        self.id_column = config.id_column
        self.cached_row_groups = cached_row_groups
        self.files = files.find_files(config.path, (".parquet",), "Parquet")
        group_file, group_index, group_rows, file_first_group = [], [], [], []
        for file_index, path in enumerate(self.files):
            with files.open_binary(path) as handle:
                parquet = pq.ParquetFile(handle)
                if file_index == 0:
                    self.image_column, self.caption_column = choose_columns(
                        arrow_columns(parquet.schema_arrow), config.image_column, config.caption_column,
                        f"[data] source {self.name!r}: {path}",
                    )
                self._check_columns(path, parquet.schema_arrow.names)
                file_first_group.append(len(group_rows))
                for g in range(parquet.metadata.num_row_groups):
                    group_file.append(file_index)
                    group_index.append(g)
                    group_rows.append(parquet.metadata.row_group(g).num_rows)
        self.group_file = np.asarray(group_file, dtype=np.int64)
        self.group_index = np.asarray(group_index, dtype=np.int64)
        rows = np.asarray(group_rows, dtype=np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(rows)])
        self.file_first_group = np.asarray(file_first_group, dtype=np.int64)
        self.blocks = rows
        if self.group_start[-1] == 0:
            raise DataError(f"[data] source {self.name!r}: the Parquet files at {config.path} hold no rows.")
        self._cache: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    def _check_columns(self, path: str, names: list[str]) -> None:
        wanted = {"image_column": self.image_column, "caption_column": self.caption_column}
        if self.id_column:
            wanted["id_column"] = self.id_column
        for key, column in wanted.items():
            if column not in names:
                raise DataError(
                    f"[data] source {self.name!r}: {path} has no column {column!r} (its columns: "
                    f"{', '.join(names)}). Set {key} = \"...\" in this source's entry of [data] sources."
                )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": collections.OrderedDict()}

    def __len__(self) -> int:
        return int(self.group_start[-1])

    def describe(self) -> str:
        return f"{len(self)} rows in {len(self.blocks)} row groups of {len(self.files)} Parquet files at {self.path}"

    def _locate(self, index: int) -> tuple[int, int]:
        group = int(np.searchsorted(self.group_start, index, side="right")) - 1
        return group, index - int(self.group_start[group])

    def _row_group(self, group: int, columns: tuple[str, ...]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        cached = self._cache.get(group)
        if cached is not None and all(c in cached for c in columns):
            self._cache.move_to_end(group)
            return cached
        path = self.files[int(self.group_file[group])]
        with files.open_binary(path) as handle:
            table = pq.ParquetFile(handle).read_row_group(int(self.group_index[group]), columns=list(columns))
        cached = {c: table.column(c) for c in columns}
        self._cache[group] = cached
        while len(self._cache) > self.cached_row_groups:
            self._cache.popitem(last=False)
        return cached

    def key(self, index: int) -> str:
        group, row = self._locate(index)
        if self.id_column:
            return str(self._row_group(group, (self.id_column,))[self.id_column][row].as_py())
        file_index = int(self.group_file[group])
        first = int(self.group_start[self.file_first_group[file_index]])
        stem = self.files[file_index].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return f"{stem}/{index - first}"

    def read(self, index: int) -> RawSample:
        group, row = self._locate(index)
        columns = (self.image_column, self.caption_column) + ((self.id_column,) if self.id_column else ())
        table = self._row_group(group, columns)
        base = posixpath.dirname(self.files[int(self.group_file[group])])
        image = image_value(table[self.image_column][row].as_py(), base)
        return RawSample(self.key(index), image, caption_value(table[self.caption_column][row].as_py()))

    def caption(self, index: int) -> str | None:
        group, row = self._locate(index)
        return caption_value(self._row_group(group, (self.caption_column,))[self.caption_column][row].as_py())

    def iter_captions(self) -> Iterator[str | None]:
        import pyarrow.parquet as pq

        for path in self.files:
            with files.open_binary(path) as handle:
                parquet = pq.ParquetFile(handle)
                for g in range(parquet.metadata.num_row_groups):
                    column = parquet.read_row_group(g, columns=[self.caption_column]).column(0)
                    yield from (caption_value(v) for v in column.to_pylist())


def image_value(value: Any, base: str) -> bytes:
    """Encoded image bytes from a column value: bytes, a ``{bytes, path}`` struct (Hugging Face
    datasets' layout; ``bytes`` may be null) or a path; relative paths are relative to ``base``.
    Bytes that are present but empty stay empty (the decoder counts them as "empty"): the path
    beside them only names the file the image once came from."""
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, str) and value:
        path = value if files.is_url(value) or value.startswith("/") else files.join(base, value)
        try:
            return files.read_bytes(path)
        except FileNotFoundError:
            raise BadSample("missing", path) from None
    return bytes(value or b"")


def caption_value(value: Any) -> str | None:
    """A caption from a column value: a string, or the first non-empty string of a list."""
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value.strip() if isinstance(value, str) else None


def arrow_columns(schema) -> list[Column]:
    """The columns of an Arrow schema with their roles (see :class:`Column`)."""
    import pyarrow as pa

    out = []
    for field in schema:
        kind = field.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or (
            pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
        ):
            role = "binary"
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or (
            (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type)
        ):
            role = "text"
        else:
            role = "other"
        out.append(Column(field.name, role, str(kind)))
    return out


class WebDatasetSource:
    """WebDataset tar shards: members ``<key>.<ext>`` grouped by key; an image (jpg, jpeg, png,
    webp) and a caption (txt, json) per key. The member headers are scanned once to index byte
    offsets, so any sample is one ranged read."""

    kind = "webdataset"

    def __init__(self, config: SourceConfig):
        self.name = source_name(config)
        self.path = config.path
        self.caption_key = config.caption_key
        self.shards = files.find_files(config.path, (".tar",), "tar")
        keys: list[str] = []
        columns: dict[str, list[int]] = {n: [] for n in ("shard", "image_at", "image_size", "caption_at", "caption_size")}
        caption_json: list[bool] = []
        for shard_index, shard in enumerate(self.shards):
            for key, image, caption in self._scan(shard):
                keys.append(key)
                columns["shard"].append(shard_index)
                columns["image_at"].append(image[0])
                columns["image_size"].append(image[1])
                columns["caption_at"].append(caption[0] if caption else -1)
                columns["caption_size"].append(caption[1] if caption else -1)
                caption_json.append(bool(caption) and caption[2] == ".json")
        if not keys:
            raise DataError(
                f"[data] source {self.name!r}: the tar files at {config.path} hold no image members "
                f"({', '.join(IMAGE_SUFFIXES)})."
            )
        self.keys = keys
        self.index = {name: np.asarray(values, dtype=np.int64) for name, values in columns.items()}
        self.caption_json = np.asarray(caption_json, dtype=bool)
        self.blocks = None

    def _scan(self, shard: str) -> Iterator[tuple[str, tuple[int, int], tuple[int, int, str] | None]]:
        images: dict[str, tuple[int, int]] = {}
        captions: dict[str, tuple[int, int, str]] = {}
        try:
            with files.open_binary(shard) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    directory, _, base = member.name.rpartition("/")
                    stem, dot, suffix = base.partition(".")
                    if not dot:
                        continue
                    key = f"{directory}/{stem}" if directory and directory != "." else stem
                    suffix = "." + suffix.lower()
                    if suffix in IMAGE_SUFFIXES:
                        images.setdefault(key, (member.offset_data, member.size))
                    elif suffix in CAPTION_SUFFIXES:
                        if key not in captions or suffix == ".txt":
                            captions[key] = (member.offset_data, member.size, suffix)
        except tarfile.TarError as err:
            raise DataError(
                f"[data] source {self.name!r}: {shard} is not a readable uncompressed tar ({err}). "
                "WebDataset shards must be plain .tar files (not .tar.gz) for random access."
            ) from None
        for key in images:
            yield key, images[key], captions.get(key)

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self) -> str:
        return f"{len(self)} samples in {len(self.shards)} tar shards at {self.path}"

    def key(self, index: int) -> str:
        return self.keys[index]

    def caption(self, index: int) -> str | None:
        size = int(self.index["caption_size"][index])
        if size < 0:
            return None
        shard = self.shards[int(self.index["shard"][index])]
        data = files.read_bytes(shard, int(self.index["caption_at"][index]), size)
        suffix = ".json" if self.caption_json[index] else ".txt"
        return parse_caption(data, suffix, self.caption_key, f"{shard}:{self.keys[index]}{suffix}")

    def read(self, index: int) -> RawSample:
        shard = self.shards[int(self.index["shard"][index])]
        image = files.read_bytes(shard, int(self.index["image_at"][index]), int(self.index["image_size"][index]))
        return RawSample(self.keys[index], image, self.caption(index))

    iter_captions = captions_by_index


class SceneSource:
    """The embedded procedural scene generator: infinite, deterministic by index, rendered
    directly at the requested size (no decode, no resize)."""

    kind = "scenes"
    blocks = None

    def __init__(self, config: SourceConfig, seed: int):
        self.name = source_name(config)
        self.split = config.split
        self.seed = seed

    def describe(self) -> str:
        return f"procedural scenes (split {self.split!r}, seed {self.seed}), infinite"

    def key(self, index: int) -> str:
        return str(index)

    def caption(self, index: int) -> str:
        return scene_for_index(index, self.split, self.seed).caption()

    def render(self, index: int, width: int, height: int) -> tuple[str, np.ndarray]:
        """``(caption, (3, height, width) uint8)`` of scene ``index``."""
        scene = scene_for_index(index, self.split, self.seed)
        pixels = render_scene(scene, height, width, index=index, seed=self.seed)
        return scene.caption(), np.ascontiguousarray(pixels.transpose(2, 0, 1))


Source = Union[FolderSource, ParquetSource, WebDatasetSource, SceneSource, "HFSource", "HFStreamSource", "MDSSource"]


def open_source(config: SourceConfig, seed: int = 0, shuffle_row_groups: int = 4) -> Source:
    """Index one source (raises DataError when its data cannot be found or read)."""
    if config.kind == "folder":
        return FolderSource(config)
    if config.kind == "parquet":
        return ParquetSource(config, cached_row_groups=shuffle_row_groups + 1)
    if config.kind == "webdataset":
        return WebDatasetSource(config)
    if config.kind == "hf":
        from prx_core.data.hf import HFSource, HFStreamSource

        return HFStreamSource(config) if config.streaming else HFSource(config)
    if config.kind == "mds":
        from prx_core.data.mds import MDSSource

        return MDSSource(config)
    if config.kind == "scenes":
        return SceneSource(config, seed)
    raise DataError(f"[data] sources: unknown kind {config.kind!r}; use one of {', '.join(SOURCE_KINDS)}.")


def is_streaming(source: Source) -> bool:
    """A source read as a stream (no length, no random access)."""
    return getattr(source, "streaming", False)
