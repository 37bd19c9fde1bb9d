"""Read a TOML recipe: ``extends`` inheritance, ``--set`` overrides, strict structuring.

Precedence: ``--set`` > the recipe file > the files it extends (depth-first, later entries of an
``extends`` list over earlier ones) > the defaults of the config classes. Tables merge key by
key; arrays and values replace. Every problem a user can fix is collected and raised as one
:class:`~prx_core.errors.RecipeError`, one paragraph per problem, each naming the file (or
``--set`` item) that set the key, the table, the key, the expected type and the value given.

The loaded recipe remembers where each key came from: :func:`recipe_sources` and
:func:`recipe_path` (see :mod:`prx_core.recipe.errors_format`).
"""
from __future__ import annotations

import collections.abc
import copy
import os
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomli_w
import tomllib
from cattrs.errors import (
    CattrsError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from prx_core import registry as plugin_registry
from prx_core.errors import RecipeError
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.errors_format import (
    attach_provenance,
    describe_type,
    did_you_mean,
    display_path,
    key_label,
    names_list,
    recipe_path,
    recipe_sources,
    table_label,
    toml_value,
)
from prx_core.recipe.schema import CORE_KEYS, CORE_TABLES, Recipe

__all__ = ["dump_recipe_toml", "load_recipe", "recipe_path", "recipe_sources", "recipe_to_dict"]

KeyPath = tuple[str, ...]
Sources = dict[KeyPath, str]


def load_recipe(
    path: str | os.PathLike, overrides: Sequence[str] = (), registry: plugin_registry.Registry | None = None
) -> Recipe:
    """Load, merge, override and structure the recipe at ``path``.

    ``overrides`` are ``KEY=VALUE`` items (``train.steps=100``, ``plugins=["tread"]``); the value
    is read as a TOML value, else taken as a bare string. ``registry`` says which technique tables
    exist (default: :func:`prx_core.registry.discover`). Technique tables are structured into each
    technique's config class in ``recipe.techniques``, selected techniques without a table get
    their default config. ``name`` defaults to the file's stem.
    """
    path = Path(path)
    data, sources = _read(path.absolute(), chain=())
    _apply_overrides(data, sources, overrides)
    data.setdefault("name", path.stem)
    recipe = _build(data, sources, registry if registry is not None else plugin_registry.discover(), path)
    attach_provenance(recipe, path, {".".join(key): label for key, label in sources.items()})
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain TOML-able data: core keys and tables, then one table per technique in
    ``recipe.techniques`` (sorted). None values (meaning "not set", e.g. preset overrides) are left
    out, since TOML has no null; loading the result gives the same recipe."""
    out: dict[str, Any] = {}
    for field in attrs.fields(Recipe):
        if field.name != "techniques":
            out[field.name] = _CONVERTER.unstructure(getattr(recipe, field.name))
    for name in sorted(recipe.techniques):
        config = recipe.techniques[name]
        out[name] = _CONVERTER.unstructure(config) if config is not None else {}
    return _plain(out)


def dump_recipe_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML text (what ``prx recipe show`` prints and a run folder keeps)."""
    return tomli_w.dumps(recipe_to_dict(recipe))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# Files, extends and --set


def _read(file: Path, chain: tuple[Path, ...], referrer: tuple[Path, str] | None = None) -> tuple[dict, Sources]:
    """The merged data of ``file`` and everything it extends, with the file that set each key."""
    resolved = file.resolve()
    if resolved in chain:
        loop = " -> ".join(display_path(p) for p in (*chain[chain.index(resolved):], resolved))
        named = f' = "{referrer[1]}"' if referrer is not None else ""
        raise RecipeError(
            f"{display_path(chain[-1])}: extends{named} closes a loop ({loop}); remove one of these extends."
        )
    data = _parse(file, referrer)
    label = display_path(file)
    parents = data.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(
            f"{label}: extends = {toml_value(parents)}: expected a file name or an array of file names, "
            'e.g. extends = "base.toml".'
        )
    merged: dict = {}
    sources: Sources = {}
    for parent in parents:
        parent_data, parent_sources = _read(file.parent / parent, (*chain, resolved), referrer=(file, parent))
        _merge(merged, sources, parent_data, parent_sources)
    _merge(merged, sources, data, {key: label for key in _key_paths(data)})
    return merged, sources


def _parse(file: Path, referrer: tuple[Path, str] | None) -> dict:
    label = display_path(file)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        if referrer is not None:
            raise RecipeError(
                f'{display_path(referrer[0])}: extends = "{referrer[1]}", but {label} does not exist '
                "(extends paths are relative to the file that names them)."
            ) from None
        nearby = sorted(p.name for p in file.parent.glob("*.toml")) if file.parent.is_dir() else []
        hint = f" Recipes in {display_path(file.parent)}: {names_list(nearby)}." if nearby else ""
        raise RecipeError(f"recipe file {label} does not exist.{hint}") from None
    except OSError as err:
        raise RecipeError(f"cannot read recipe file {label}: {err.strerror or err}.") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{label}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(_syntax_message(label, text, err)) from None


def _syntax_message(label: str, text: str, err: tomllib.TOMLDecodeError) -> str:
    message = str(err)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        line, column = int(match[1]), int(match[2])
    else:  # "(at end of document)"
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    reason = re.sub(r"\s*\(at [^)]*\)$", "", message)
    source_lines = text.splitlines()
    shown = source_lines[line - 1].strip() if 0 < line <= len(source_lines) else ""
    quoted = f": `{shown}`" if shown else ""
    return f"{label}:{line}:{column}: invalid TOML: {reason} at line {line}, column {column}{quoted}."


def _key_paths(data: Mapping, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Every key path in ``data``, tables included (``("train",)``, ``("train", "steps")``)."""
    for key, value in data.items():
        path = (*prefix, key)
        yield path
        if isinstance(value, dict):
            yield from _key_paths(value, path)


def _merge(target: dict, target_sources: Sources, data: Mapping, data_sources: Sources, prefix: KeyPath = ()) -> None:
    """Merge ``data`` into ``target`` (tables recursively, everything else replaced) and carry
    the sources of the keys ``data`` sets."""
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            target_sources[path] = data_sources[path]
            _merge(target[key], target_sources, value, data_sources, path)
            continue
        for stale in [p for p in target_sources if p[: len(path)] == path]:
            del target_sources[stale]
        target[key] = copy.deepcopy(value)
        target_sources.update({p: s for p, s in data_sources.items() if p[: len(path)] == path})


def _apply_overrides(data: dict, sources: Sources, overrides: Sequence[str]) -> None:
    for item in overrides:
        key, separator, raw = item.partition("=")
        key = key.strip()
        label = f"--set {item}"
        if not separator or not key:
            raise RecipeError(
                f'{label}: expected KEY=VALUE, e.g. --set train.steps=100 or --set plugins=["tread","repa"].'
            )
        parts = tuple(part.strip() for part in key.split("."))
        if not all(parts):
            raise RecipeError(f"{label}: '{key}' is not a key path; write table.key, e.g. train.steps.")
        if parts[0] == "extends":
            raise RecipeError(f"{label}: extends can only be set inside a recipe file.")
        nested: Any = _parse_value(raw)
        for part in reversed(parts):
            nested = {part: nested}
        _merge(data, sources, nested, {path: label for path in _key_paths(nested)})


def _parse_value(raw: str) -> Any:
    """``raw`` read as a TOML value (``100``, ``true``, ``[1, 2]``, ``"text"``), else the bare string."""
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return parsed["value"] if list(parsed) == ["value"] else raw


# ---------------------------------------------------------------------------------------------
# Structuring


class _WrongType(TypeError):
    """A value of the wrong kind; the message shows the expected type, no detail needed."""


def _strict(kind: type) -> Any:
    """cattrs' default for int/float/bool/str calls the type (int(3.7) == 3, bool("no") is True);
    a recipe must say what it means, so only the TOML type itself is accepted (ints as floats)."""

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise _WrongType()
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise _WrongType()
        return value

    return structure


def _is_array(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return origin in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)


def _array_hook(tp: Any, converter: cattrs.Converter) -> Any:
    """Arrays only from TOML arrays (cattrs would split a string into characters); tuples from
    arrays, with their length checked."""
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        hooks = [converter.get_structure_hook(arg) for arg in args]

        def structure_fixed(value: Any, _: Any) -> tuple:
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise _WrongType()
            return tuple(hook(item, arg) for hook, item, arg in zip(hooks, value, args))

        return structure_fixed
    element = args[0] if args else Any
    hook = converter.get_structure_hook(element)

    def structure_array(value: Any, _: Any) -> list | tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType()
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(hook(item, element))
            except Exception as err:  # collected with its index, like cattrs' own list hook
                err.add_note(IterableValidationNote(f"Structuring {tp} @ index {index}", index, element))
                errors.append(err)
        if errors:
            raise IterableValidationError(f"While structuring {tp}", errors, tp)
        return tuple(items) if origin is tuple else items

    return structure_array


def _table_hook(cl: type, converter: cattrs.Converter) -> Any:
    inner = make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=True)

    def structure_table(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise _WrongType()
        return inner(value, cl)

    return structure_table


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (int, float, bool, str):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook_factory(_is_array, _array_hook)
    converter.register_structure_hook_factory(attrs.has, _table_hook)
    return converter


_CONVERTER = _make_converter()
_MISSING = object()


def _build(data: dict, sources: Sources, registry: plugin_registry.Registry, path: Path) -> Recipe:
    """Structure the merged data; collect every problem before raising."""
    problems: list[str] = []
    core: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    for key, value in data.items():
        if key in CORE_KEYS or key in CORE_TABLES:
            core[key] = value
        elif key in registry.techniques:
            tables[key] = value
        else:
            problems.append(_unknown_top_level(key, value, sources, registry, path))

    recipe: Recipe | None = None
    try:
        recipe = _CONVERTER.structure(core, Recipe)
    except (ClassValidationError, ValueError, TypeError) as err:
        problems += _structure_problems(err, (), Recipe, data, sources, path)

    techniques: dict[str, Any] = {}
    for name in sorted(tables):
        config_class = registry.techniques[name].config
        if config_class is None:
            if tables[name]:
                problems.append(
                    f"{_where(sources, (name,), path)}: [{name}] has settings, but technique {name} takes none; "
                    "remove them."
                )
            techniques[name] = None
            continue
        try:
            techniques[name] = _CONVERTER.structure(tables[name], config_class)
        except (ClassValidationError, ValueError, TypeError) as err:
            problems += _structure_problems(err, (name,), config_class, data, sources, path)

    if recipe is not None:
        location = _where(sources, ("plugins",), path)
        problems += plugin_registry.unknown_technique_problems(recipe.plugins, registry, location)
        for name in sorted(set(recipe.plugins) & set(registry.techniques) - set(techniques)):
            config_class = registry.techniques[name].config
            try:
                techniques[name] = config_class() if config_class is not None else None
            except (TypeError, ValueError) as err:
                problems.append(
                    f"{location}: plugins selects {name}, whose settings have no defaults; add a [{name}] table "
                    f"({err})."
                )
    if recipe is not None:
        recipe.techniques = techniques
        # What each value may be, declared next to its field (prx_core.recipe.constraints).
        violations = config_problems(recipe)
        for name, config in sorted(techniques.items()):
            violations += config_problems(config, (name,)) if config is not None else []
        problems += [f"{_where(sources, v.key, path)}: {describe_violation(v)}" for v in violations]
    if problems:
        raise RecipeError("\n\n".join(problems))
    assert recipe is not None
    return recipe


def _where(sources: Sources, key: tuple[str | int, ...], path: Path) -> str:
    keys = [part for part in key if isinstance(part, str)]
    while keys:
        if tuple(keys) in sources:
            return sources[tuple(keys)]
        keys.pop()
    return display_path(path)


def _unknown_top_level(key: str, value: Any, sources: Sources, registry: plugin_registry.Registry, path: Path) -> str:
    label = f"table [{key}]" if isinstance(value, dict) else f"key {key}"
    installed = sorted(registry.techniques)
    valid = [k for k in CORE_KEYS if k != "extends"] + list(CORE_TABLES) + installed
    message = (
        f"{_where(sources, (key,), path)}: unknown {label}.{did_you_mean(key, valid)} The top level of a recipe holds "
        f"name, seed, plugins and extends, the core tables ({names_list(CORE_TABLES)}) and one table per "
        f"installed technique (installed: {names_list(installed)})."
    )
    for broken in registry.broken:
        if broken.entry_point == key:
            message += f" Plugin '{key}' is installed but failed to load: {broken.error}."
    return message


def _structure_problems(
    err: BaseException, prefix: KeyPath, cl: type, data: dict, sources: Sources, path: Path
) -> list[str]:
    return [_problem(key, exc, tp, data, sources, path) for key, exc, tp in _walk(err, prefix, cl)]


def _walk(err: BaseException, key: tuple[str | int, ...], tp: Any) -> Iterator[tuple[tuple, BaseException, Any]]:
    """The leaves of cattrs' exception groups, with the key path and expected type of each."""
    if isinstance(err, (ClassValidationError, IterableValidationError)):
        with_notes, without_notes = err.group_exceptions()
        for exc, note in with_notes:
            step = note.name if isinstance(err, ClassValidationError) else note.index
            yield from _walk(exc, (*key, step), note.type)
        for exc in without_notes:
            yield from _walk(exc, key, tp)
    elif isinstance(err, ForbiddenExtraKeysError):
        for extra in sorted(err.extra_fields):
            yield (*key, extra), err, err.cl
    else:
        yield key, err, tp


def _problem(key: tuple, exc: BaseException, tp: Any, data: dict, sources: Sources, path: Path) -> str:
    where = _where(sources, key, path)
    if isinstance(exc, ForbiddenExtraKeysError):
        table = table_label(key[:-1])
        settings = [field.name for field in attrs.fields(exc.cl)]
        return (
            f"{where}: {table} has no setting '{key[-1]}'.{did_you_mean(key[-1], settings)} "
            f"Settings of {table}: {names_list(settings)}."
        )
    if isinstance(exc, KeyError):
        return f"{where}: {key_label(key)} is required ({describe_type(tp)}); add it."
    if attrs.has(tp) and not isinstance(exc, _WrongType):
        # The config class's own validation (attrs validators, __attrs_post_init__) rejected the table.
        return f"{where}: {table_label(key)}: {' '.join(str(exc).split())}."
    value = _lookup(data, key)
    given = f" = {toml_value(value)}" if value is not _MISSING else ""
    detail = "" if isinstance(exc, (_WrongType, CattrsError)) else f" ({' '.join(str(exc).split())})"
    return f"{where}: {key_label(key)}{given}: expected {describe_type(tp)}{detail}."


def _lookup(data: Any, key: tuple) -> Any:
    for part in key:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data
