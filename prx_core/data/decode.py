"""Encoded image bytes -> an RGB array at its bucket's size, or the reason it cannot be used.

Runs in the loader workers. JPEGs are decoded reduced (``draft``: the decoder's DCT scaling
gives 1/2, 1/4 or 1/8 of the size almost for free) to the smallest size that still covers the
bucket, then the crop box is resized to the bucket in one step with torch's antialiased uint8
resampling (:func:`crop_resize`), so no full-resolution image is materialised for a JPEG of at
least twice the bucket's size.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from prx_core.data.buckets import nearest_bucket

BAD_REASONS = (
    "empty",  # zero bytes
    "unreadable",  # not an image, or a corrupt one
    "truncated",  # the file ends before the image data does
    "too_large",  # over PIL's decompression-bomb limit
    "too_small",  # needs more upscaling than min_side allows
    "unsupported_mode",  # a pixel format that has no faithful RGB conversion (e.g. float "F")
    "no_caption",  # no caption sidecar/field, or an empty one
    "bad_caption",  # a caption sidecar that cannot be parsed
    "missing",  # the file listed in the index is gone
    "error",  # anything else (the message is kept in the stats' detail)
)

T = TypeVar("T")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


class BadSample(Exception):
    """A sample that cannot be used: ``reason`` is one of :data:`BAD_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_to_bucket(
    data: bytes | Image.Image, buckets: tuple[tuple[int, int], ...], min_side: int | None
) -> tuple[int, np.ndarray]:
    """``(bucket index, (3, H, W) uint8 array)`` for encoded image ``data`` (or an image a
    source stores decoded, e.g. MDS "pil" columns).

    The image goes to the bucket nearest its aspect ratio, is scaled to cover it and centre-
    cropped. ``min_side`` (pixels, shorter side) decides which small images are skipped; None:
    skip an image that would need more than 2x upscaling (less than half the bucket's side).
    Raises :class:`BadSample`.
    """
    if isinstance(data, Image.Image):
        return _fit(data, buckets, min_side)
    return _classified(data, lambda image: _fit(image, buckets, min_side))


def image_format(data: bytes, full: bool = False) -> str:
    """The PIL format name ("JPEG", "PNG", ...) of encoded image ``data``, read from its header,
    or with ``full`` from a complete decode (which also finds truncated files). Raises
    :class:`BadSample`."""

    def check(image: Image.Image) -> str:
        if full:
            image.load()
        return image.format or ""

    return _classified(data, check)


def _classified(data: bytes, action: Callable[[Image.Image], T]) -> T:
    """``action(opened image)``, with PIL's errors turned into :class:`BadSample` reasons."""
    if not data:
        raise BadSample("empty", "zero bytes")
    try:
        return action(Image.open(io.BytesIO(data)))
    except BadSample:
        raise
    except Image.DecompressionBombError as err:
        raise BadSample("too_large", str(err)) from None
    except UnidentifiedImageError as err:
        raise BadSample("unreadable", str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = str(err) or type(err).__name__
        truncated = isinstance(err, EOFError) or any(m in text for m in ("truncated", "broken data stream"))
        raise BadSample("truncated" if truncated else "unreadable", text) from None


def _fit(image: Image.Image, buckets: tuple[tuple[int, int], ...], min_side: int | None) -> tuple[int, np.ndarray]:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadSample("unreadable", f"size {width}x{height}")
    transposed = _orientation(image) in _TRANSPOSED_ORIENTATIONS
    shown_w, shown_h = (height, width) if transposed else (width, height)
    index = nearest_bucket(buckets, shown_w, shown_h)
    bucket_w, bucket_h = buckets[index]
    scale = max(bucket_w / shown_w, bucket_h / shown_h)
    if min_side is None:
        if scale > 2.0:
            raise BadSample("too_small", f"{shown_w}x{shown_h} needs {scale:.1f}x upscaling for {bucket_w}x{bucket_h}")
    elif min(shown_w, shown_h) < min_side:
        raise BadSample("too_small", f"{shown_w}x{shown_h} is below min_side = {min_side}")
    if image.format == "JPEG" and scale < 1.0:
        # The decoder picks the largest reduction whose result still covers the requested size.
        need = (math.ceil(width * scale), math.ceil(height * scale))
        image.draft(None, need)
    image = to_rgb(image)
    if transposed or _orientation(image) not in (None, 1):
        image = ImageOps.exif_transpose(image)
    return index, crop_resize(image, bucket_w, bucket_h)


def crop_resize(image: Image.Image, width: int, height: int) -> np.ndarray:
    """The centred ``width:height`` crop of an RGB image resized to ``width x height``
    (antialiased bicubic), as a ``(3, height, width)`` uint8 array.

    torch's vectorised uint8 antialiased resampling does what PIL's bicubic ``resize(box=...)``
    did in about half the CPU time (``benchmarks/loader_cpu.py``). The crop box is whole pixels
    of the decoded (possibly DCT-reduced) image: at most half a pixel off centre there, with an
    aspect ratio within one pixel of the bucket's.
    """
    source_w, source_h = image.size
    crop_w, crop_h = _crop_size(source_w, source_h, width / height)
    crop_w, crop_h = min(source_w, max(1, round(crop_w))), min(source_h, max(1, round(crop_h)))
    left, top = (source_w - crop_w) // 2, (source_h - crop_h) // 2
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3), a writable copy
    box = pixels[top : top + crop_h, left : left + crop_w].permute(2, 0, 1).unsqueeze(0)  # channels-last view
    resized = torch.nn.functional.interpolate(box, size=(height, width), mode="bicubic", antialias=True)
    return resized[0].contiguous().numpy()


def _crop_size(width: int, height: int, ratio: float) -> tuple[float, float]:
    """The largest ``ratio`` (= w / h) box inside a width x height image."""
    if width / height > ratio:
        return height * ratio, float(height)
    return float(width), width / ratio


def _orientation(image: Image.Image) -> int | None:
    if image.format not in ("JPEG", "WEBP", "TIFF", "MPO"):
        return None
    return image.getexif().get(_ORIENTATION_TAG)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited on white, 16-bit scaled to 8 bits, CMYK and
    palettes converted. Raises BadSample("unsupported_mode") for modes without a faithful map."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise BadSample("unsupported_mode", f"mode {mode} with values outside 0..65535")
        # "I;16*" is 16-bit by definition; "I" (32-bit) holds 16-bit PNG data in older PIL
        # versions, or plain 8-bit values when nothing exceeds 255.
        scale = 257.0 if mode != "I" or values.max() > 255 else 1.0
        grey = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    raise BadSample("unsupported_mode", f"PIL mode {mode}")
