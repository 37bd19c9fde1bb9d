"""Where each value of a recipe came from, and how to say it in an error message.

A loaded :class:`~prx_core.recipe.schema.Recipe` remembers its file and, for every key path
(``"train.steps"``), the file that set it or the ``--set`` option that overrode it. The schema
classes stay plain attrs classes: provenance lives beside them, keyed by the recipe object, and
goes away with it. A recipe built in code (or copied with ``attrs.evolve``) has none, and
messages then say "the recipe".
"""
from __future__ import annotations

import difflib
import types
import typing
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Provenance:
    """``path``: the recipe file that was loaded; ``sources``: dotted key path -> file or ``--set`` item."""

    path: Path
    sources: Mapping[str, str]


# Keyed by id(): attrs classes with ``eq`` are unhashable, so a WeakKeyDictionary cannot hold them;
# a finalizer drops the entry when the recipe is garbage-collected.
_PROVENANCE: dict[int, Provenance] = {}


def attach_provenance(recipe: object, path: Path, sources: Mapping[str, str]) -> None:
    """Remember where ``recipe`` (a freshly loaded Recipe) and each of its keys came from."""
    _PROVENANCE[id(recipe)] = Provenance(path=path, sources=dict(sources))
    weakref.finalize(recipe, _PROVENANCE.pop, id(recipe), None)


def recipe_sources(recipe: object) -> dict[str, str]:
    """Dotted key path -> the file (or ``--set KEY=VALUE``) that set it; keys left at their
    default are absent. Empty for a recipe that was not loaded from a file."""
    provenance = _PROVENANCE.get(id(recipe))
    return dict(provenance.sources) if provenance else {}


def recipe_path(recipe: object) -> Path | None:
    """The file ``recipe`` was loaded from, or None for a recipe built in code."""
    provenance = _PROVENANCE.get(id(recipe))
    return provenance.path if provenance else None


def where(recipe: object, key: str = "") -> str:
    """The label to start an error about ``key`` with: the file (or ``--set`` item) that set the key
    or its nearest enclosing table, else the recipe file, else "the recipe"."""
    provenance = _PROVENANCE.get(id(recipe))
    if provenance is None:
        return "the recipe"
    parts = key.split(".") if key else []
    while parts:
        found = provenance.sources.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return display_path(provenance.path)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` (with its leading space) for a close match, else an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def names_list(names: Iterable[str]) -> str:
    """``a, b and c`` (or "none")."""
    items = list(names)
    if not items:
        return "none"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def key_label(path: tuple[str | int, ...]) -> str:
    """How a user finds the key at ``path`` in a recipe: ``[train] steps``, ``[tread] routes[0].start``,
    ``plugins[1]``, ``seed``."""
    segments: list[str] = []
    for part in path:
        if isinstance(part, int) and segments:
            segments[-1] += f"[{part}]"
        else:
            segments.append(str(part))
    if len(segments) <= 1 or len(path) <= 1:
        return "".join(segments)
    return f"[{segments[0]}] " + ".".join(segments[1:])


def table_label(path: tuple[str | int, ...]) -> str:
    """The table at ``path`` as a user names it: ``[train]``, ``[tread] routes[0]``."""
    return f"[{path[0]}]" if len(path) == 1 else key_label(path)


def toml_value(value: Any) -> str:
    """``value`` written the way TOML writes it (strings quoted, booleans lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


_SIMPLE_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe_type(tp: Any) -> str:
    """A recipe author's words for the type of a config field ("an integer", "one of 'a', 'b'")."""
    if tp in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(toml_value(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        # TOML has no null: a None member only means "unset by default", so do not mention it.
        members = [describe_type(arg) for arg in args if arg is not type(None)]
        return " or ".join(members)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(set(args)) == 1:
            return f"an array of {len(args)} values, each {describe_type(args[0])}"
        return f"an array of {len(args)} values ({', '.join(describe_type(arg) for arg in args)})"
    if origin in (list, tuple) or tp in (list, tuple):
        return f"an array of {_plural(args[0])}" if args else "an array"
    if origin is dict or tp is dict or attrs.has(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    words = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
    if attrs.has(tp):
        return "tables"
    return words.get(tp, f"values ({describe_type(tp)})")
