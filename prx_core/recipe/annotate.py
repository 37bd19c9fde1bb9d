"""``prx recipe show --constraints``: the resolved recipe as TOML, each key followed by what its
value may be, read from the same declarations the loader checks (prx_core.recipe.constraints).

The output is still a recipe: values are written inline, everything else is a comment, so saving
and running it repeats the exact settings. Keys left unset (a preset's size, an optional limit)
appear as comments, arrays of tables are followed by the constraints of their entries' keys, and
each table ends with its cross-field rules.
"""
from __future__ import annotations

import typing
from typing import Any

import attrs

from prx_core.recipe.constraints import field_description, rules_of
from prx_core.recipe.errors_format import toml_value
from prx_core.recipe.loader import recipe_to_dict
from prx_core.recipe.schema import Recipe

COLUMN = 44
"""Where the constraint comments start (longer lines push theirs to the right)."""


def annotated_toml(recipe: Recipe) -> str:
    """The recipe as TOML with every key's constraints as comments (see the module docstring)."""
    values = recipe_to_dict(recipe)
    lines = ["# Each key: its value, then what it may be. Every number must be finite (no nan or inf)."]
    tables = []
    for field in attrs.fields(Recipe):
        if field.name == "techniques":
            continue
        if attrs.has(typing.get_type_hints(Recipe)[field.name]):
            tables.append((field.name, type(getattr(recipe, field.name)), values.get(field.name, {})))
        else:
            lines += _key_lines(Recipe, field.name, values)
    lines += [f"# rule: {rule.text}" for rule in rules_of(Recipe)]
    for name in sorted(recipe.techniques):
        config = recipe.techniques[name]
        tables.append((name, type(config) if config is not None else None, values.get(name, {})))
    for name, cls, table in tables:
        lines += ["", f"[{name}]"]
        if cls is None:
            lines.append("# (this technique takes no settings)")
            continue
        for field in attrs.fields(cls):
            lines += _key_lines(cls, field.name, table)
        lines += [f"# rule: {rule.text}" for rule in rules_of(cls)]
    return "\n".join(lines) + "\n"


def _key_lines(cls: type, name: str, values: dict[str, Any]) -> list[str]:
    described = field_description(cls, name)
    shown = f"{name} = {toml_value(values[name])}" if name in values else f"# {name}: unset"
    lines = [f"{shown.ljust(COLUMN - 1)} # {described}"]
    element = _element_class(typing.get_type_hints(cls)[name])
    if element is not None:
        for field in attrs.fields(element):
            lines.append(f"#   {name}[].{field.name}: {field_description(element, field.name)}")
        lines += [f"#   rule for each of {name}: {rule.text}" for rule in rules_of(element)]
    return lines


def _element_class(tp: Any) -> type | None:
    """The attrs class of an array of tables' entries (``list[SourceConfig]`` -> SourceConfig)."""
    args = [arg for arg in typing.get_args(tp) if arg is not Ellipsis]
    return args[0] if len(args) == 1 and attrs.has(args[0]) else None
