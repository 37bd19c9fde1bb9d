"""The plugin manager: finds installed techniques and builds the set of techniques one run uses.

Two stages, two pluggy managers:

* :func:`discover` loads every module of the ``prx.plugins`` entry-point group (or only those
  named in ``$PRX_PLUGINS``), asks each for its techniques through ``prx_register_techniques``
  and checks each technique's plugin class against the hook specifications. A module that fails
  is recorded in :attr:`Registry.broken` with its error; the others still load.
* :class:`TechniqueSet` takes a recipe, checks the selection (unknown names, shared roles,
  declared conflicts and requirements), builds one instance per selected technique and
  registers the instances in a fresh manager. :meth:`TechniqueSet.call` calls a hook on them in
  technique-name order, so neither recipe order nor install order changes a result.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy
from torch import nn

from prx_core import hookspecs
from prx_core.errors import PluginError, RecipeError
from prx_core.recipe.errors_format import did_you_mean, names_list, where
from prx_core.recipe.schema import CORE_KEYS, CORE_TABLES
from prx_core.types import OptimizerClaim, Phase, RunContext, Technique

ENTRY_POINT_GROUP = "prx.plugins"
ENV_ONLY = "PRX_PLUGINS"
"""Comma-separated entry-point names to load; unset loads all, an empty value loads none."""
ENV_TRACE = "PRX_TRACE"
"""Set to 1 to log every hook call and traced event through the run's log."""

_HOOK_NAMES = tuple(hookspecs.hook_names())
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


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def _spec_args(hook: str) -> tuple[str, ...]:
    return tuple(inspect.signature(getattr(hookspecs, hook)).parameters)


def _hook_problems(obj: object, owner: str, allowed: Iterable[str]) -> list[str]:
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
        if hook not in _HOOK_NAMES:
            problems.append(
                f"{owner} defines {hook}, which is not a prx hook (see prx_core/hookspecs.py)."
                f"{did_you_mean(hook, _HOOK_NAMES)}"
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
        unknown = [name for name in wanted if name not in _spec_args(hook)]
        if unknown:
            problems.append(
                f"{owner}.{hook} asks for {names_list(unknown)}, which the hook does not pass "
                f"(it passes: {names_list(_spec_args(hook)) or 'nothing'})"
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
    problems = _hook_problems(module, f"module {label}", allowed=("prx_register_techniques",))
    if problems:
        raise PluginError("; ".join(problems))
    manager = _new_manager()
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
    for field in ("effects", "roles", "conflicts", "requires"):
        value = getattr(technique, field)
        if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
            raise PluginError(f"technique '{name}': {field} must be a tuple of strings, got {value!r}")


def _check_plugin_class(technique: Technique) -> tuple[str, ...]:
    """Validate the hooks of ``technique.plugin`` against the specs; return their names in call order."""
    plugin = technique.plugin
    allowed = [hook for hook in _HOOK_NAMES if hook != "prx_register_techniques"]
    problems = _hook_problems(plugin, f"technique '{technique.name}' ({_qualname(plugin)})", allowed)
    if problems:
        raise PluginError("; ".join(problems))
    manager = _new_manager()
    _register_checked(manager, plugin, technique.name)
    implemented = {caller.name for caller in manager.get_hookcallers(plugin) or ()}
    hooks = tuple(hook for hook in _HOOK_NAMES if hook in implemented)
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
    declared = [field for field in ("effects", "roles") if getattr(technique, field)]
    if declared:
        raise PluginError(f"technique '{name}' is a tracker (it implements {TRACKER_HOOK}) and so declares no "
                          f"{' and no '.join(declared)}: a tracker has no effect on training")


def _qualname(obj: object) -> str:
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
    two techniques sharing a role, declared conflicts and missing requirements."""
    selected = sorted(set(names))
    problems = unknown_technique_problems(selected, registry, location)
    known = [name for name in selected if name in registry.techniques]
    roles: dict[str, list[str]] = {}
    for name in known:
        for role in registry.techniques[name].roles:
            roles.setdefault(role, []).append(name)
    for role in sorted(roles):
        holders = roles[role]
        if len(holders) > 1:
            count = _COUNT_WORDS.get(len(holders), str(len(holders)))
            problems.append(
                f"{location}: plugins selects {count} {role} techniques: {names_list(holders)}; keep one"
                f" (at most one technique may have the role '{role}')."
            )
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


_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


@attrs.define
class HookTrace:
    """What the techniques of a run did, in order: ``events`` holds (step or None, kind, name,
    technique). :meth:`TechniqueSet.call` records ``("hook", hook, technique)`` for every
    implementation it ran; the training loop may record its own kinds (e.g. per-step events).
    With ``PRX_TRACE=1`` every event is also logged."""

    log: Callable[[str], None] | None = None
    events: list[tuple[int | None, str, str, str]] = attrs.Factory(list)

    def record(self, kind: str, name: str, technique: str, step: int | None = None) -> None:
        self.events.append((step, kind, name, technique))
        if self.log is not None:
            at = "" if step is None else f"step {step} "
            self.log(f"trace: {at}{kind} {name} [{technique}]")

    def clear(self) -> None:
        self.events.clear()


class TechniqueSet:
    """The techniques one run uses: structured configs, instances, a pluggy manager, the hook trace."""

    def __init__(self, recipe: Any, registry: Registry, context: RunContext) -> None:
        location = where(recipe, "plugins")
        problems = selection_problems(recipe.plugins, registry, location)
        if problems:
            raise RecipeError("\n\n".join(problems))
        self.names: tuple[str, ...] = tuple(sorted(set(recipe.plugins)))
        self.techniques: dict[str, Technique] = {name: registry.techniques[name] for name in self.names}
        self.configs: dict[str, Any] = {name: _config_for(recipe, t) for name, t in self.techniques.items()}
        self.instances: dict[str, Any] = {
            name: self.techniques[name].plugin(self.configs[name], context) for name in self.names
        }
        self.trace = HookTrace(log=context.log if os.environ.get(ENV_TRACE) == "1" else None)
        self.pm = _new_manager()
        allowed = [hook for hook in _HOOK_NAMES if hook != "prx_register_techniques"]
        for name in self.names:
            instance = self.instances[name]
            problems = _hook_problems(instance, f"technique '{name}' ({_qualname(type(instance))})", allowed)
            if problems:
                raise PluginError("; ".join(problems))
            try:
                self.pm.register(instance, name=name)
            except (pluggy.PluginValidationError, ValueError) as err:
                raise PluginError(f"technique '{name}': {' '.join(str(err).split())}") from None
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            raise PluginError(" ".join(str(err).split())) from None
        checks = self.call("prx_check_recipe", recipe=recipe, active=self.names)
        found = [f"{where(recipe, name)}: {name}: {_sentence(text)}" for name, texts in checks for text in texts]
        if found:
            raise RecipeError("\n\n".join(found))

    def call(self, hook: str, phase: Phase | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on the active techniques (minus ``phase.disabled``) in technique-name order.

        Each implementation gets only the arguments it names (``phase`` is passed as an argument
        too when given); None results are dropped. Returns ``[(technique, result)]``.
        """
        if hook not in _HOOK_NAMES:
            raise ValueError(f"unknown hook {hook!r}; hooks: {', '.join(_HOOK_NAMES)}")
        if phase is not None:
            kwargs["phase"] = phase
        unexpected = set(kwargs) - set(_spec_args(hook))
        if unexpected:
            expected = ", ".join(_spec_args(hook))
            raise TypeError(f"{hook} takes {expected}; got unexpected {', '.join(sorted(unexpected))}")
        disabled = set(phase.disabled) if phase is not None else set()
        implementations = {self.pm.get_name(impl.plugin): impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        results = []
        for name in sorted(implementations):
            if name in disabled:
                continue
            impl = implementations[name]
            missing = [arg for arg in impl.argnames if arg not in kwargs]
            if missing:
                raise pluggy.HookCallError(f"{hook} must be called with {', '.join(missing)} (asked for by {name})")
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            self.trace.record("hook", hook, name)
            if result is not None:
                results.append((name, result))
        return results

    def check_claims(self, claims: list[tuple[str, OptimizerClaim]], model: nn.Module) -> None:
        """Raise RecipeError if a parameter is claimed twice or a claim names a parameter the model lacks."""
        parameters = dict(model.named_parameters())
        owner: dict[str, str] = {}
        doubles: dict[tuple[str, str], list[str]] = {}
        foreign: dict[str, list[str]] = {}
        for technique, claim in sorted(claims, key=lambda item: item[0]):
            for qualified, parameter in claim.params:
                if parameters.get(qualified) is not parameter:
                    foreign.setdefault(technique, []).append(qualified)
                elif qualified in owner:
                    doubles.setdefault((owner[qualified], technique), []).append(qualified)
                else:
                    owner[qualified] = technique
        problems = []
        for (first, second), names in sorted(doubles.items()):
            who = f"both {first} and {second}" if first != second else f"{first} twice"
            problems.append(
                f"parameter{'s' if len(names) > 1 else ''} {_some(names)} {'are' if len(names) > 1 else 'is'} claimed "
                f"by {who}; a parameter can have only one optimizer, so narrow one technique's selection."
            )
        for technique, names in sorted(foreign.items()):
            problems.append(
                f"{technique} claims {_some(names)}, which {'are' if len(names) > 1 else 'is'} not a parameter of "
                "the model (claims must use names and tensors from model.named_parameters())."
            )
        if problems:
            raise RecipeError("optimizer claims conflict: " + " ".join(problems))


def _some(names: list[str], shown: int = 3) -> str:
    quoted = [f"'{name}'" for name in names[:shown]]
    rest = len(names) - shown
    return ", ".join(quoted) + (f" and {rest} more" if rest > 0 else "")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _config_for(recipe: Any, technique: Technique) -> Any:
    """The structured config of ``technique`` from the recipe, else its default config."""
    if technique.name in recipe.techniques:
        return recipe.techniques[technique.name]
    return technique.config() if technique.config is not None else None
