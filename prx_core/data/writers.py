"""Write captioned images in the three layouts the sources read: a folder with caption
sidecars, Parquet shards, WebDataset tar shards.

Used to convert small datasets, by the tests (which build their data with it) and by the
loader benchmark. Images are given already encoded (``bytes``), so any format, corrupt files
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
    """``shards`` Parquet files ``part-00000.parquet``...; the image column holds raw bytes, or
    ``{bytes, path}`` structs (the Hugging Face datasets layout) with ``struct_images``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    paths = []
    for shard, part in enumerate(np.array_split(np.arange(len(records)), shards)):
        rows = [records[i] for i in part]
        images = [r.image for r in rows]
        if struct_images:
            image_array = pa.array(
                [{"bytes": b, "path": f"{r.key}{r.image_suffix}"} for b, r in zip(images, rows)],
                type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            )
        else:
            image_array = pa.array(images, type=pa.binary())
        table = pa.table({image_column: image_array, caption_column: pa.array([r.caption for r in rows], pa.string())})
        path = os.path.join(directory, f"part-{shard:05d}.parquet")
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_webdataset(directory: str, records: Sequence[Record], *, shards: int = 1) -> list[str]:
    """``shards`` tar files ``shard-00000.tar``... with ``<key><image_suffix>`` and caption members."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for shard, part in enumerate(np.array_split(np.arange(len(records)), shards)):
        path = os.path.join(directory, f"shard-{shard:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in part:
                record = records[i]
                members = [(record.image_suffix, record.image)]
                if record.caption is not None:
                    members.append((record.caption_suffix, _caption_bytes(record)))
                for suffix, data in members:
                    info = tarfile.TarInfo(record.key + suffix)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


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
