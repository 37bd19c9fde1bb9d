"""Which column of a table-like source holds the image and which the caption.

Parquet files, Hugging Face datasets and MDS shards all store samples as named columns. A
recipe may name them (``image_column`` / ``caption_column``); otherwise they are detected from
the columns' types and names, and when that is ambiguous the error lists every column with its
type so the user can pick.
"""
from __future__ import annotations

import attrs

from prx_core.errors import DataError

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "picture", "photo")
PATH_NAMES = ("image_path", "image_file", "file_name", "filename", "path")  # text columns of image paths
CAPTION_NAMES = (
    "caption", "text", "prompt", "captions", "txt", "caption_long", "long_caption", "description",
    "alt_text", "sentence", "sentences",
)  # fmt: skip


@attrs.frozen
class Column:
    """A column of a source: ``role`` is "image" (a typed image column: HF ``Image``, MDS
    jpeg/png/pil), "binary" (bytes or a ``{bytes, path}`` struct), "text" (strings or lists of
    strings) or "other"; ``type`` is how the source spells the type, for messages."""

    name: str
    role: str
    type: str


def choose_columns(columns: list[Column], image_column: str, caption_column: str, where: str) -> tuple[str, str]:
    """``(image column, caption column)``: the configured names, checked, or detected ones."""
    listing = ", ".join(f"{c.name} ({c.type})" for c in columns) or "none"
    names = [c.name for c in columns]
    for key, value in (("image_column", image_column), ("caption_column", caption_column)):
        if value and value not in names:
            raise DataError(
                f"{where} has no column {value!r} (its columns: {listing}). Set {key} = \"...\" in this "
                "source's entry of [data] sources."
            )
    image = image_column or _detect(columns, ("image", "binary"), IMAGE_NAMES) or _path_column(columns)
    if not image:
        raise DataError(
            f"{where}: cannot tell which column holds the images (its columns: {listing}). Set "
            'image_column = "..." in this source\'s entry of [data] sources (or --image-column).'
        )
    caption = caption_column or _detect([c for c in columns if c.name != image], ("text",), CAPTION_NAMES)
    if not caption:
        raise DataError(
            f"{where}: cannot tell which column holds the captions (its columns: {listing}). Set "
            'caption_column = "..." in this source\'s entry of [data] sources (or --caption-column).'
        )
    return image, caption


def _path_column(columns: list[Column]) -> str:
    """A text column of image paths, recognised by its name only."""
    named = [c.name for c in columns if c.role == "text" and c.name.lower() in IMAGE_NAMES + PATH_NAMES]
    return named[0] if named else ""


def _detect(columns: list[Column], roles: tuple[str, ...], preferred: tuple[str, ...]) -> str:
    """The first role that has candidates decides (a typed image column beats a bytes one):
    a well-known name among them, else the only one; several unknown names: '' (ambiguous)."""
    for role in roles:
        candidates = [c.name for c in columns if c.role == role]
        if not candidates:
            continue
        named = sorted((preferred.index(n.lower()), n) for n in candidates if n.lower() in preferred)
        if named:
            return named[0][1]
        return candidates[0] if len(candidates) == 1 else ""
    return ""
