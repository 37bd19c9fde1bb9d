"""Discovery: finds the installed techniques and checks their declarations, once per process.

:func:`discover` loads every module of the ``prx.plugins`` entry-point group (or only those
named in ``$PRX_PLUGINS``), asks each for its techniques through ``prx_register_techniques``
and checks each technique's declaration and plugin class against the hook specifications. A
module that fails is recorded in :attr:`Registry.broken` with its error; the others still load.
Two plugins registering one technique name are both broken, unless one of them is built into prx
(:data:`BUILT_IN`): then the other is the broken one and the built-in keeps working.
:func:`selection_problems` checks a selection of techniques against their declarations (unknown
names, two implementations of an exclusive hook, declared conflicts and requirements) before
anything is built, the one place these rules are checked; the
techniques one run uses are :class:`prx_core.techniques.TechniqueSet`.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from prx_core import hookspecs
from prx_core.errors import PluginError
from prx_core.recipe.errors_format import did_you_mean, names_list
from prx_core.recipe.schema import CORE_KEYS, CORE_TABLES
from prx_core.types import Technique, parse_effect

ENTRY_POINT_GROUP = "prx.plugins"
ENV_ONLY = "PRX_PLUGINS"
"""Comma-separated entry-point names to load; unset loads all, an empty value loads none."""

BUILT_IN = "prx"
"""The distribution whose entry points are prx's own techniques."""
CORE_NAMES = {"loss_term": "diffusion", "optimizer": "adamw"}
"""Effect kind -> the name the core itself uses (the objective's term, the default optimizer)."""
NAMED_WHAT = {"loss_term": "add a loss term", "adds_module": "attach a module", "optimizer": "label an optimizer"}
"""Effect kind (:data:`prx_core.types.NAMED`) -> what two techniques declaring one name would both do."""

HOOK_NAMES = tuple(hookspecs.hook_names())
TRACKER_HOOK = "prx_metrics_sink"
"""A technique that implements this hook is a tracker: it observes a run and may not change it."""
TRACKER_MAY_ALSO = ("prx_check_recipe",)
_TECHNIQUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@attrs.frozen
class BrokenPlugin:
    """A plugin module that could not be used, and why (shown by ``prx plugins``)."""

    entry_point: str
    module: str
    error: str


@attrs.frozen
class Registry:
    """Every technique that loaded, where it came from, and the plugins that did not load."""

    techniques: dict[str, Technique]
    origins: dict[str, tuple[str, str, str]]
    """technique -> (entry point name, module, distribution version); "" where not known."""
    hooks_by_technique: dict[str, tuple[str, ...]]
    """technique -> the hooks its plugin class implements, in the order the core calls them."""
    broken: tuple[BrokenPlugin, ...]

    @property
    def trackers(self) -> tuple[str, ...]:
        """The installed trackers (techniques that implement ``prx_metrics_sink``), sorted."""
        return tuple(name for name in sorted(self.techniques) if is_tracker(self.hooks_by_technique[name]))

    @property
    def training_techniques(self) -> tuple[str, ...]:
        """The installed techniques that are not trackers, sorted: what the matrix and ablations vary."""
        return tuple(name for name in sorted(self.techniques) if name not in self.trackers)

    def roles(self, name: str) -> tuple[str, ...]:
        """The roles technique ``name`` holds: one per exclusive hook its plugin implements."""
        return hookspecs.roles_of(self.hooks_by_technique.get(name, ()))

    def describe_broken(self) -> str:
        """One sentence per broken plugin, for error messages ("" when none is broken)."""
        return " ".join(f"Plugin '{b.entry_point}' ({b.module}) failed to load: {b.error}." for b in self.broken)


def discover(only: Iterable[str] | None = None, extra_modules: Iterable[object] = ()) -> Registry:
    """Load the installed plugin modules and collect their techniques.

    ``only`` names the entry points to load (default: ``$PRX_PLUGINS`` when set, else all).
    ``extra_modules`` are modules or objects registered directly, for tests and for third-party
    code without entry points; ``only`` does not filter them.
    """
    broken: list[BrokenPlugin] = []
    found: list[tuple[str, str, str, object]] = []  # (entry point, module name, version, module)
    built_in: set[str] = set()  # entry points of prx's own distribution
    for entry_point, error in _selected_entry_points(only):
        if error:
            broken.append(BrokenPlugin(entry_point, "", error))
            continue
        try:
            module = entry_point.load()
        except Exception as err:  # any import failure is the plugin's, not ours: record it and go on
            broken.append(BrokenPlugin(entry_point.name, entry_point.value, _one_line(err)))
            continue
        version = entry_point.dist.version if entry_point.dist is not None else ""
        found.append((entry_point.name, entry_point.value, version, module))
        if entry_point.dist is not None and entry_point.dist.name == BUILT_IN:
            built_in.add(entry_point.name)
    for module in extra_modules:
        label = getattr(module, "__name__", type(module).__name__)
        found.append(("", label, str(getattr(module, "__version__", "")), module))

    candidates: dict[str, list[tuple[Technique, tuple[str, str, str], tuple[str, ...]]]] = {}
    for entry_point, label, version, module in found:
        try:
            techniques = _techniques_of(module, label)
        except PluginError as err:
            broken.append(BrokenPlugin(entry_point or label, label, str(err)))
            continue
        for technique in techniques:
            try:
                hooks = _check_plugin_class(technique)
            except PluginError as err:
                broken.append(BrokenPlugin(entry_point or label, label, str(err)))
                continue
            candidates.setdefault(technique.name, []).append((technique, (entry_point, label, version), hooks))

    techniques: dict[str, Technique] = {}
    origins: dict[str, tuple[str, str, str]] = {}
    hooks_by_technique: dict[str, tuple[str, ...]] = {}
    for name in sorted(candidates):
        providers = candidates[name]
        ours = [p for p in providers if p[1][0] in built_in]
        if len(providers) > 1 and len(ours) == 1:  # a third party took a built-in's name: it is the broken one
            for _, (entry_point, label, _), _ in providers:
                if (entry_point, label) != ours[0][1][:2]:
                    broken.append(BrokenPlugin(entry_point or label, label, (
                        f"technique name clash: '{name}' is prx's built-in technique ({ours[0][1][1]}); this plugin's "
                        f"technique of that name is not loaded. Rename it (its recipe table is [{name}] too)")))
            providers = ours
        if len(providers) > 1:
            modules = names_list(origin[1] for _, origin, _ in providers)
            for _, (entry_point, label, _), _ in providers:
                broken.append(
                    BrokenPlugin(
                        entry_point or label,
                        label,
                        f"technique name clash: '{name}' is provided by {modules}; uninstall all but one",
                    )
                )
            continue
        technique, origin, hooks = providers[0]
        techniques[name], origins[name], hooks_by_technique[name] = technique, origin, hooks
    return Registry(techniques, origins, hooks_by_technique, tuple(broken))


def _selected_entry_points(only: Iterable[str] | None) -> list[tuple[Any, str]]:
    """(entry point, "") for each entry point to load, sorted by name; (name, error) for names
    asked for that are not installed."""
    installed = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if only is None:
        env = os.environ.get(ENV_ONLY)
        if env is None:
            return [(installed[name], "") for name in sorted(installed)]
        only = [name.strip() for name in env.split(",") if name.strip()]
    selected = []
    for name in sorted(set(only)):
        if name in installed:
            selected.append((installed[name], ""))
        else:
            error = (
                f"{ENV_ONLY} names '{name}', but no installed plugin has that entry point "
                f"(installed: {names_list(sorted(installed))}).{did_you_mean(name, installed)}"
            )
            selected.append((name, error))
    return selected


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def spec_args(hook: str) -> tuple[str, ...]:
    return tuple(inspect.signature(getattr(hookspecs, hook)).parameters)


def hook_problems(obj: object, owner: str, allowed: Iterable[str]) -> list[str]:
    """Problems with the ``prx_*`` attributes of ``obj`` that pluggy would skip or reject:
    a hook name that does not exist (a typo would otherwise never be called), a hook not
    marked ``@hookimpl`` (silently ignored by pluggy), an argument the hook does not provide,
    a hook that is not allowed here, or a wrapper."""
    problems = []
    allowed = set(allowed)
    for attribute in sorted(dir(obj)):
        if not attribute.startswith("prx_"):
            continue
        function = getattr(obj, attribute, None)
        if not inspect.isroutine(function):
            continue
        options = getattr(function, f"{hookspecs.PROJECT}_impl", None)
        hook = (options or {}).get("specname") or attribute
        if hook not in HOOK_NAMES:
            problems.append(
                f"{owner} defines {hook}, which is not a prx hook (see prx_core/hookspecs.py)."
                f"{did_you_mean(hook, HOOK_NAMES)}"
            )
            continue
        if options is None:
            problems.append(
                f"{owner} defines {hook} without @hookimpl, so it would never be called; "
                "decorate it with @hookimpl from prx_core.hookspecs"
            )
            continue
        if hook not in allowed:
            problems.append(f"{owner} implements {hook} where it is never called (see prx_core/hookspecs.py)")
            continue
        if options.get("wrapper") or options.get("hookwrapper"):
            problems.append(f"{owner} implements {hook} as a hook wrapper; prx hooks take plain implementations")
            continue
        parameters = inspect.signature(function).parameters.values()
        wanted = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name != "self"]
        unknown = [name for name in wanted if name not in spec_args(hook)]
        if unknown:
            problems.append(
                f"{owner}.{hook} asks for {names_list(unknown)}, which the hook does not pass "
                f"(it passes: {names_list(spec_args(hook)) or 'nothing'})"
            )
    return problems


def _register_checked(manager: pluggy.PluginManager, obj: object, name: str) -> None:
    """Register ``obj`` and run pluggy's own checks; turn their failures into a PluginError."""
    try:
        manager.register(obj, name=name)
        manager.check_pending()
    except (pluggy.PluginValidationError, ValueError) as err:
        raise PluginError(f"{name}: {' '.join(str(err).split())}") from None


def _techniques_of(module: object, label: str) -> list[Technique]:
    """Call the module's ``prx_register_techniques`` through a discovery manager and check the
    result."""
    problems = hook_problems(module, f"module {label}", allowed=("prx_register_techniques",))
    if problems:
        raise PluginError("; ".join(problems))
    manager = new_manager()
    _register_checked(manager, module, label)
    try:
        results = manager.hook.prx_register_techniques()
    except Exception as err:  # a crash inside third-party code: report it, keep the other plugins
        raise PluginError(f"prx_register_techniques raised {_one_line(err)}") from None
    if not results:
        raise PluginError("the module defines no @hookimpl prx_register_techniques, so it registers no technique")
    techniques = results[0]
    if not isinstance(techniques, (list, tuple)) or not all(isinstance(t, Technique) for t in techniques):
        raise PluginError(
            f"prx_register_techniques must return a list of prx_core.types.Technique, got {techniques!r:.200}"
        )
    names = [t.name for t in techniques]
    for technique in techniques:
        _check_declaration(technique)
        if names.count(technique.name) > 1:
            raise PluginError(f"technique '{technique.name}' is registered twice by the same module")
    return list(techniques)


def _check_declaration(technique: Technique) -> None:
    name = technique.name
    if not isinstance(name, str) or not _TECHNIQUE_NAME.match(name):
        raise PluginError(f"technique name {name!r} must be letters, digits, '_' or '-' (it is a TOML table name)")
    if name in CORE_TABLES or name in CORE_KEYS:
        raise PluginError(f"technique '{name}' has the name of a core recipe key; choose another name")
    if not callable(technique.plugin):
        raise PluginError(f"technique '{name}': plugin must be a class called as plugin(config, context)")
    if technique.config is not None and not attrs.has(technique.config):
        raise PluginError(f"technique '{name}': config must be an attrs class or None, got {technique.config!r}")
    for field in ("effects", "conflicts", "requires"):
        value = getattr(technique, field)
        if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
            raise PluginError(f"technique '{name}': {field} must be a tuple of strings, got {value!r}")
    for effect in technique.effects:
        try:
            kind, effect_name = parse_effect(effect)
        except ValueError as error:
            raise PluginError(f"technique '{name}': {error}") from None
        if CORE_NAMES.get(kind) == effect_name:
            raise PluginError(f"technique '{name}' declares {effect}, a name the core uses itself; choose another name")
    settings = technique.tiny_settings
    if not isinstance(settings, Mapping) or not all(isinstance(key, str) for key in settings):
        raise PluginError(f"technique '{name}': tiny_settings must be a table (a dict with str keys), got {settings!r}")
    if settings and technique.config is None:
        raise PluginError(f"technique '{name}': tiny_settings given, but the technique has no config class to take them")


def _check_plugin_class(technique: Technique) -> tuple[str, ...]:
    """Validate the hooks of ``technique.plugin`` against the specs; return their names in call order."""
    plugin = technique.plugin
    allowed = [hook for hook in HOOK_NAMES if hook != "prx_register_techniques"]
    problems = hook_problems(plugin, f"technique '{technique.name}' ({qualname(plugin)})", allowed)
    if problems:
        raise PluginError("; ".join(problems))
    manager = new_manager()
    _register_checked(manager, plugin, technique.name)
    implemented = {caller.name for caller in manager.get_hookcallers(plugin) or ()}
    hooks = tuple(hook for hook in HOOK_NAMES if hook in implemented)
    if is_tracker(hooks):
        _check_tracker(technique, hooks)
    return hooks


def is_tracker(hooks: Iterable[str]) -> bool:
    """Whether a technique implementing ``hooks`` is a tracker."""
    return TRACKER_HOOK in hooks


def _check_tracker(technique: Technique, hooks: tuple[str, ...]) -> None:
    """A tracker observes a run: it may not change training (so the interference matrix and
    ablations can leave it out), hence no other hook and no declared behaviour."""
    name = technique.name
    others = [hook for hook in hooks if hook != TRACKER_HOOK and hook not in TRACKER_MAY_ALSO]
    if others:
        raise PluginError(
            f"technique '{name}' implements {TRACKER_HOOK}, which makes it a tracker, and also "
            f"{names_list(others)}; a tracker may implement only {names_list((TRACKER_HOOK, *TRACKER_MAY_ALSO))} "
            "(it observes a run and must not change it): register the tracker and the technique separately"
        )
    if technique.effects:
        raise PluginError(f"technique '{name}' is a tracker (it implements {TRACKER_HOOK}) and so declares no "
                          "effects: a tracker has no effect on training")


def qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def unknown_technique_problems(names: Iterable[str], registry: Registry, location: str) -> list[str]:
    """One paragraph per name in ``plugins`` that is not an installed technique."""
    problems = []
    installed = sorted(registry.techniques)
    for name in dict.fromkeys(names):
        if name in registry.techniques:
            continue
        message = (
            f"{location}: plugins names '{name}', which is not an installed technique.{did_you_mean(name, installed)}"
            f" Installed techniques: {names_list(installed)}."
        )
        if registry.broken:
            message += " " + registry.describe_broken()
        problems.append(message + " Run `prx plugins` to see what is installed.")
    return problems


def selection_problems(names: Iterable[str], registry: Registry, location: str) -> list[str]:
    """Problems with a selection of techniques that their declarations reveal: unknown names,
    two techniques implementing one exclusive hook (sharing its role), declared conflicts and
    missing requirements."""
    selected = sorted(set(names))
    problems = unknown_technique_problems(selected, registry, location)
    known = [name for name in selected if name in registry.techniques]
    roles: dict[str, list[str]] = {}
    for name in known:
        for role in registry.roles(name):
            roles.setdefault(role, []).append(name)
    hook_of = {role: hook for hook, role in hookspecs.EXCLUSIVE.items()}
    for role in sorted(roles):
        holders = roles[role]
        if len(holders) > 1:
            count = _COUNT_WORDS.get(len(holders), str(len(holders)))
            problems.append(
                f"{location}: plugins selects {count} {role} techniques: {names_list(holders)}; keep one"
                f" (at most one technique may implement {hook_of[role]})."
            )
    problems += _shared_name_problems(known, registry, location)
    reported: set[frozenset[str]] = set()
    for name in known:
        for other in registry.techniques[name].conflicts:
            pair = frozenset((name, other))
            if other in known and pair not in reported:
                reported.add(pair)
                problems.append(
                    f"{location}: plugins selects {name} and {other}, which cannot be used together "
                    f"({name} declares a conflict with {other}); remove one of them."
                )
        for needed in registry.techniques[name].requires:
            if needed not in known:
                installed = "" if needed in registry.techniques else f" (note: '{needed}' is not installed)"
                problems.append(f"{location}: {name} requires {needed}; add \"{needed}\" to plugins{installed}.")
    return problems


def _shared_name_problems(names: list[str], registry: Registry, location: str) -> list[str]:
    """Two selected techniques declaring one named effect (``loss_term:lpips`` twice): their loss
    terms (modules, optimizers) would share a name, and one would hide the other."""
    declaring: dict[str, list[str]] = {}
    for name in names:
        for effect in registry.techniques[name].effects:
            if parse_effect(effect)[0] in NAMED_WHAT:
                declaring.setdefault(effect, []).append(name)
    problems = []
    for effect, holders in sorted(declaring.items()):
        if len(holders) > 1:
            kind, effect_name = parse_effect(effect)
            problems.append(
                f"{location}: plugins selects {names_list(holders)}, which {'both' if len(holders) == 2 else 'all'} "
                f"{NAMED_WHAT[kind]} named "
                f"'{effect_name}' (each declares {effect}); one would hide the other: keep one, or rename one "
                "technique's.")
    return problems


_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
