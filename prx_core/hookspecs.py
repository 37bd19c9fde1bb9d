"""Every hook a technique plugin can implement, and when the core calls it.

The core calls hooks in fixed phases, always in this order (see docs/plugins.md):

1. discovery ........ ``prx_register_techniques``            (once per process, every installed plugin)
2. validation ....... ``prx_check_recipe``                    (before any tensor is made)
3. planning ......... ``prx_resolution_schedule``, ``prx_cost``
4. model set-up ..... ``prx_configure_model``, ``prx_optimizer_groups``
5. tracking ........ ``prx_metrics_sink`` (rank 0, once, after set-up and a resume's load:
                      the sinks it returns then get every logged row, grid and evaluation)
6. each phase ....... ``prx_phase_change``, then ``prx_routing``, ``prx_auxiliary_losses``
                      (resolved once: the objects they return are used for every step of the
                      phase, so the step itself dispatches no hook)
7. sampling ......... ``prx_guidance``
8. checkpoints ...... ``prx_state_dict`` on save, ``prx_load_state_dict`` on resume

A plugin that implements ``prx_metrics_sink`` is a *tracker*: it observes a run and cannot change
it, so besides that hook it may implement only ``prx_check_recipe`` (checked at discovery); the
interference matrix and ablation designs leave trackers out (see docs/trackers.md).

Only the techniques a recipe selects are registered for a run, each as an instance built from
its structured config; techniques that a phase disables are left out of that phase's calls.
Results never depend on plugin order: lists are combined by technique name and dictionaries
are merged with a collision check.

Three hooks are exclusive (:func:`exclusive`): at most one selected technique may implement
``prx_resolution_schedule`` (role "schedule"), ``prx_routing`` ("routing") and ``prx_guidance``
("guidance"). Implementing the hook is what gives a technique the role; the core refuses a
selection with two holders of a role before anything is built.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pluggy
from torch import nn

from prx_core.types import (
    AuxiliaryLoss,
    CostTerm,
    Guidance,
    MetricsSink,
    OptimizerClaim,
    Phase,
    Router,
    RunStart,
    SampleGrid,
    Technique,
)

PROJECT = "prx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

EXCLUSIVE: dict[str, str] = {}
"""Hook -> role: the hooks at most one selected technique may implement (see :func:`exclusive`)."""

_Spec = TypeVar("_Spec", bound=Callable[..., Any])


def exclusive(role: str) -> Callable[[_Spec], _Spec]:
    """Declare a hook exclusive: a technique that implements it holds ``role``, and a selection
    with two holders of one role is refused at validation, naming both. Whoever calls the hook
    then gets one answer or none."""

    def mark(spec: _Spec) -> _Spec:
        EXCLUSIVE[spec.__name__] = role
        return spec

    return mark


@hookspec
def prx_register_techniques() -> list[Technique]:
    """Declare the techniques this module provides.

    Called once per process on every installed plugin module (found through the ``prx.plugins``
    entry-point group), before any recipe is read. Returns a list of :class:`Technique`.
    """


@hookspec
def prx_check_recipe(recipe: Any, active: tuple[str, ...], model_config: Any) -> list[str]:
    """Return problems with the recipe that only this technique can see (empty list if none).

    ``active`` is the sorted tuple of selected technique names; ``model_config`` the resolved
    :class:`prx_core.model.config.DenoiserConfig` (depth, patch, hidden width, ...). Exclusive
    hooks, declared conflicts and requirements are checked by the core already; use this for value-level
    rules such as "the aligned block is a block of the model". Called before any compute; each
    message should name the key and say what to change.
    """


@hookspec
@exclusive("schedule")
def prx_resolution_schedule(recipe: Any) -> list[Phase]:
    """Return the training phases (resolution, global batch, steps, disabled techniques).

    Exclusive (role "schedule"); without a technique that implements it, the core trains one
    phase from ``[train]`` and ``[data]``.
    """


@hookspec
def prx_cost(model_config: Any, phase: Phase, text_tokens: int) -> list[CostTerm]:
    """Return the training FLOPs this technique adds or removes per image in ``phase``.

    ``model_config`` is the resolved :class:`prx_core.model.config.DenoiserConfig`;
    ``text_tokens`` the text length used for the estimate. Used by ``--dry-run``, ``prx cost``
    and ``prx bench`` (MFU).
    """


@hookspec
def prx_configure_model(model: nn.Module, recipe: Any, model_config: Any) -> dict[str, nn.Module]:
    """Return training-only modules to attach to the model, by name (e.g. a REPA projector).

    The core stores them under ``model.extras[name]`` so they are checkpointed, wrapped for
    DDP/FSDP and given to an optimizer like every other parameter. Called once, after the
    denoiser is built and before optimizers are made; ``model_config`` is the denoiser's
    resolved config (the one ``prx_check_recipe`` got).
    """


@hookspec
def prx_optimizer_groups(model: nn.Module, recipe: Any) -> list[OptimizerClaim]:
    """Claim parameters and say which optimizer steps them.

    A parameter claimed by two techniques is a recipe error; unclaimed parameters go to the
    core's AdamW built from ``[optim]``. Called once, after ``prx_configure_model``.
    """


@hookspec
def prx_metrics_sink(run: RunStart) -> MetricsSink | None:
    """Return where this tracker sends the run's records (a :class:`MetricsSink`), or None.

    Called once per process on rank 0 only, after model set-up and, under ``--resume``, after
    the checkpoint is loaded, before the first phase starts. Return quickly: the core calls the
    sink's ``open`` (connecting, creating or continuing the tracker run) on the sink's own thread.
    Only trackers implement it: a plugin that does may implement no hook but this one and
    ``prx_check_recipe``, which should report a missing library with the extra to install.
    """


@hookspec
def prx_phase_change(phase: Phase, index: int, step: int) -> None:
    """Tell the technique that phase ``index`` starts at global ``step`` (also on resume)."""


@hookspec
@exclusive("routing")
def prx_routing(phase: Phase, model_config: Any) -> Router | None:
    """Return the router used for every training step of ``phase`` (or None for dense).

    The core asks the router for a :data:`prx_core.types.RoutePlan` each step and gathers /
    scatters the image tokens and the RoPE tables accordingly. Exclusive (role "routing").
    """


@hookspec
def prx_auxiliary_losses(phase: Phase, model: nn.Module, model_config: Any) -> list[AuxiliaryLoss]:
    """Return the auxiliary losses computed on every training step of ``phase``.

    ``model`` is the denoiser with its ``extras`` (the modules ``prx_configure_model`` attached);
    ``model_config`` its resolved config.

    Each returns ``{term: weighted scalar}``, every value a 0-dim floating-point tensor (anything
    else stops the run naming the technique and the loss); the core sums them into the objective
    and logs each term (and its share of step time) in ``metrics.jsonl``. A loss that reads hidden states
    declares the blocks in its ``blocks`` attribute and finds their outputs in
    ``StepTensors.captured`` (with the route index when a block ran inside a route).
    """


@hookspec
@exclusive("guidance")
def prx_guidance(sample_config: Any, model_config: Any, router: Router | None) -> Guidance | None:
    """Return how each sampling step combines denoiser calls (None: plain conditional).

    ``router`` is the routing technique's router, if one is active in the recipe, for
    guidance that needs a routed pass. Exclusive (role "guidance").
    """


@hookspec
def prx_state_dict() -> dict[str, Any]:
    """Return ``{technique name: state}`` to store in the checkpoint (tensors and plain data)."""


@hookspec
def prx_load_state_dict(states: dict[str, Any]) -> None:
    """Restore this technique's state from ``states[name]`` (absent when it had none)."""


def hook_names() -> list[str]:
    """Names of all hooks, in the order the core calls them."""
    return [name for name in globals() if name.startswith("prx_") and callable(globals()[name])]


def roles_of(hooks: Iterable[str]) -> tuple[str, ...]:
    """The roles a technique implementing ``hooks`` holds, in hook order."""
    return tuple(EXCLUSIVE[hook] for hook in hooks if hook in EXCLUSIVE)


# Re-exported for plugin authors: ``from prx_core.hookspecs import hookimpl, Technique, ...``
__all__ = [
    "EXCLUSIVE",
    "AuxiliaryLoss",
    "CostTerm",
    "Guidance",
    "MetricsSink",
    "OptimizerClaim",
    "Phase",
    "Router",
    "RunStart",
    "SampleGrid",
    "Technique",
    "exclusive",
    "hookimpl",
    "hookspec",
    "hook_names",
    "roles_of",
]
