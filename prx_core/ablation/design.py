"""The design of an ablation: which factors vary, which combinations run, with which seeds.

A *factor* is a group of techniques switched on or off together (``tread`` or
``tread+tread_guidance``), or a recipe key set to each of several values (``optim.lr=1e-4,3e-4``).
Every design has one *reference* variant that the report compares against:

- ``factorial``: every combination of levels; reference = plugin factors off, value factors at
  their first value.
- ``one-at-a-time``: the reference (as in factorial) plus one variant per changed level.
- ``leave-one-out``: reference = the full recipe with every plugin factor on (value factors at
  their first value), plus one variant per factor switched off (or value changed).
- ``add-and-remove`` (plugin factors only): both ends of the ladder, each technique measured
  twice: the baseline without the varied techniques (the reference), each technique added to it
  alone, the full recipe, and the full recipe without each technique. The difference between a
  technique's two effects (what it adds to the full recipe minus what it adds alone) is its
  interaction with all the others together.

``pairs`` adds, to one-at-a-time and leave-one-out, one variant per pair of changes, which the
interaction table needs (factorial has them already).

The *anchors* are the reference and, in add-and-remove, the full recipe: every comparison of
the report involves one of them, so ``anchor_seeds`` (more seeds than the other variants get)
tighten all comparisons at once.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import cattrs

from prx_core.errors import UserError

DESIGNS = ("factorial", "one-at-a-time", "leave-one-out", "add-and-remove")
FULL = "full"
PLAN_FILE = "ablation.json"
_VALUE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


@attrs.frozen
class Factor:
    """``plugins`` is non-empty for a plugin factor (levels "off", "on"); a value factor has the
    TOML values of ``key`` as levels."""

    key: str
    levels: tuple[str, ...]
    plugins: tuple[str, ...] = ()

    @property
    def is_plugin(self) -> bool:
        return bool(self.plugins)


@attrs.frozen
class Variant:
    """One combination of factor levels: ``levels`` maps factor key -> level; ``changes`` names
    the factors that differ from the reference; ``overrides`` are its ``--set`` items."""

    name: str
    levels: dict[str, str]
    changes: tuple[str, ...]
    plugins: tuple[str, ...]
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.name.replace(" ", "_"))


@attrs.frozen
class RunSpec:
    """One run: ``directory`` is relative to the ablation folder."""

    variant: str
    seed: int
    directory: str
    overrides: tuple[str, ...]


@attrs.frozen
class AblationPlan:
    """``seeds`` are every variant's; ``anchor_seeds`` (a superset, or empty) the anchors'."""

    recipe: str
    design: str
    factors: tuple[Factor, ...]
    seeds: tuple[int, ...]
    budget: str
    common: tuple[str, ...]
    variants: tuple[Variant, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    anchor_seeds: tuple[int, ...] = ()

    @property
    def reference(self) -> Variant:
        return next(v for v in self.variants if not v.changes)

    @property
    def anchors(self) -> tuple[str, ...]:
        """The reference, and in add-and-remove also the full recipe."""
        return (self.reference.name, FULL) if self.design == "add-and-remove" else (self.reference.name,)

    def seeds_of(self, variant: str) -> tuple[int, ...]:
        return self.anchor_seeds if variant in self.anchors and self.anchor_seeds else self.seeds

    def runs(self, phase_steps: dict[str, tuple[int, ...]] | None = None) -> list[RunSpec]:
        """Seed-major, so every variant's first seed finishes before any second seed.
        ``phase_steps`` (variant -> steps of each phase) is what a ``bench:`` budget gives."""
        budget = budget_overrides(self.budget)
        runs = []
        for seed in sorted(set(self.seeds) | set(self.anchor_seeds)):
            for v in self.variants:
                if seed not in self.seeds_of(v.name):
                    continue
                steps = (f"train.phase_steps={list(phase_steps[v.name])}",) if phase_steps else ()
                runs.append(RunSpec(v.name, seed, f"runs/{v.slug}/seed{seed}",
                                    (*self.common, *v.overrides, f"seed={seed}", *budget, *steps)))
        return runs

    def to_json(self) -> str:
        return json.dumps(cattrs.unstructure(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> AblationPlan:
        return cattrs.structure(json.loads(text), cls)


def split_values(text: str) -> list[str]:
    """Split ``a,b,[c,d],"e,f"`` on the commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


def parse_vary(items: Sequence[str]) -> list[Factor]:
    """Factors from ``--vary`` items: ``tread,repa`` (one factor per name), ``tread+tread_guidance``
    (one factor toggling both) or ``table.key=v1,v2[,...]`` (TOML values)."""
    factors: list[Factor] = []
    for item in items:
        if "=" in item:
            key, _, values = item.partition("=")
            key = key.strip()
            levels = tuple(split_values(values))
            if not _VALUE_KEY.match(key) or key == "plugins":
                raise UserError(f"--vary '{item}': '{key}' is not a recipe key such as optim.lr (vary techniques "
                                f"by name instead: --vary tread,repa).")
            if len(levels) < 2 or len(set(levels)) != len(levels) or "" in levels:
                raise UserError(f"--vary '{item}': give at least two different values, comma-separated, e.g. "
                                f"--vary {key}=1e-4,3e-4.")
            factors.append(Factor(key, levels))
            continue
        for group in (g.strip() for g in item.split(",")):
            names = tuple(n.strip() for n in group.split("+"))
            if not group or not all(names):
                raise UserError(f"--vary '{item}': empty technique name; write --vary tread,repa or "
                                f"--vary tread+tread_guidance.")
            factors.append(Factor(group, ("off", "on"), names))
    keys = [f.key for f in factors]
    plugin_names = [n for f in factors for n in f.plugins]
    for name in sorted({k for k in keys if keys.count(k) > 1} | {n for n in plugin_names if plugin_names.count(n) > 1}):
        raise UserError(f"--vary names '{name}' twice; each technique and key may appear in one factor only.")
    if not factors:
        raise UserError("nothing to vary: give --vary with technique names (tread,repa) or table.key=v1,v2.")
    return factors


def reference_levels(factors: Sequence[Factor], design: str) -> dict[str, str]:
    on = design == "leave-one-out"
    return {f.key: ("on" if on else "off") if f.is_plugin else f.levels[0] for f in factors}


def _describe(factor: Factor, level: str) -> str:
    if factor.is_plugin:
        return ("+" if level == "on" else "-") + factor.key
    return f"{factor.key}={level}"


def make_variant(recipe_plugins: Iterable[str], factors: Sequence[Factor], levels: dict[str, str],
                 reference: dict[str, str], design: str) -> Variant:
    varied = {n for f in factors for n in f.plugins}
    plugins = set(recipe_plugins) - varied
    for f in factors:
        if f.is_plugin and levels[f.key] == "on":
            plugins |= set(f.plugins)
    changes = tuple(f.key for f in factors if levels[f.key] != reference[f.key])
    by_key = {f.key: f for f in factors}
    if design == "add-and-remove" and len(changes) >= 2:
        name = FULL + "".join(f" -{k}" for k in by_key if levels[k] == "off")
    elif changes:
        name = " ".join(_describe(by_key[k], levels[k]) for k in changes)
    else:
        name = FULL if design == "leave-one-out" else "baseline"
    overrides = (f"plugins={json.dumps(sorted(plugins))}",
                 *(f"{f.key}={levels[f.key]}" for f in factors if not f.is_plugin))
    return Variant(name, dict(levels), changes, tuple(sorted(plugins)), overrides)


def design_variants(recipe_plugins: Iterable[str], factors: Sequence[Factor], design: str,
                    pairs: bool = False) -> list[Variant]:
    """The variants of ``design`` (see the module docstring), reference first."""
    if design not in DESIGNS:
        raise UserError(f"unknown design '{design}': choose one of {', '.join(DESIGNS)}.")
    recipe_plugins = tuple(recipe_plugins)
    reference = reference_levels(factors, design)
    if design == "add-and-remove":
        if any(not f.is_plugin for f in factors):
            raise UserError("--design add-and-remove varies techniques only (--vary tread,repa); sweep a value "
                            "such as optim.lr=1e-4,3e-4 with --design one-at-a-time or factorial.")
        if len(factors) < 2:
            raise UserError("--design add-and-remove needs at least two techniques to vary; with one, "
                            "--design one-at-a-time runs the same two variants.")
        keys = [f.key for f in factors]
        full = {key: "on" for key in keys}
        combos = [dict(reference), *({**reference, key: "on"} for key in keys), full,
                  *({**full, key: "off"} for key in keys)]
        unique: dict[tuple, dict[str, str]] = {}
        for combo in combos:  # with two techniques, the full recipe without one is the other alone
            unique.setdefault(tuple(sorted(combo.items())), combo)
        return [make_variant(recipe_plugins, factors, combo, reference, design) for combo in unique.values()]
    if design == "factorial":
        keys = [f.key for f in factors]
        combos = [dict(zip(keys, levels)) for levels in itertools.product(*(f.levels for f in factors))]
        combos.sort(key=lambda c: sum(c[k] != reference[k] for k in c))
    else:
        changes = [(f.key, level) for f in factors for level in f.levels if level != reference[f.key]]
        combos = [dict(reference)] + [{**reference, key: level} for key, level in changes]
        if pairs:
            combos += [{**reference, a: la, b: lb} for (a, la), (b, lb) in itertools.combinations(changes, 2) if a != b]
    return [make_variant(recipe_plugins, factors, combo, reference, design) for combo in combos]


def budget_seconds(budget: str) -> tuple[str, float]:
    """``("steps", 0)``, or the kind (``wall``, ``bench``) and seconds of ``KIND:SECONDS``."""
    if budget == "steps":
        return "steps", 0.0
    kind, _, seconds = budget.partition(":")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if kind not in ("wall", "bench") or not 0 < value < float("inf"):
        raise UserError(f"--budget '{budget}': use 'steps' (equal steps), 'bench:SECONDS' (equal wall-clock: each "
                        f"variant trains the steps its measured throughput buys in SECONDS) or 'wall:SECONDS' "
                        f"(each run stops after SECONDS; fair on a quiet machine only), e.g. --budget bench:480.")
    return kind, value


def budget_overrides(budget: str) -> tuple[str, ...]:
    """``steps``: every run trains the recipe's steps; ``wall:SECONDS``: every run also stops after
    SECONDS of training (``train.max_wall_s``); ``bench:SECONDS``: nothing common (each variant
    gets its own ``train.phase_steps``, see :mod:`prx_core.ablation.bench_budget`)."""
    kind, seconds = budget_seconds(budget)
    return (f"train.max_wall_s={seconds:g}",) if kind == "wall" else ()


def check_common(common: Sequence[str], factors: Sequence[Factor]) -> None:
    """A ``--set`` must not set what the design controls (plugins, seed, a varied key)."""
    controlled = {"plugins", "seed", *(f.key for f in factors if not f.is_plugin)}
    for item in common:
        key = item.partition("=")[0].strip()
        if key in controlled:
            raise UserError(f"--set {item}: the ablation sets '{key}' itself for every run; drop this --set "
                            f"(vary it with --vary, or change it in the recipe).")


def split_valid(variants: Sequence[Variant], problems_of: Any) -> tuple[list[Variant], list[tuple[str, str]]]:
    """Drop the variants whose plugin set ``problems_of(plugins) -> [message]`` rejects (e.g. a
    guidance technique without the technique it requires); the reference must be valid."""
    kept, skipped = [], []
    for variant in variants:
        problems = problems_of(variant.plugins)
        if not problems:
            kept.append(variant)
        elif not variant.changes:
            raise UserError(f"the reference variant '{variant.name}' (plugins {', '.join(variant.plugins) or 'none'}) "
                            f"is not a valid recipe: {' '.join(problems)} Group techniques that need each other "
                            f"into one factor, e.g. --vary tread+tread_guidance.")
        else:
            skipped.append((variant.name, " ".join(problems)))
    return kept, skipped
