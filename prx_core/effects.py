"""What a short training run shows: the effects its techniques had, and whether the core called
their hooks in the documented order.

Every technique declares in ``Technique.effects`` what it visibly does to a run, in the
vocabulary of :data:`prx_core.types.EFFECTS` (tabled in docs/plugins.md; tests/test_docs.py keeps
the two in step; discovery refuses a declaration outside it). The interference matrix (prx_core.testing, run over every subset by tests/test_matrix.py) trains combinations of techniques and
compares what it observes here with what the active techniques declare.

Two things are observed: the model and parameters of a :class:`Trainer`, through PyTorch hooks
that :class:`EffectProbe` attaches (with the metrics of each step), and the run's hook trace
(:class:`prx_core.techniques.HookTrace`). With ``Trainer.trace_steps`` on, the trainer records in
the trace each use of a per-phase object, ``("use", "router.plan" | "loss_term:<term>",
technique)``, and :class:`prx_core.techniques.TracedGuidance` each guided sampling call, ``("use", "guidance",
technique)``; the trainer also marks the start of each phase with ``("phase", name, "core")``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from prx_core import hookspecs
from prx_core.train.trainer import Trainer
from prx_core.types import Technique

DEFAULT_OPTIMIZER = "adamw"
"""The label of the core's AdamW for parameters no technique claims."""

Event = tuple[int | None, str, str, str]
"""A hook-trace event: (step or None, kind, name, technique)."""


def declared_effects(techniques: Iterable[Technique]) -> dict[str, frozenset[str]]:
    """Effect -> the techniques that declare it."""
    found: dict[str, set[str]] = {}
    for technique in techniques:
        for effect in technique.effects:
            found.setdefault(effect, set()).add(technique.name)
    return {effect: frozenset(names) for effect, names in found.items()}


# --- observing a run ------------------------------------------------------------------------------


class EffectProbe:
    """Watches a :class:`Trainer` from before its first step: the input shape of every training
    forward, the tokens each block sees, which parameters get non-zero gradients, and the loss
    terms of each step (pass each step's metrics to :meth:`record_step`).

    Attach it before the first step and :meth:`close` it afterwards; it does tensor work in its
    hooks (a check per gradient), so it is for tests, not for training runs.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.input_shapes: list[tuple[int, ...]] = []
        self.block_tokens: list[list[int]] = []
        self.terms: set[str] = set()
        self.with_gradient: set[str] = set()
        self.initial = {name: p.detach().clone() for name, p in trainer.denoiser.named_parameters()}
        denoiser = trainer.denoiser
        self._handles = [denoiser.register_forward_pre_hook(self._on_forward)]
        for index, block in enumerate(denoiser.blocks):
            self._handles.append(block.register_forward_pre_hook(self._on_block(index)))
        for name, parameter in denoiser.named_parameters():
            if parameter.requires_grad:
                self._handles.append(parameter.register_hook(self._on_gradient(name)))

    def _on_forward(self, module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            self.input_shapes.append(tuple(args[0].shape))
            self.block_tokens.append([])

    def _on_block(self, index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if module.training and self.block_tokens and len(self.block_tokens[-1]) == index:
                self.block_tokens[-1].append(args[0].shape[1])  # recomputation (checkpointing) is not counted twice
        return hook

    def _on_gradient(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            if name not in self.with_gradient and bool(grad.ne(0).any()):
                self.with_gradient.add(name)
        return hook

    def record_step(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Note the loss terms of one optimizer step (``loss/<term>`` keys of ``train_step``'s metrics)."""
        self.terms.update(key.removeprefix("loss/") for key in metrics if key.startswith("loss/"))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- what was seen ---------------------------------------------------------------------------
    def observed(self) -> frozenset[str]:
        """The effects this run showed, in the vocabulary of :data:`EFFECTS`."""
        found: set[str] = set()
        patch = self.trainer.model_config.patch
        full = [shape[-2] // patch * (shape[-1] // patch) for shape in self.input_shapes]
        if any(tokens and min(tokens) < grid for tokens, grid in zip(self.block_tokens, full)):
            found.add("routes_tokens")
        found.update(f"loss_term:{term}" for term in self.terms if term != "diffusion")
        found.update(f"adds_module:{name}" for name in self.trainer.denoiser.extras if self._extra_learns(name))
        found.update(f"optimizer:{label}" for label in self.trainer.optimizers if self._optimizer_steps(label))
        if any(kind == "use" and name == "guidance" for _, kind, name, _ in self.trainer.techniques.trace.events):
            found.add("guides_sampling")
        if len(set(self.input_shapes)) > 1:
            found.add("changes_schedule")
        return frozenset(found)

    def _extra_learns(self, name: str) -> bool:
        return any(qualified.startswith(f"extras.{name}.") for qualified in self.with_gradient)

    def _optimizer_steps(self, label: str) -> bool:
        """A technique's optimizer steps its parameters: every one that got a gradient changed,
        at least one did, and none is also in the default AdamW."""
        if label == DEFAULT_OPTIMIZER:
            return False
        names = {id(p): name for name, p in self.trainer.denoiser.named_parameters()}
        own = [p for group in self.trainer.optimizers[label].param_groups for p in group["params"]]
        default = {id(p) for group in self.trainer.optimizers[DEFAULT_OPTIMIZER].param_groups for p in group["params"]}
        if not own or any(id(p) in default for p in own):
            return False
        learned = [p for p in own if names.get(id(p)) in self.with_gradient]
        return bool(learned) and all(not torch.equal(p.detach(), self.initial[names[id(p)]]) for p in learned)


def effect_owners(events: Iterable[Event]) -> dict[str, frozenset[str]]:
    """Effect -> the techniques the trace names as its source (routes, loss terms, guidance)."""
    owners: dict[str, set[str]] = {}
    for _, kind, name, technique in events:
        if kind != "use":
            continue
        effect = {"router.plan": "routes_tokens", "guidance": "guides_sampling"}.get(name, name)
        owners.setdefault(effect, set()).add(technique)
    return {effect: frozenset(names) for effect, names in owners.items()}


# --- the documented hook order --------------------------------------------------------------------


def documented_stages() -> dict[str, int]:
    """Hook -> the number of its stage in the phase list of ``prx_core/hookspecs.py``'s docstring."""
    stages: dict[str, int] = {}
    current = None
    for line in (hookspecs.__doc__ or "").splitlines():
        numbered = re.match(r"^(\d+)\.\s", line)
        if numbered:
            current = int(numbered[1])
        elif not line.startswith(" ") or not line.strip():
            current = None
        if current is not None:
            for hook in re.findall(r"``(prx_\w+)``", line):
                stages[hook] = current
    return stages


REPEATABLE = ("prx_cost", "prx_guidance", "prx_state_dict", "prx_load_state_dict")
"""Hooks the core may call twice in a row (once per phase for cost, one sample grid or save after another)."""


def hook_order_problems(events: Sequence[Event]) -> list[str]:
    """Where the trace of one technique set departs from the documented order (empty if nowhere).

    The rules, from ``prx_core/hookspecs.py``: the set-up hooks (validation, planning, model
    set-up) come in stage order and never after training started; ``prx_load_state_dict`` comes
    before the first phase (a resume loads, then starts its phase); each phase, marked by the
    trainer's ``("phase", name, "core")`` event, resolves its hooks right after the marker in the
    documented order; a per-step use follows the resolution of its object by the same technique,
    with non-decreasing steps; and the implementations of one hook call run in technique-name order.
    """
    stages = documented_stages()
    phase_stage = stages["prx_phase_change"]
    within_phase = [h for h in hookspecs.hook_names() if stages.get(h) == phase_stage]
    problems: list[str] = []
    setup_stage, in_phases, last_step = 0, False, -1
    answered: dict[str, set[str]] = {}
    previous: Event | None = None
    for position, event in enumerate(events):
        step, kind, name, technique = event
        at = f"event {position} {event}"
        if kind == "phase":
            in_phases, answered = True, {}
        elif kind == "hook":
            stage = stages.get(name)
            if stage is None:
                problems.append(f"{at}: hook {name} is not in the documented phase order")
            elif stage == phase_stage:
                resolving = previous is not None and (previous[1] == "phase" or (
                    previous[1] == "hook" and stages.get(previous[2]) == phase_stage))
                if not resolving:
                    problems.append(f"{at}: {name} outside a phase's resolution (it must follow the phase marker)")
                elif previous[1] == "hook" and within_phase.index(name) < within_phase.index(previous[2]):
                    problems.append(f"{at}: {name} after {previous[2]} within one phase's resolution")
                answered.setdefault(name, set()).add(technique)
            elif name == "prx_guidance":
                answered.setdefault(name, set()).add(technique)
            elif name == "prx_load_state_dict":
                if in_phases:
                    problems.append(f"{at}: prx_load_state_dict after a phase started (a resume loads first)")
            elif name != "prx_state_dict":
                if in_phases:
                    problems.append(f"{at}: set-up hook {name} after training started")
                elif stage < setup_stage:
                    problems.append(f"{at}: {name} (stage {stage}) after a stage-{setup_stage} hook")
                setup_stage = max(setup_stage, stage)
            if (previous is not None and previous[1:3] == ("hook", name) and name not in REPEATABLE
                    and technique <= previous[3]):
                problems.append(f"{at}: {name} ran {technique} after {previous[3]}, not in technique-name order")
        elif kind == "use":
            source = {"router.plan": "prx_routing", "guidance": "prx_guidance"}.get(
                name, "prx_auxiliary_losses" if name.startswith("loss_term:") else None)
            if source is None:
                problems.append(f"{at}: unknown use {name}")
            elif technique not in answered.get(source, set()):
                problems.append(f"{at}: {name} used by {technique}, which did not answer {source} before it")
            if step is None or step < last_step:
                problems.append(f"{at}: step {step} after step {last_step}")
            else:
                last_step = step
        previous = event
    return problems
