"""Write captioned images in the layouts the sources read: a folder with caption sidecars,
Parquet shards, WebDataset tar shards (MDS shards: :mod:`prx_core.data.mds_format`).

Used by ``prx data convert`` (the shard writers), by the tests (which build their data with
it) and by the loader benchmark. Images are given already encoded (``bytes``), so any format, corrupt files
included, can be written.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence

import attrs
import numpy as np
from PIL import Image


@attrs.frozen
class Record:
    """One sample to write: ``key`` (file stem), encoded image, caption (None: no caption),
    ``image_suffix`` (".jpg", ".png", ...), ``caption_suffix`` (".txt" or ".json")."""

    key: str
    image: bytes
    caption: str | None
    image_suffix: str = ".jpg"
    caption_suffix: str = ".txt"


def encode_image(pixels: np.ndarray | Image.Image, format: str = "JPEG", **options) -> bytes:
    """Encode an (H, W, 3) uint8 array or a PIL image (any mode PIL can save in ``format``)."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _caption_bytes(record: Record) -> bytes:
    if record.caption_suffix == ".json":
        return json.dumps({"caption": record.caption}).encode()
    return record.caption.encode()


def write_folder(directory: str, records: Sequence[Record]) -> str:
    """``directory/<key><image_suffix>`` plus ``<key>.txt|.json`` for records with a caption."""
    for record in records:
        path = os.path.join(directory, record.key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + record.image_suffix, "wb") as f:
            f.write(record.image)
        if record.caption is not None:
            with open(path + record.caption_suffix, "wb") as f:
                f.write(_caption_bytes(record))
    return directory


class ParquetWriter:
    """Parquet shards ``part-00000.parquet``... written one row group at a time: an image column
    (raw bytes, or ``{bytes, path}`` structs, the Hugging Face datasets layout, with
    ``struct_images``), a caption column and, with ``key_column``, the sample keys. A new shard
    starts when the current one holds ``shard_bytes`` of images, or on :meth:`next_shard`."""

    def __init__(
        self,
        directory: str,
        *,
        row_group_size: int = 64,
        shard_bytes: int | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        key_column: str = "",
        struct_images: bool = False,
    ):
        import pyarrow as pa

        os.makedirs(directory, exist_ok=True)
        self.directory, self.row_group_size, self.shard_bytes = directory, row_group_size, shard_bytes
        self.image_column, self.caption_column, self.key_column = image_column, caption_column, key_column
        self.struct_images = struct_images
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())]) if struct_images else pa.binary()
        fields = [(image_column, image_type), (caption_column, pa.string())] + ([(key_column, pa.string())] if key_column else [])
        self.schema = pa.schema(fields)
        self.paths: list[str] = []
        self._writer = None
        self._rows: list[Record] = []
        self._bytes = 0

    def write(self, record: Record) -> None:
        if self.shard_bytes and self._bytes >= self.shard_bytes:
            self.next_shard()
        self._rows.append(record)
        self._bytes += len(record.image)
        if len(self._rows) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        if self._writer is None:
            path = os.path.join(self.directory, f"part-{len(self.paths):05d}.parquet")
            self._writer = pq.ParquetWriter(path, self.schema)
            self.paths.append(path)
        images = [
            {"bytes": r.image, "path": f"{r.key}{r.image_suffix}"} if self.struct_images else r.image for r in self._rows
        ]
        columns = [images, [r.caption for r in self._rows]] + ([[r.key for r in self._rows]] if self.key_column else [])
        self._writer.write_table(pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, self.schema)], schema=self.schema))
        self._rows = []

    def next_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._bytes = 0

    def close(self) -> list[str]:
        self.next_shard()
        return self.paths


class WebDatasetWriter:
    """WebDataset tar shards ``shard-00000.tar``... with ``<key><image_suffix>`` and caption
    members; a new shard starts after ``shard_bytes`` of members, or on :meth:`next_shard`."""

    def __init__(self, directory: str, *, shard_bytes: int | None = None):
        os.makedirs(directory, exist_ok=True)
        self.directory, self.shard_bytes = directory, shard_bytes
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._bytes = 0

    def write(self, record: Record) -> None:
        if self.shard_bytes and self._bytes >= self.shard_bytes:
            self.next_shard()
        if self._tar is None:
            path = os.path.join(self.directory, f"shard-{len(self.paths):05d}.tar")
            self._tar = tarfile.open(path, "w")
            self.paths.append(path)
        members = [(record.image_suffix, record.image)]
        if record.caption is not None:
            members.append((record.caption_suffix, _caption_bytes(record)))
        for suffix, data in members:
            info = tarfile.TarInfo(record.key + suffix)
            info.size = len(data)
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data)

    def next_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._bytes = 0

    def close(self) -> list[str]:
        self.next_shard()
        return self.paths


def _write_split(writer: ParquetWriter | WebDatasetWriter, records: Sequence[Record], shards: int) -> list[str]:
    """Write ``records`` as ``shards`` shards of (nearly) equal sample counts."""
    for part in np.array_split(np.arange(len(records)), shards):
        for i in part:
            writer.write(records[i])
        writer.next_shard()
    return writer.close()


def write_parquet(
    directory: str,
    records: Sequence[Record],
    *,
    shards: int = 1,
    row_group_size: int = 64,
    image_column: str = "image",
    caption_column: str = "caption",
    struct_images: bool = False,
) -> list[str]:
    """``shards`` Parquet files ``part-00000.parquet``... (see :class:`ParquetWriter`)."""
    writer = ParquetWriter(
        directory, row_group_size=row_group_size, image_column=image_column, caption_column=caption_column,
        struct_images=struct_images,
    )  # fmt: skip
    return _write_split(writer, records, shards)


def write_webdataset(directory: str, records: Sequence[Record], *, shards: int = 1) -> list[str]:
    """``shards`` tar files ``shard-00000.tar``... with ``<key><image_suffix>`` and caption members."""
    return _write_split(WebDatasetWriter(directory), records, shards)


def synthetic_records(
    count: int,
    *,
    sizes: Sequence[tuple[int, int]] = ((96, 64), (64, 96), (80, 80), (128, 64), (64, 128)),
    formats: Sequence[str] = ("JPEG", "PNG"),
    seed: int = 0,
    prefix: str = "img",
) -> list[Record]:
    """``count`` captioned scenes, cycling through ``sizes`` (width, height) and ``formats``."""
    from prx_core.data.scenes import render_scene, scene_for_index

    records = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        scene = scene_for_index(i, seed=seed)
        fmt = formats[i % len(formats)]
        image = encode_image(render_scene(scene, height, width, index=i, seed=seed), fmt)
        suffix = ".jpg" if fmt == "JPEG" else "." + fmt.lower()
        records.append(Record(f"{prefix}-{i:05d}", image, scene.caption(), image_suffix=suffix))
    return records
