"""The techniques one run uses: their configs, instances, a pluggy manager and the hook trace.

:class:`TechniqueSet` takes a recipe and the :class:`~prx_core.registry.Registry`, refuses a
selection the declarations rule out (:func:`~prx_core.registry.selection_problems`), builds one
instance per selected technique and registers the instances in a fresh manager.
:meth:`TechniqueSet.call` calls a hook on them in technique-name order, so neither recipe order
nor install order changes a result. Every call is recorded in the run's :class:`HookTrace`;
:class:`TracedGuidance` records each guided sampling call there too. An exception a technique's
code raises (other than a :class:`~prx_core.errors.UserError` it wrote for the user) becomes a
:class:`~prx_core.errors.PluginFailure` naming the technique and the hook (:meth:`TechniqueSet.failure`).
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import attrs
import pluggy
import torch
from torch import nn

from prx_core import hookspecs
from prx_core.errors import PluginError, PluginFailure, RecipeError, UserError
from prx_core.model.config import DenoiserConfig
from prx_core.recipe.errors_format import where
from prx_core.registry import HOOK_NAMES, Registry, hook_problems, new_manager, qualname, selection_problems, spec_args
from prx_core.types import Conditioning, Guidance, OptimizerClaim, Phase, Predict, RunContext, Technique

ENV_TRACE = "PRX_TRACE"
"""Set to 1 to log every hook call and traced event through the run's log."""


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


class TracedGuidance:
    """Wraps a technique's guidance so that a failure inside it names the technique
    (:meth:`TechniqueSet.failure`) and, with a ``trace``, each sampling call is recorded in the
    hook trace as ``("use", "guidance", technique)`` at training step ``step``."""

    def __init__(self, guidance: Guidance, technique: str, techniques: TechniqueSet, step: int,
                 trace: HookTrace | None = None):
        self.guidance = guidance
        self.technique = technique
        self.techniques = techniques
        self.step = step
        self.trace = trace

    def __call__(self, predict: Predict, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                 uncond: Conditioning) -> torch.Tensor:
        if self.trace is not None:
            self.trace.record("use", "guidance", self.technique, self.step)
        try:
            return self.guidance(predict, x_t, t, cond, uncond)
        except UserError:
            raise
        except Exception as err:
            where = f"the guidance its hook prx_guidance returned, sampling after step {self.step}"
            raise self.techniques.failure(self.technique, where, err) from err


class TechniqueSet:
    """The techniques one run uses: structured configs, instances, a pluggy manager, the hook trace.

    ``model_config`` is the run's resolved :class:`~prx_core.model.config.DenoiserConfig`
    (:func:`prx_core.plan.model_config`); the hooks that need the model's shape get it.
    """

    def __init__(self, recipe: Any, registry: Registry, context: RunContext, model_config: DenoiserConfig) -> None:
        self.model_config = model_config
        location = where(recipe, "plugins")
        problems = selection_problems(recipe.plugins, registry, location)
        if problems:
            raise RecipeError("\n\n".join(problems))
        self.names: tuple[str, ...] = tuple(sorted(set(recipe.plugins)))
        self.techniques: dict[str, Technique] = {name: registry.techniques[name] for name in self.names}
        self.origins = {name: _origin(technique, registry) for name, technique in self.techniques.items()}
        self.configs: dict[str, Any] = {name: _config_for(recipe, t) for name, t in self.techniques.items()}
        self.instances: dict[str, Any] = {name: self._build(name, context) for name in self.names}
        self.trace = HookTrace(log=context.log if os.environ.get(ENV_TRACE) == "1" else None)
        self.pm = new_manager()
        allowed = [hook for hook in HOOK_NAMES if hook != "prx_register_techniques"]
        for name in self.names:
            instance = self.instances[name]
            problems = hook_problems(instance, f"technique '{name}' ({qualname(type(instance))})", allowed)
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
        checks = self.call("prx_check_recipe", recipe=recipe, active=self.names, model_config=model_config)
        found = [f"{where(recipe, name)}: {name}: {_sentence(text)}" for name, texts in checks for text in texts]
        if found:
            raise RecipeError("\n\n".join(found))

    def _build(self, name: str, context: RunContext) -> Any:
        """The plugin instance of technique ``name``: ``plugin(config, context)``."""
        try:
            return self.techniques[name].plugin(self.configs[name], context)
        except UserError:
            raise
        except Exception as err:
            raise self.failure(name, "its plugin class's constructor, plugin(config, context)", err) from err

    def call(self, hook: str, phase: Phase | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on the active techniques (minus ``phase.disabled``) in technique-name order.

        Each implementation gets only the arguments it names (``phase`` is passed as an argument
        too when given); None results are dropped. Returns ``[(technique, result)]``.
        """
        if hook not in HOOK_NAMES:
            raise ValueError(f"unknown hook {hook!r}; hooks: {', '.join(HOOK_NAMES)}")
        if phase is not None:
            kwargs["phase"] = phase
        unexpected = set(kwargs) - set(spec_args(hook))
        if unexpected:
            expected = ", ".join(spec_args(hook))
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
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except UserError:  # a message the technique wrote for the user
                raise
            except Exception as err:
                raise self.failure(name, f"its hook {hook}", err) from err
            self.trace.record("hook", hook, name)
            if result is not None:
                results.append((name, result))
        return results

    def failure(self, technique: str, where: str, error: BaseException | None = None,
                problem: str = "") -> PluginFailure:
        """The :class:`PluginFailure` of ``technique`` in ``where`` (e.g. "its hook
        prx_configure_model"): ``error`` it raised (its traceback is the failure's details), or
        ``problem``, what it returned that the core cannot use."""
        if error is not None:
            problem = " ".join(f"{type(error).__name__}: {error}".split())
            if len(problem) > 400:
                problem = problem[:400] + " ..."
        details = "".join(traceback.format_exception(error)) if error is not None else ""
        return PluginFailure(technique, self.origins.get(technique, "?"), where, problem, details)

    def call_one(self, hook: str, phase: Phase | None = None, **kwargs: Any) -> tuple[str, Any]:
        """Call an exclusive hook (:data:`prx_core.hookspecs.EXCLUSIVE`): ``(technique, result)``
        from the one active technique that answered, or ``("", None)``. The selection was refused
        if two techniques implement the hook, so there is never a second answer to choose from."""
        if hook not in hookspecs.EXCLUSIVE:
            raise ValueError(f"{hook} is not an exclusive hook; use call() to collect every answer")
        results = self.call(hook, phase=phase, **kwargs)
        return results[0] if results else ("", None)

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


def _origin(technique: Technique, registry: Registry) -> str:
    """Where a technique's code is: its plugin class and the version of its distribution."""
    version = registry.origins.get(technique.name, ("", "", ""))[2]
    return qualname(technique.plugin) + (f", version {version}" if version else "")


def _config_for(recipe: Any, technique: Technique) -> Any:
    """The structured config of ``technique`` from the recipe, else its default config."""
    if technique.name in recipe.techniques:
        return recipe.techniques[technique.name]
    return technique.config() if technique.config is not None else None
