"""What a recipe value may be, declared next to the attrs field it constrains, and the one checker
that reads those declarations.

A config class (core table or technique table) declares its fields with :func:`setting`::

    @attrs.define(kw_only=True)
    class TrainConfig:
        steps: int = setting(120_000, at_least(1))
        micro_batch_size: int | None = setting(None, at_least(1))     # None: unset, not checked
        RULES: ClassVar[tuple[Rule, ...]] = (
            Rule(("micro_batch_size", "batch_size"), "micro_batch_size <= batch_size", _micro_fits),
        )

and cross-field rules in a ``RULES`` class variable. :func:`config_problems` walks a structured
config (tables inside it, arrays of tables included) and returns every value that breaks its
field's constraints, then every broken rule whose keys passed their own. Every number must be
finite, whatever its field declares: TOML's ``nan`` and ``inf`` are refused everywhere.
:func:`field_description` says the same in words for ``prx recipe show --constraints``.

The type itself (integer, string, one of a Literal's values) is enforced earlier, when cattrs
structures the table; constraints say what a value of the right type must also satisfy.
"""
from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from prx_core.recipe.errors_format import describe_type, did_you_mean, key_label, toml_value

METADATA_KEY = "prx_constraints"
KeyPath = tuple[str | int, ...]


class Constraint:
    """A condition on one value: :meth:`problem` says what is wrong (None when nothing is), and
    :meth:`text` what is allowed, each as the words after "expected"/"must be"."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError


@attrs.frozen
class Bound(Constraint):
    """A number within bounds; ``None`` leaves a side open, ``strict`` excludes the bound itself."""

    low: float | None = None
    high: float | None = None
    low_strict: bool = False
    high_strict: bool = False

    def problem(self, value: Any) -> str | None:
        low_ok = self.low is None or (value > self.low if self.low_strict else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_strict else value <= self.high)
        return None if low_ok and high_ok else self.text()

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_strict else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_strict else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_strict else '>='} {_num(self.low)}"
        return f"{'<' if self.high_strict else '<='} {_num(self.high)}"


def at_least(low: float) -> Bound:
    return Bound(low=low)


def greater_than(low: float) -> Bound:
    return Bound(low=low, low_strict=True)


def between(low: float, high: float, *, low_strict: bool = False, high_strict: bool = False) -> Bound:
    return Bound(low, high, low_strict, high_strict)


@attrs.frozen
class OneOf(Constraint):
    """A string from a fixed set of names (for sets that are not a ``Literal`` type: presets, metrics)."""

    options: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        return None if value in self.options else self.text() + "." + did_you_mean(str(value), self.options)

    def text(self) -> str:
        return "one of " + ", ".join(toml_value(option) for option in self.options)


@attrs.frozen
class Check(Constraint):
    """Any other condition: ``test(value)`` is true for an allowed value, ``description`` says which:
    a noun phrase that names the type too ("a non-empty string"), or with ``qualifies`` a phrase
    that follows the type ("without repeated entries")."""

    test: Callable[[Any], bool]
    description: str
    qualifies: bool = False

    def problem(self, value: Any) -> str | None:
        return None if self.test(value) else self.description

    def text(self) -> str:
        return self.description


NON_EMPTY_STRING = Check(lambda value: len(value) > 0, "a non-empty string")
NON_EMPTY_ARRAY = Check(lambda value: len(value) > 0, "a non-empty array")
DISTINCT = Check(lambda value: len(set(value)) == len(value), "without repeated entries", qualifies=True)


@attrs.frozen
class Each(Constraint):
    """Every element of an array satisfies ``constraints`` (reported with its index)."""

    constraints: tuple[Constraint, ...]

    def problem(self, value: Any) -> str | None:  # elements are reported one by one by the checker
        return None

    def text(self) -> str:
        return "each " + ", ".join(c.text() for c in self.constraints)


def each(*constraints: Constraint) -> Each:
    return Each(constraints)


@attrs.frozen
class Rule:
    """A rule across fields of one config class (or across tables, on the recipe).

    ``keys``: the dotted paths it reads, relative to the class; an error names the first of them
    that holds a value. ``text``: the rule in words, for ``prx recipe show --constraints``. ``check(config)``:
    None when the rule holds, else what is wrong and what to change (one sentence or two). A rule
    is checked only when every one of its keys passed its own constraints.
    """

    keys: tuple[str, ...]
    text: str
    check: Callable[[Any], str | None]


def setting(default: Any = attrs.NOTHING, *constraints: Constraint) -> Any:
    """An attrs field with a ``default`` (a value or an ``attrs.Factory``; none: required) and
    ``constraints``. ``None`` as a value means "unset" and is not checked."""
    return attrs.field(default=default, metadata={METADATA_KEY: constraints})


@attrs.frozen
class Violation:
    """One broken constraint: ``key`` the path of the value (or of the first key of a rule),
    ``value`` what was given there, ``message`` what is wrong."""

    key: KeyPath
    value: Any
    message: str
    rule: bool = False


def config_problems(config: Any, prefix: KeyPath = ()) -> list[Violation]:
    """Every constraint and rule ``config`` (an attrs instance) breaks, tables inside it included,
    with key paths starting at ``prefix``."""
    violations: list[Violation] = []
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        path = (*prefix, field.name)
        found = list(_value_problems(value, field.metadata.get(METADATA_KEY, ()), path))
        violations += found if found else _nested_problems(value, path)
    failed = [v.key for v in violations if not v.rule]
    for rule in rules_of(type(config)):
        keys = [(*prefix, *key.split(".")) for key in rule.keys]
        if any(f[: len(key)] == key or key[: len(f)] == f for key in keys for f in failed):
            continue  # a key of the rule is wrong already: say that, not a consequence of it
        message = rule.check(config)
        if message:
            # Named by its first key that holds a value (an unset one defers to a preset or default).
            index = next((i for i, key in enumerate(rule.keys) if _get(config, key) is not None), 0)
            value = _get(config, rule.keys[index]) if rule.keys else None
            violations.append(Violation(keys[index] if keys else prefix, value, message, rule=True))
    return violations


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def rules_of(cls: type) -> tuple[Rule, ...]:
    return tuple(getattr(cls, "RULES", ()))


def _value_problems(value: Any, constraints: Sequence[Constraint], path: KeyPath) -> Iterator[Violation]:
    if value is None:
        return
    items = enumerate(value) if isinstance(value, (list, tuple)) else ()
    for index, item in [(None, value), *items]:
        if isinstance(item, float) and not math.isfinite(item):
            yield Violation(path if index is None else (*path, index), item, "expected a finite number")
            return
    for constraint in constraints:
        if isinstance(constraint, Each):
            for index, item in enumerate(value):
                yield from _value_problems(item, constraint.constraints, (*path, index))
            continue
        problem = constraint.problem(value)
        if problem:
            kind = ("an integer " if isinstance(value, int) else "a number ") if isinstance(constraint, Bound) else ""
            kind = "an array " if isinstance(constraint, Check) and constraint.qualifies else kind
            yield Violation(path, value, f"expected {kind}{problem}")
            return


def _nested_problems(value: Any, path: KeyPath) -> list[Violation]:
    if attrs.has(type(value)):
        return config_problems(value, path)
    if isinstance(value, (list, tuple)):
        return [v for index, item in enumerate(value) if attrs.has(type(item))
                for v in config_problems(item, (*path, index))]
    return []


def field_description(cls: type, name: str) -> str:
    """A field's type and constraints in words, e.g. "an integer >= 1 (or unset)"."""
    field = attrs.fields_dict(cls)[name]
    tp = typing.get_type_hints(cls)[name]
    words = describe_type(tp)
    for constraint in field.metadata.get(METADATA_KEY, ()):
        if isinstance(constraint, Bound):
            words += " " + constraint.text()
        elif isinstance(constraint, Check) and constraint.qualifies:
            words += ", " + constraint.text()
        elif isinstance(constraint, Each):
            words += ", each " + " and ".join(c.text() for c in constraint.constraints)
        else:
            words = constraint.text()  # a noun phrase that names the type itself
    return words + (" (or unset)" if type(None) in typing.get_args(tp) else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def describe_violation(violation: Violation) -> str:
    """The violation as a recipe author reads it, without the file: "[train] steps = 0: expected an
    integer >= 1." for a value, "[data] sources: give every source a weight, or none." for a rule
    (with the value of its first key when that is a plain value)."""
    label = key_label(violation.key)
    value = violation.value
    tables = isinstance(value, (list, tuple)) and any(attrs.has(type(item)) for item in value)
    if value is None or attrs.has(type(value)) or tables:
        return f"{label}: {_sentence(violation.message)}"
    return f"{label} = {toml_value(value)}: {_sentence(violation.message)}"


def _sentence(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else text + "."
