"""MosaicML streaming (MDS) shards as training data (``kind = "mds"``).

``path`` is a dataset directory (holding ``index.json``), or a directory whose sub-directories
each hold one (read one after the other, as one source), local or an fsspec URL. Samples are
read by index, so an MDS source shards, shuffles and resumes exactly like the others.

Local uncompressed shards are read in place. A shard that is remote or compressed is fetched
once into ``cache_dir`` (downloaded, size and hashes checked against the index, decompressed),
by whichever worker needs it first (written to a temporary name and renamed, so concurrent
workers and ranks never read a partial file). A shard that fails its check costs its samples,
skipped and counted as ``bad/unreadable`` with the reason. Such sources are shuffled shard-block-wise like
Parquet row groups (``[data] shuffle_row_groups`` shards at a time), so a worker reads a few
shards at a time instead of every shard at once. The cache is not evicted: it grows to the
uncompressed size of the shards read.
"""
from __future__ import annotations

import os
import posixpath
import tempfile
from typing import Any

import numpy as np

from prx_core.data import files, mds_format
from prx_core.data.columns import Column, choose_columns
from prx_core.data.config import SourceConfig, source_name
from prx_core.data.decode import BadSample
from prx_core.data.sources import RawSample, caption_value, captions_by_index
from prx_core.errors import DataError

CACHE_DIRNAME = ".prx-mds-cache"
_ROLES = {
    "jpeg": "image", "png": "image", "pil": "image", "bytes": "binary", "str": "text", "json": "text",
}  # fmt: skip


def dataset_roots(path: str) -> list[str]:
    """The MDS dataset directories at ``path``: itself, or its sub-directories with an index."""
    if files.exists(files.join(path, mds_format.INDEX)):
        return [path.rstrip("/")]
    if files.is_dir(path):
        subdirs = sorted({rel.split("/")[0] for rel in files.list_tree(path) if rel.count("/") == 1})
        roots = [files.join(path, d) for d in subdirs if files.exists(files.join(files.join(path, d), mds_format.INDEX))]
        if roots:
            return roots
    raise DataError(
        f"No MDS dataset at {path}: an mds source is a directory holding index.json (and its shard.NNNNN.mds "
        "files), or a directory whose sub-directories each hold one."
    )


class MDSSource:
    """Samples of MDS shards, by index."""

    kind = "mds"

    def __init__(self, config: SourceConfig):
        self.name = source_name(config)
        self.path = config.path
        self.caption_key = config.caption_key
        self.id_column = config.id_column
        where = f"[data] source {self.name!r}: {config.path}"
        roots = dataset_roots(config.path)
        self.shards: list[mds_format.Shard] = []
        self.shard_root: list[str] = []
        self.shard_label: list[str] = []
        for root in roots:
            for shard in mds_format.read_index(root):
                if shard.samples == 0:
                    continue
                self.shards.append(shard)
                self.shard_root.append(root)
                prefix = "" if len(roots) == 1 else posixpath.basename(root.rstrip("/")) + "/"
                self.shard_label.append(prefix + shard.raw.basename.removesuffix(".mds"))
        if not self.shards:
            raise DataError(f"{where}: the index lists no samples.")
        first = self.shards[0]
        columns = [Column(n, _ROLES.get(e.split(":")[0], "other"), e) for n, e in zip(first.column_names, first.column_encodings)]
        self.image_column, self.caption_column = choose_columns(columns, config.image_column, config.caption_column, where)
        wanted = [self.image_column, self.caption_column] + ([self.id_column] if self.id_column else [])
        for label, shard in zip(self.shard_label, self.shards):
            missing = [c for c in wanted if c not in shard.column_names]
            if missing:
                raise DataError(
                    f"{where}: shard {label} has no column {missing[0]!r} (its columns: "
                    f"{', '.join(shard.column_names)}). Set image_column / caption_column / id_column."
                )
        self.wanted = tuple(wanted)
        counts = np.asarray([s.samples for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        remote = files.is_url(config.path)
        fetched = remote or any(s.compression for s in self.shards)
        self.blocks = counts if fetched else None
        self.cache_dir = ""
        if fetched:
            if config.cache_dir:
                self.cache_dir = config.cache_dir
            elif remote:
                raise DataError(
                    f"{where} is remote: set cache_dir = \"/local/dir\" in this source's entry of [data] sources "
                    "(its shards are downloaded there)."
                )
            else:
                self.cache_dir = os.path.join(config.path, CACHE_DIRNAME)
        self._offsets: dict[int, np.ndarray] = {}  # per process: shard -> its offsets table
        self._broken: dict[int, str] = {}  # per process: shard -> why it cannot be fetched

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_offsets": {}, "_broken": {}}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def describe(self) -> str:
        compressed = {s.compression for s in self.shards if s.compression}
        how = f", {'/'.join(sorted(compressed))}-compressed, cached in {self.cache_dir}" if self.cache_dir else ""
        return f"{len(self)} samples in {len(self.shards)} MDS shards at {self.path}{how}"

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, index - int(self.starts[shard])

    def local_shard(self, shard: int) -> str:
        """The raw (uncompressed) file of shard ``shard`` on the local disk, fetched if needed."""
        info = self.shards[shard]
        root = self.shard_root[shard]
        if not self.cache_dir:
            return files.join(root, info.raw.basename)
        sub = posixpath.relpath(root, self.path.rstrip("/")) if root != self.path.rstrip("/") else ""
        target = os.path.join(self.cache_dir, sub, info.raw.basename)
        if shard in self._broken:
            raise BadSample("unreadable", self._broken[shard])
        if not os.path.exists(target):
            try:
                self._fetch(shard, target)
            except DataError as err:  # a corrupt or incomplete shard costs its samples, counted
                self._broken[shard] = str(err)
                raise BadSample("unreadable", str(err)) from None
        return target

    def _fetch(self, shard: int, target: str) -> None:
        info = self.shards[shard]
        stored = info.zip or info.raw
        where = files.join(self.shard_root[shard], stored.basename)
        data = files.read_bytes(where)
        mds_format.verify(stored, data, where)
        if info.zip is not None:
            data = mds_format.decompress(info.compression, data)
            mds_format.verify(info.raw, data, f"{where} (decompressed)")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".fetch-")
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(temporary, target)

    def _columns(self, index: int) -> tuple[int, int, dict[str, bytes]]:
        shard, row = self._locate(index)
        path = self.local_shard(shard)
        offsets = self._offsets.get(shard)
        if offsets is None:
            offsets = self._offsets[shard] = mds_format.read_offsets(path)
        data = mds_format.sample_bytes(path, offsets, row)
        return shard, row, mds_format.split_columns(data, self.shards[shard], self.wanted)

    def _key(self, shard: int, row: int, values: dict[str, bytes]) -> str:
        if self.id_column:
            return str(mds_format.decode_scalar(self.shards[shard].encoding(self.id_column), values[self.id_column]))
        return f"{self.shard_label[shard]}/{row}"

    def _caption(self, shard: int, values: dict[str, bytes]) -> str | None:
        encoding = self.shards[shard].encoding(self.caption_column)
        try:
            value = mds_format.decode_text(encoding, values[self.caption_column], self.caption_key)
        except (UnicodeDecodeError, ValueError) as err:
            raise BadSample("bad_caption", f"{self.shard_label[shard]}: {err}") from None
        return caption_value(value)

    def key(self, index: int) -> str:
        shard, row, values = self._columns(index)
        return self._key(shard, row, values)

    def caption(self, index: int) -> str | None:
        shard, _, values = self._columns(index)
        return self._caption(shard, values)

    def read(self, index: int) -> RawSample:
        shard, row, values = self._columns(index)
        image = mds_format.decode_image(self.shards[shard].encoding(self.image_column), values[self.image_column])
        return RawSample(self._key(shard, row, values), image, self._caption(shard, values))

    iter_captions = captions_by_index
