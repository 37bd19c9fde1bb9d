"""Reading data files from local paths or fsspec URLs.

Local paths use the standard library (fsspec is optional); any ``scheme://`` path goes through
fsspec, which then must be installed along with the scheme's driver (``s3fs``, ``gcsfs``, ...).
Patterns: shell globs (``shards/*.tar``) and WebDataset brace ranges (``shard-{000..099}.tar``).
"""
from __future__ import annotations

import glob
import os
import posixpath
import re
from typing import Any

from prx_core.errors import DataError

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def is_url(path: str) -> bool:
    return "://" in path


def url_filesystem(path: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URL."""
    try:
        import fsspec
    except ImportError:
        raise DataError(
            f"{path} is a URL, which needs fsspec: `pip install fsspec` plus the driver of its "
            "scheme (s3fs, gcsfs, ...), or copy the data to a local path."
        ) from None
    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as err:
        raise DataError(f"Cannot open {path} with fsspec ({err}): install the driver of its scheme.") from None


def join(root: str, relative: str) -> str:
    return posixpath.join(root, relative) if is_url(root) else os.path.join(root, relative)


def data_root(path: str) -> str:
    """The directory holding a source's data: the path itself when it is a directory, else the
    directory above the file or above the first pattern component."""
    cut = min([path.index(c) for c in "*?[{" if c in path] or [len(path)])
    if cut == len(path) and is_dir(path):
        return path.rstrip("/") or "/"
    head = path[:cut]
    return (head.rsplit("/", 1)[0] or "/") if "/" in head else "."


def is_dir(path: str) -> bool:
    if is_url(path):
        fs, inner = url_filesystem(path)
        return fs.isdir(inner)
    return os.path.isdir(path)


def expand_braces(pattern: str) -> list[str]:
    """``a-{00..02}.tar`` -> ``[a-00.tar, a-01.tar, a-02.tar]`` (zero padding kept; several ranges multiply)."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    low, high = match.group(1), match.group(2)
    width = len(low) if low.startswith("0") and len(low) > 1 else 0
    out = []
    for value in range(int(low), int(high) + 1):
        out.extend(expand_braces(pattern[: match.start()] + str(value).zfill(width) + pattern[match.end():]))
    return out


def find_files(path: str, suffixes: tuple[str, ...], what: str) -> list[str]:
    """Files matching ``path`` (a file, directory searched recursively, glob or brace range)
    whose name ends with one of ``suffixes``, sorted; raises DataError when there are none."""
    if _BRACE.search(path):
        files = [f for p in expand_braces(path) for f in _glob_or_file(p)]
    elif any(c in path for c in "*?["):
        files = _glob_or_file(path)
    elif is_dir(path):
        files = [join(path, rel) for rel in list_tree(path)]
    else:
        files = _glob_or_file(path)
    files = sorted(f for f in files if f.lower().endswith(suffixes))
    if not files:
        raise DataError(
            f"No {what} files ({', '.join(suffixes)}) found at {path}: check the source's path in [data] "
            "sources (a directory, a file, a glob like shards/*.parquet or a range like shard-{000..099}.tar)."
        )
    return files


def list_tree(root: str) -> list[str]:
    """Every file under ``root``, as sorted paths relative to it (hidden entries skipped)."""
    if is_url(root):
        fs, inner = url_filesystem(root)
        prefix = inner.rstrip("/") + "/"
        rel = [p[len(prefix):] for p in fs.find(inner) if p.startswith(prefix)]
    else:
        rel = []
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            base = os.path.relpath(directory, root)
            rel.extend(os.path.normpath(os.path.join(base, n)) for n in names if not n.startswith("."))
    return sorted(r for r in rel if not any(part.startswith(".") for part in r.split("/")))


def _glob_or_file(pattern: str) -> list[str]:
    if is_url(pattern):
        fs, inner = url_filesystem(pattern)
        protocol = pattern.split("://", 1)[0]
        if any(c in inner for c in "*?["):
            return [f"{protocol}://{p}" for p in fs.glob(inner)]
        return [pattern] if fs.isfile(inner) else []
    if any(c in pattern for c in "*?["):
        return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    return [pattern] if os.path.isfile(pattern) else []


def read_bytes(path: str, start: int = 0, length: int = -1) -> bytes:
    """The bytes ``[start, start + length)`` of a file (all of it from ``start`` when ``length < 0``)."""
    if is_url(path):
        fs, inner = url_filesystem(path)
        return fs.cat_file(inner, start=start or None, end=start + length if length >= 0 else None)
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        return f.read(length)


def open_binary(path: str):
    """A seekable binary file object (caller closes it)."""
    if is_url(path):
        fs, inner = url_filesystem(path)
        return fs.open(inner, "rb")
    return open(path, "rb")


def exists(path: str) -> bool:
    if is_url(path):
        fs, inner = url_filesystem(path)
        return fs.exists(inner)
    return os.path.exists(path)
