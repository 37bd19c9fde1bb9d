"""Convert a data source into Parquet, WebDataset or MDS shards (``prx data convert``).

Any stored source kind reads (folder, parquet, webdataset, hf map-style or streaming, mds); the
samples are written in the source's index order (a stream's order), as stored: images are copied
byte for byte unless the target cannot hold their format (WebDataset members are .jpg, .png or
.webp; an MDS ``jpeg``/``png`` column holds that format), in which case they are re-encoded
losslessly (PNG) or at JPEG quality 95 and counted. Samples the loader would skip for a reason
it can see without decoding (no caption, empty or unidentifiable image, missing file; with
``verify``, also truncated or corrupt image data) are skipped and counted by reason.
"""
from __future__ import annotations

import collections
import io
import itertools
import os
from collections.abc import Callable, Iterator

import attrs
from PIL import Image

from prx_core.data.config import SourceConfig
from prx_core.data.decode import BadSample, image_format, to_rgb
from prx_core.data.mds_format import MDSWriter
from prx_core.data.sources import RawSample, Unreadable, is_streaming, open_source
from prx_core.data.writers import ParquetWriter, Record, WebDatasetWriter
from prx_core.errors import DataError

TARGETS = ("parquet", "wds", "mds")
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
MDS_IMAGE_ENCODINGS = ("bytes", "jpeg", "png")


@attrs.define
class ConvertReport:
    """What a conversion did: samples written, skipped by reason (with one example each),
    images re-encoded, and the files written."""

    written: int = 0
    skipped: collections.Counter = attrs.Factory(collections.Counter)
    examples: dict[str, str] = attrs.Factory(dict)
    re_encoded: int = 0
    files: list[str] = attrs.Factory(list)


def stored_samples(source, limit: int | None) -> tuple[Iterator[RawSample | Unreadable], int | None]:
    """``(samples in order, how many or None)``: each a RawSample, or an Unreadable one."""
    if is_streaming(source):
        return itertools.islice(source.iter_samples(), limit), limit

    def by_index() -> Iterator[RawSample | Unreadable]:
        for index in range(total):
            try:
                yield source.read(index)
            except BadSample as bad:
                yield Unreadable(str(index), bad.reason, bad.detail)

    total = len(source) if limit is None else min(limit, len(source))
    return by_index(), total


def _to_bytes(image: bytes | Image.Image) -> bytes:
    """Encoded bytes of a sample's image (a decoded one, from an MDS pil/ndarray column, as PNG)."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    return image


def _reencode(data: bytes, fmt: str) -> bytes:
    image = Image.open(io.BytesIO(data))
    if fmt == "JPEG":
        image = to_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


class _Target:
    """One output format: ``write(key, image bytes, format, caption) -> re-encoded?``."""

    def __init__(self, target: str, out: str, shard_bytes: int, compression: str | None, image_encoding: str):
        self.target, self.image_encoding = target, image_encoding
        if target == "parquet":
            self.writer = ParquetWriter(out, shard_bytes=shard_bytes, key_column="key")
        elif target == "wds":
            self.writer = WebDatasetWriter(out, shard_bytes=shard_bytes)
        else:
            columns = {"image": image_encoding, "caption": "str", "key": "str"}
            self.writer = MDSWriter(out, columns, compression=compression, size_limit=shard_bytes)

    def write(self, key: str, image: bytes, fmt: str, caption: str) -> bool:
        re_encoded = False
        if self.target == "wds" and fmt not in SUFFIXES:
            image, fmt, re_encoded = _reencode(image, "PNG"), "PNG", True
        if self.target == "mds" and self.image_encoding != "bytes" and fmt != self.image_encoding.upper():
            fmt = self.image_encoding.upper()
            image, re_encoded = _reencode(image, fmt), True
        if self.target == "mds":
            self.writer.write({"image": image, "caption": caption, "key": key})
        else:
            self.writer.write(Record(_wds_key(key) if self.target == "wds" else key, image, caption, SUFFIXES.get(fmt, ".img")))
        return re_encoded

    def close(self) -> list[str]:
        if self.target == "mds":
            index = self.writer.finish()
            return self.writer.files + [index]
        return self.writer.close()


def _wds_key(key: str) -> str:
    """A WebDataset member stem: no dot in the file name (the first dot starts the extension)."""
    head, _, tail = key.rpartition("/")
    return f"{head}/{tail.replace('.', '_')}" if head else tail.replace(".", "_")


def convert(
    source: SourceConfig,
    target: str,
    out: str,
    *,
    shard_bytes: int = 1 << 26,
    compression: str | None = None,
    image_encoding: str = "bytes",
    verify: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> ConvertReport:
    """Write the samples of ``source`` as ``target`` ("parquet", "wds" or "mds") shards into
    ``out`` (a new or empty directory); ``progress(samples done, total or None)`` is called as
    it goes."""
    if target not in TARGETS:
        raise DataError(f"Unknown target format {target!r}: use one of {', '.join(TARGETS)}.")
    if source.kind == "scenes":
        raise DataError("The scenes source is generated on the fly, not stored: there is nothing to convert.")
    if image_encoding not in MDS_IMAGE_ENCODINGS:
        raise DataError(f"--image-encoding must be one of {', '.join(MDS_IMAGE_ENCODINGS)}, got {image_encoding!r}.")
    if os.path.isdir(out) and os.listdir(out):
        raise DataError(f"{out} is not empty: convert into a new or empty directory.")
    opened = open_source(source)
    samples, total = stored_samples(opened, limit)
    writer = _Target(target, out, shard_bytes, compression, image_encoding)
    report = ConvertReport()
    for done, sample in enumerate(samples, 1):
        try:
            if isinstance(sample, Unreadable):
                raise BadSample(sample.reason, sample.detail)
            if not sample.caption:
                raise BadSample("no_caption", "no caption, or an empty one")
            image = _to_bytes(sample.image)
            fmt = image_format(image, full=verify)
            report.re_encoded += writer.write(sample.key, image, fmt, sample.caption)
            report.written += 1
        except BadSample as bad:
            report.skipped[bad.reason] += 1
            report.examples.setdefault(bad.reason, f"{sample.key}: {bad.detail}")
        progress(done, total)
    report.files = writer.close()
    return report


def parse_size(text: str) -> int:
    """Bytes from ``64MB``, ``1GB``, ``500kB``, ``67108864`` (binary multiples: 1 MB = 2**20)."""
    units = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
    number = text.strip().lower().rstrip("ib")
    digits = number.rstrip("kmgtb")
    unit = number[len(digits):] + "b" if number[len(digits):] else ""
    try:
        value = float(digits) * units[unit]
    except (ValueError, KeyError):
        raise DataError(f"Cannot read size {text!r}: write e.g. 64MB, 1GB or a number of bytes.") from None
    if value <= 0:
        raise DataError(f"A shard size must be positive, got {text!r}.")
    return int(value)
