"""Whether each source of ``[data]`` is where the recipe says, checked before a run builds anything.

Only the location is checked (the directory exists, the glob or range matches files of the
source's kind), not the data: indexing a large source takes as long as the loader's own start, so
a file that turns out unreadable is still found (and counted) by the loader.
"""
from __future__ import annotations

from prx_core.data import files
from prx_core.data.config import DataConfig, SourceConfig
from prx_core.errors import DataError

SHARD_SUFFIXES = {"parquet": ((".parquet",), "Parquet"), "webdataset": ((".tar",), "tar")}
"""Sources made of shard files: the suffixes the loader looks for, and what to call them."""
DIRECTORIES = {"folder": "a directory of images with captions", "mds": "a directory of MDS shards (index.json)"}
"""Sources that are one directory, and what it holds."""


def source_problems(data: DataConfig) -> list[tuple[int, str]]:
    """``(index in [data] sources, what is wrong)`` for each source that cannot be found."""
    found = []
    for index, source in enumerate(data.sources):
        problem = _location_problem(source)
        if problem:
            found.append((index, problem))
    return found


def _location_problem(source: SourceConfig) -> str | None:
    if source.kind == "hf" and not source.path.startswith(("/", ".", "~")):
        return None  # a hub id: found (or not) by the datasets library, online
    try:
        if source.kind in SHARD_SUFFIXES:
            files.find_files(source.path, *SHARD_SUFFIXES[source.kind])
        elif source.kind in DIRECTORIES and not files.is_dir(source.path):
            return f"{source.path} is not a directory (a {source.kind} source is {DIRECTORIES[source.kind]})"
        elif source.kind == "hf" and not files.exists(source.path):
            return f"{source.path} does not exist (an hf source is a dataset directory or a hub id)"
    except DataError as err:
        return str(err).rstrip(".")
    except (OSError, ImportError, ValueError) as err:  # an unreachable URL, a missing fsspec driver
        return f"{source.path} cannot be listed ({type(err).__name__}: {err})"
    return None
