"""MosaicML streaming's MDS format, read and written without the library.

(``mosaicml-streaming`` 0.13 pins ``transformers<5`` and ``numpy<2.2``, so it does not install
beside prx's dependencies; this module follows the format as the library writes it, version 2.)

A dataset directory holds ``index.json``::

    {"version": 2, "shards": [<shard>, ...]}

and one file per shard. Each ``<shard>`` entry is the writer's configuration plus the files::

    {"version": 2, "format": "mds", "compression": "zstd:7" | null, "hashes": ["sha1", ...],
     "size_limit": 67108864, "column_names": [...], "column_encodings": [...],
     "column_sizes": [8 | null, ...], "samples": N,
     "raw_data": {"basename": "shard.00000.mds", "bytes": B, "hashes": {"sha1": "..."}},
     "zip_data": {"basename": "shard.00000.mds.zstd", "bytes": b, "hashes": {...}} | null}

Columns are sorted by name. A raw shard file (little-endian ``uint32`` throughout) is::

    num_samples | offsets[num_samples + 1] (absolute byte offsets) | config JSON | samples

and sample ``i`` (bytes ``offsets[i]:offsets[i+1]``) is the ``uint32`` sizes of its
variable-size columns (``column_sizes`` null), in column order, then every column's bytes in
column order. With compression, the file stored is ``zip_data`` (the whole raw file compressed
with "br", "bz2", "gz", "snappy" or "zstd", optionally ``:level``) and must be decompressed
before reading. Encodings read here: bytes, str, jpeg, png, pil, json, ndarray (uint8 images),
int and the fixed-size scalars; other columns may hold anything (they are skipped by size).
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable
from typing import Any

import attrs
import numpy as np

from prx_core.data import files
from prx_core.errors import DataError

INDEX = "index.json"
VERSION = 2
COMPRESSIONS = ("br", "bz2", "gz", "snappy", "zstd")
FIXED_SIZES = {
    "int": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "float32": 4, "float64": 8,
}  # fmt: skip
_U32 = np.dtype("<u4")


@attrs.frozen
class FileInfo:
    basename: str
    bytes: int
    hashes: dict[str, str]


@attrs.frozen
class Shard:
    """One entry of ``index.json``."""

    samples: int
    raw: FileInfo
    zip: FileInfo | None
    compression: str | None
    column_names: list[str]
    column_encodings: list[str]
    column_sizes: list[int | None]

    def encoding(self, column: str) -> str:
        return self.column_encodings[self.column_names.index(column)]


def read_index(directory: str) -> list[Shard]:
    """The shards listed in ``directory/index.json`` (a local path or fsspec URL)."""
    path = files.join(directory, INDEX)
    try:
        index = json.loads(files.read_bytes(path))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: an MDS dataset directory holds index.json.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}).") from None
    if index.get("version") != VERSION:
        raise DataError(f"{path}: index version {index.get('version')!r}; only version {VERSION} is supported.")
    shards = []
    for number, entry in enumerate(index.get("shards", [])):
        if entry.get("format") != "mds":
            raise DataError(
                f"{path}: shard {number} is in format {entry.get('format')!r}; only MDS shards are read (not the "
                "library's json/csv/tsv formats)."
            )
        compression = entry.get("compression") or None
        if compression and compression.split(":")[0] not in COMPRESSIONS:
            raise DataError(f"{path}: shard {number} uses unknown compression {compression!r}.")
        shards.append(Shard(
            samples=int(entry["samples"]),
            raw=FileInfo(**entry["raw_data"]),
            zip=FileInfo(**entry["zip_data"]) if entry.get("zip_data") else None,
            compression=compression,
            column_names=list(entry["column_names"]),
            column_encodings=list(entry["column_encodings"]),
            column_sizes=list(entry["column_sizes"]),
        ))  # fmt: skip
    return shards


def _codec(algorithm: str):
    """``(compress(data, level), decompress(data))`` of a compression name (without level)."""
    def need(module: str, package: str):
        try:
            return __import__(module)
        except ImportError:
            raise DataError(
                f"MDS shards compressed with {algorithm!r} need the {package} package: pip install {package} "
                "(or pip install 'prx[mds]')."
            ) from None

    if algorithm == "gz":
        return (lambda data, level: gzip.compress(data, 9 if level is None else level)), gzip.decompress
    if algorithm == "bz2":
        return (lambda data, level: bz2.compress(data, 9 if level is None else level)), bz2.decompress
    if algorithm == "zstd":
        zstandard = need("zstandard", "zstandard")

        def decompress(data: bytes) -> bytes:  # frames may lack the content size: read as a stream
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()

        return (lambda data, level: zstandard.ZstdCompressor(level=3 if level is None else level).compress(data)), decompress
    if algorithm == "br":
        brotli = need("brotli", "brotli")
        return (lambda data, level: brotli.compress(data, quality=11 if level is None else level)), brotli.decompress
    if algorithm == "snappy":
        cramjam = need("cramjam", "cramjam")
        return (lambda data, level: bytes(cramjam.snappy.compress_raw(data))), (
            lambda data: bytes(cramjam.snappy.decompress_raw(data))
        )
    raise DataError(f"Unknown MDS compression {algorithm!r}; use one of {', '.join(COMPRESSIONS)}.")


def compress(compression: str, data: bytes) -> bytes:
    algorithm, _, level = compression.partition(":")
    return _codec(algorithm)[0](data, int(level) if level else None)


def decompress(compression: str, data: bytes) -> bytes:
    return _codec(compression.partition(":")[0])[1](data)


def extension(compression: str) -> str:
    return compression.partition(":")[0]


def digest(algorithm: str, data: bytes) -> str | None:
    """Hex digest with a hashlib or xxhash algorithm; None when it is not available here."""
    if algorithm in hashlib.algorithms_available and not algorithm.startswith("shake_"):
        return hashlib.new(algorithm, data).hexdigest()
    try:
        import xxhash
    except ImportError:
        return None
    function = getattr(xxhash, algorithm, None) if algorithm in xxhash.algorithms_available else None
    return function(data).hexdigest() if function else None


def verify(info: FileInfo, data: bytes, where: str) -> None:
    """Check a shard file's size and every listed hash that can be computed here."""
    if len(data) != info.bytes:
        raise DataError(f"{where}: {len(data)} bytes, the index says {info.bytes}: the file is incomplete or stale.")
    for algorithm, expected in info.hashes.items():
        found = digest(algorithm, data)
        if found is not None and found != expected:
            raise DataError(f"{where}: {algorithm} is {found}, the index says {expected}: the file is corrupt.")


def sample_bytes(path: str, offsets: np.ndarray, row: int) -> bytes:
    """The bytes of sample ``row`` of a raw shard file."""
    return files.read_bytes(path, int(offsets[row]), int(offsets[row + 1] - offsets[row]))


def read_offsets(path: str) -> np.ndarray:
    """The ``offsets`` table of a raw shard file (``num_samples + 1`` absolute positions)."""
    count = int(np.frombuffer(files.read_bytes(path, 0, 4), _U32)[0])
    return np.frombuffer(files.read_bytes(path, 4, 4 * (count + 1)), _U32).astype(np.int64)


def split_columns(data: bytes, shard: Shard, wanted: Iterable[str]) -> dict[str, bytes]:
    """The encoded bytes of the ``wanted`` columns of one sample."""
    sizes, position = [], 0
    for size in shard.column_sizes:
        if size is None:
            size = int(np.frombuffer(data, _U32, count=1, offset=position)[0])
            position += 4
        sizes.append(size)
    starts = np.concatenate([[position], position + np.cumsum(sizes)])
    out = {}
    for column in wanted:
        i = shard.column_names.index(column)
        out[column] = data[int(starts[i]) : int(starts[i + 1])]
    return out


def decode_image(encoding: str, data: bytes) -> bytes | Any:
    """An image column's value: encoded bytes (bytes, jpeg, png) or a PIL image (pil, ndarray)."""
    name = encoding.split(":")[0]
    if name in ("bytes", "jpeg", "png"):
        return data
    from PIL import Image

    if name == "pil":
        width, height, mode_size = np.frombuffer(data, _U32, count=3)
        mode = data[12 : 12 + mode_size].decode("utf-8")
        return Image.frombytes(mode, (int(width), int(height)), data[12 + mode_size :])
    if name == "ndarray":
        return Image.fromarray(decode_ndarray(encoding, data))
    raise DataError(f"MDS encoding {encoding!r} does not hold an image (use bytes, jpeg, png, pil or ndarray).")


_NDARRAY_DTYPES = {
    8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32", 34: "float32",
    64: "uint64", 65: "int64", 66: "float64",
}  # fmt: skip


def decode_ndarray(encoding: str, data: bytes) -> np.ndarray:
    """The ``ndarray[:dtype[:shape]]`` encoding: dtype and shape in the encoding, or in a header
    (dtype code byte; then ``ndim << 2 | shape dtype`` byte and the shape)."""
    _, *args = encoding.split(":")
    position = 0
    if args and args[0]:
        dtype = args[0]
    else:
        dtype, position = _NDARRAY_DTYPES[data[0]], 1
    if len(args) > 1:
        shape = tuple(int(v) for v in args[1].split(","))
    else:
        byte = data[position]
        ndim, shape_dtype = byte >> 2, ("<u1", "<u2", "<u4", "<u8")[byte % 4]
        width = 2 ** (byte % 4)
        shape = tuple(int(v) for v in np.frombuffer(data, shape_dtype, count=ndim, offset=position + 1))
        position += 1 + ndim * width
    return np.frombuffer(data, np.dtype(dtype).newbyteorder("<"), offset=position).reshape(shape)


def decode_text(encoding: str, data: bytes, caption_key: str = "caption") -> Any:
    """A caption column's value: str/bytes as text, json parsed (a dict gives ``caption_key``)."""
    name = encoding.split(":")[0]
    if name in ("str", "bytes"):
        return data.decode("utf-8")
    if name == "json":
        value = json.loads(data.decode("utf-8"))
        return value.get(caption_key) if isinstance(value, dict) else value
    raise DataError(f"MDS encoding {encoding!r} does not hold text (use str, bytes or json).")


def decode_scalar(encoding: str, data: bytes) -> Any:
    """An id column's value (str, bytes, int, str_int or a fixed-size number)."""
    name = encoding.split(":")[0]
    if name in ("str", "str_int", "str_float", "str_decimal"):
        return data.decode("utf-8")
    if name == "bytes":
        return data.hex()
    if name == "int":
        return int(np.frombuffer(data, "<i8")[0])
    if name in FIXED_SIZES:
        return np.frombuffer(data, np.dtype(name).newbyteorder("<"))[0].item()
    raise DataError(f"MDS encoding {encoding!r} cannot be used as a sample id.")


def _encode(encoding: str, value: Any) -> bytes:
    name = encoding.split(":")[0]
    if name in ("bytes", "jpeg", "png"):
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"column encoding {encoding!r} takes encoded bytes, got {type(value).__name__}")
        return bytes(value)
    if name == "str":
        return value.encode("utf-8")
    if name == "json":
        return json.dumps(value).encode("utf-8")
    if name in FIXED_SIZES:
        return np.asarray(value, dtype=np.dtype("int64" if name == "int" else name).newbyteorder("<")).tobytes()
    raise ValueError(f"the MDS writer here writes bytes, jpeg, png, str, json, int and fixed-size numbers, not {encoding!r}")


class MDSWriter:
    """Writes samples (dicts of column -> value) as MDS shards of at most ``size_limit`` bytes,
    ``compression`` (e.g. "zstd" or "zstd:7") and ``hashes`` (e.g. ["sha1", "xxh3_64"]) as the
    library does, then ``index.json`` on :meth:`finish`."""

    def __init__(
        self,
        directory: str,
        columns: dict[str, str],
        *,
        compression: str | None = None,
        hashes: Iterable[str] = (),
        size_limit: int | None = 1 << 26,
    ):
        self.directory = directory
        self.names = sorted(columns)
        self.encodings = [columns[n] for n in self.names]
        self.sizes = [FIXED_SIZES.get(e.split(":")[0]) for e in self.encodings]
        self.compression = compression or None
        if self.compression:
            _codec(extension(self.compression))  # fails now when the codec is missing
        self.hashes = sorted(hashes)
        unknown = [a for a in self.hashes if digest(a, b"") is None]
        if unknown:
            raise ValueError(f"hash algorithms {unknown} are not available (hashlib names, or xxhash's with xxhash)")
        self.size_limit = size_limit
        config = {
            "version": VERSION, "format": "mds", "compression": self.compression, "hashes": self.hashes,
            "size_limit": size_limit, "column_names": self.names, "column_encodings": self.encodings,
            "column_sizes": self.sizes,
        }  # fmt: skip
        self.config = config
        self.config_data = json.dumps(config, sort_keys=True).encode("utf-8")
        self.shards: list[dict[str, Any]] = []
        self.files: list[str] = []
        self._samples: list[bytes] = []
        self._size = 8 + len(self.config_data)
        os.makedirs(directory, exist_ok=True)

    def write(self, sample: dict[str, Any]) -> None:
        head, body = [], []
        for name, encoding, size in zip(self.names, self.encodings, self.sizes):
            data = _encode(encoding, sample[name])
            if size is None:
                head.append(len(data))
            elif len(data) != size:
                raise ValueError(f"column {name!r} ({encoding}) takes {size} bytes, got {len(data)}")
            body.append(data)
        encoded = np.asarray(head, _U32).tobytes() + b"".join(body)
        if self.size_limit and self._samples and self.size_limit < self._size + len(encoded) + 4:
            self.flush()
        self._samples.append(encoded)
        self._size += len(encoded) + 4

    def flush(self) -> None:
        """Write the samples collected so far as one shard."""
        if not self._samples:
            return
        count = len(self._samples)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in self._samples])]) + 4 + 4 * (count + 1)
        offsets += len(self.config_data)
        raw = np.uint32(count).astype(_U32).tobytes() + offsets.astype(_U32).tobytes() + self.config_data
        raw += b"".join(self._samples)
        basename = f"shard.{len(self.shards):05d}.mds"
        raw_info = {"basename": basename, "bytes": len(raw), "hashes": {a: digest(a, raw) for a in self.hashes}}
        zip_info, stored, stored_name = None, raw, basename
        if self.compression:
            stored = compress(self.compression, raw)
            stored_name = f"{basename}.{extension(self.compression)}"
            zip_info = {"basename": stored_name, "bytes": len(stored), "hashes": {a: digest(a, stored) for a in self.hashes}}
        with open(os.path.join(self.directory, stored_name), "wb") as f:
            f.write(stored)
        self.files.append(os.path.join(self.directory, stored_name))
        self.shards.append({"samples": count, "raw_data": raw_info, "zip_data": zip_info, **self.config})
        self._samples, self._size = [], 8 + len(self.config_data)

    def finish(self) -> str:
        """Flush the last shard and write ``index.json``; returns its path."""
        self.flush()
        path = os.path.join(self.directory, INDEX)
        with open(path, "w") as f:
            f.write(json.dumps({"version": VERSION, "shards": self.shards}, sort_keys=True))
        return path
