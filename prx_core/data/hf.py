"""Hugging Face datasets as training data (``kind = "hf"``; needs ``pip install 'prx[hf]'``).

``path`` is a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a
local directory that ``datasets.load_dataset(path)`` reads (Parquet, Arrow, JSON/CSV or image
files, with or without a dataset card), or a hub id (``user/name``, downloaded into the
``datasets`` cache unless ``HF_HUB_OFFLINE=1``).

Map-style (default): :class:`HFSource` reads rows by index from the memory-mapped Arrow data,
so it shards, shuffles and resumes exactly like a Parquet source. Streaming
(``streaming = true``): :class:`HFStreamSource` opens an ``IterableDataset`` (nothing is
downloaded or converted up front); it has no random access, so the sampling order comes from
:class:`prx_core.data.stream_order.StreamOrder`, which reads the stream in the main process and
hands the encoded samples to the decoding workers.

Images are never decoded by ``datasets``: the ``Image`` feature is read as its stored
``{bytes, path}`` struct and decoded by the loader's own reader, like every other source.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prx_core.data import files
from prx_core.data.columns import Column, choose_columns
from prx_core.data.config import SourceConfig, source_name
from prx_core.data.decode import BadSample
from prx_core.data.sources import RawSample, Unreadable, caption_value, image_value
from prx_core.errors import DataError

EXTRA = "pip install 'prx[hf]' (or pip install datasets)"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(f'kind = "hf" sources need the Hugging Face datasets library: {EXTRA}.') from None
    return datasets


def saved_to_disk(path: str) -> bool:
    """Whether ``path`` is a directory written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    markers = (("state.json", "dataset_info.json"), ("dataset_dict.json",))
    try:
        return any(all(files.exists(files.join(path, m)) for m in group) for group in markers)
    except DataError:
        return False


def open_dataset(config: SourceConfig, streaming: bool) -> Any:
    """The ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) of ``config``'s split."""
    datasets = _datasets()
    where = f"[data] source {source_name(config)!r} ({config.path})"
    if saved_to_disk(config.path):
        loaded = datasets.load_from_disk(config.path)
        if isinstance(loaded, datasets.DatasetDict):
            if config.split not in loaded:
                raise DataError(
                    f"{where} has splits {sorted(loaded)}, not {config.split!r}: set split = \"...\" in this "
                    "source's entry of [data] sources."
                )
            loaded = loaded[config.split]
        return loaded.to_iterable_dataset(num_shards=max(1, len(loaded.cache_files))) if streaming else loaded
    try:
        return datasets.load_dataset(
            config.path, config.subset or None, split=config.split, streaming=streaming,
            cache_dir=config.cache_dir or None,
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the message says what happened
        raise DataError(
            f"{where}: datasets.load_dataset could not open it ({type(err).__name__}: {err}). The path must be a "
            "save_to_disk directory, a local directory of data files (Parquet, Arrow, JSON, CSV or images), or a "
            "hub id; check split (and subset, for datasets with several configurations). Offline "
            "(HF_HUB_OFFLINE=1) a hub dataset must already be in the datasets cache."
        ) from None


def hf_columns(features: Any) -> list[Column]:
    """The columns of a ``datasets.Features`` with their roles (see :class:`Column`)."""
    datasets = _datasets()
    out = []
    for name, feature in (features or {}).items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.Image):
            out.append(Column(name, "image", "Image"))
        elif isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
            out.append(Column(name, "binary", feature.dtype))
        elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            out.append(Column(name, "text", feature.dtype))
        elif isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string"):
            out.append(Column(name, "text", "list of string"))
        elif isinstance(feature, dict) and "bytes" in feature:
            out.append(Column(name, "binary", "struct with bytes"))
        else:
            out.append(Column(name, "other", type(feature).__name__))
    return out


def _base(config: SourceConfig) -> str:
    """Where relative image paths point: the dataset directory (local data), else nowhere."""
    return config.path if files.is_dir(config.path) else ""


class HFSource:
    """A map-style Hugging Face dataset, read by row index."""

    kind = "hf"
    blocks = None

    def __init__(self, config: SourceConfig):
        self.name = source_name(config)
        self.path = config.path
        self.split = config.split
        dataset = open_dataset(config, streaming=False)
        where = f"[data] source {self.name!r}: {config.path}"
        self.image_column, self.caption_column = choose_columns(
            hf_columns(dataset.features), config.image_column, config.caption_column, where
        )
        self.id_column = config.id_column
        columns = [self.image_column, self.caption_column]
        if self.id_column:
            if self.id_column not in dataset.column_names:
                raise DataError(
                    f"{where} has no column {self.id_column!r} (its columns: {', '.join(dataset.column_names)}). "
                    "Set id_column = \"...\" in this source's entry of [data] sources, or leave it unset."
                )
            columns.append(self.id_column)
        self.rows = dataset.select_columns(columns).with_format("arrow")
        self.base = _base(config)
        if len(self.rows) == 0:
            raise DataError(f"{where}: the {config.split!r} split holds no rows.")

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> str:
        return f"{len(self)} rows of the {self.split!r} split of {self.path} (Hugging Face dataset)"

    def _row(self, index: int, column: str) -> Any:
        return self.rows[index].column(column)[0].as_py()

    def key(self, index: int) -> str:
        return str(self._row(index, self.id_column)) if self.id_column else str(index)

    def caption(self, index: int) -> str | None:
        return caption_value(self._row(index, self.caption_column))

    def read(self, index: int) -> RawSample:
        row = self.rows[index]
        image = image_value(row.column(self.image_column)[0].as_py(), self.base)
        caption = caption_value(row.column(self.caption_column)[0].as_py())
        key = str(row.column(self.id_column)[0].as_py()) if self.id_column else str(index)
        return RawSample(key, image, caption)

    def iter_captions(self) -> Iterator[str | None]:
        for batch in self.rows.select_columns([self.caption_column]).iter(batch_size=1024):
            yield from (caption_value(v) for v in batch.column(0).to_pylist())


class HFStreamSource:
    """A Hugging Face dataset read as a stream (``streaming = true``): no length, no random
    access. ``shard(i)`` is the stream of shard ``i`` (a data file, or a slice of a
    ``save_to_disk`` dataset); the dataset is re-opened lazily after unpickling (the decoding
    workers receive samples, not the stream)."""

    kind = "hf"
    blocks = None
    streaming = True

    def __init__(self, config: SourceConfig):
        self.config = config
        self.name = source_name(config)
        self.path = config.path
        self.base = _base(config)
        self._dataset = self._open()
        self.n_shards = int(self._dataset.n_shards)

    def _open(self) -> Any:
        dataset = open_dataset(self.config, streaming=True)
        features = dataset.features
        if features is None:
            dataset = dataset._resolve_features()  # reads the first example to learn the columns
            features = dataset.features
        where = f"[data] source {self.name!r}: {self.config.path}"
        self.image_column, self.caption_column = choose_columns(
            hf_columns(features), self.config.image_column, self.config.caption_column, where
        )
        self.id_column = self.config.id_column
        columns = [self.image_column, self.caption_column] + ([self.id_column] if self.id_column else [])
        missing = [c for c in columns if c not in features]
        if missing:
            raise DataError(f"{where} has no column {missing[0]!r} (its columns: {', '.join(features)}).")
        if isinstance(features[self.image_column], _datasets().Image):
            dataset = dataset.cast_column(self.image_column, _datasets().Image(decode=False))
        return dataset.select_columns(columns)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = self._open()
        return self._dataset

    def describe(self) -> str:
        return f"stream of the {self.config.split!r} split of {self.path} ({self.n_shards} shards, size unknown)"

    def shard(self, index: int) -> Any:
        """The ``IterableDataset`` of shard ``index`` (supports ``state_dict`` / ``load_state_dict``)."""
        return self.dataset.shard(self.n_shards, index) if self.n_shards > 1 else self.dataset

    def sample(self, example: dict[str, Any], key: str) -> RawSample | Unreadable:
        """The stored sample of one streamed example (``key`` unless the dataset has ids)."""
        if self.id_column:
            key = str(example[self.id_column])
        try:
            image = image_value(example[self.image_column], self.base)
        except BadSample as bad:
            return Unreadable(key, bad.reason, bad.detail)
        return RawSample(key, image, caption_value(example[self.caption_column]))

    def iter_samples(self) -> Iterator[RawSample | Unreadable]:
        """Every sample, shard after shard, keyed ``<shard>/<row>``."""
        for shard in range(self.n_shards):
            for row, example in enumerate(self.shard(shard)):
                yield self.sample(example, f"{shard}/{row}")

    def iter_captions(self) -> Iterator[str | None]:
        for example in self.dataset.select_columns([self.caption_column]):
            yield caption_value(example[self.caption_column])
