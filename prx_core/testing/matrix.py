"""The interference matrix as a library, for prx's own tests and for plugin authors.

A technique is checked by training it for a few steps on the 4-block ``prx-test`` model, alone
and together with other installed techniques, in-process on a CPU::

    from prx_core.testing import check_combination, matrix_recipe

    recipe = matrix_recipe(folder)              # the tiny recipe, each technique's tiny settings
    check_combination(("my_technique",), recipe, folder / "run")

:func:`check_combination` runs every check of the matrix on one selection of techniques:

* a selection with a declared conflict (two implementations of an exclusive hook, a declared
  conflict, a missing requirement, two techniques declaring one loss term, module or optimizer
  name) is refused with exactly those messages, worked out by :func:`refusals` from the
  declarations alone; any other selection runs; a name that is not installed fails with the
  errors of the plugins that did not load;
* the run crosses a phase boundary. With a technique that implements the schedule hook, its tiny
  settings give the phases; without one, the core plans one phase from ``[train]`` and
  :func:`two_phases` cuts it into two identical halves, so the core still re-resolves routers,
  captures and losses at step 2 (only a schedule changes the batch shape, which is how
  "changes_schedule" is told apart);
* its losses are finite; the effects observed (:mod:`prx_core.effects`) are exactly those the
  active techniques declare, and the trace names only declaring techniques as their sources; the
  hook trace keeps the documented order;
* a second run with the plugins listed in reverse order gives the same losses, weights and trace
  (same seed: determinism and order-independence together);
* resuming from the checkpoint written at step :data:`RESUME_AT` gives the same losses and
  weights as the uninterrupted run.

Each technique runs with the table it declares in ``Technique.tiny_settings`` (its defaults when
it declares none): settings that fit the 4-block model at 32 px and a 4-step run. Teachers are
tiny random-weight networks that :func:`~prx_core.testing.teachers.write_tiny_teachers` saves,
named in the settings by the placeholders ``"{vit}"`` (a 2-layer DINOv2) and ``"{cnn}"`` (timm's
``test_efficientnet``, for losses that need a CNN's stages). So the matrix knows no technique by
name, and a third party's technique gets every check without a change here. A failed check raises
AssertionError with what differed; the module needs no pytest, so any test runner can call it.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w
import torch

from prx_core import distributed as D
from prx_core.checkpoint import CheckpointManager, load_state
from prx_core.data.batcher import Batch
from prx_core.data.schedule import phase_at
from prx_core.effects import EffectProbe, declared_effects, effect_owners, hook_order_problems
from prx_core.errors import RecipeError
from prx_core.generate import generate
from prx_core.measure.cost import phase_lines
from prx_core.plan import model_config, plan_phases
from prx_core.recipe.errors_format import names_list
from prx_core.recipe.loader import load_recipe
from prx_core.registry import Registry, discover, unknown_technique_problems
from prx_core.techniques import TechniqueSet
from prx_core.testing.teachers import write_tiny_teachers
from prx_core.text import load_text_encoder
from prx_core.train.loop import resolve_guidance, sampling_model
from prx_core.train.trainer import Trainer
from prx_core.types import NAMED, Phase, RunContext, parse_effect

STEPS = 4
"""Training steps of every matrix run."""
TINY_RECIPE = Path(__file__).with_name("tiny.toml")
"""The smallest complete run (4-block ``prx-test`` model, 32 px scenes, random text embeddings),
which the matrix recipe extends and prx's own end-to-end tests use."""
RESUME_AT = 3
"""The step of the checkpoint a run resumes from: inside the second phase, so the resumed run
restarts that phase at its checkpoint step."""

def _registry_or_installed(registry: Registry | None) -> Registry:
    """``registry``, or the installed techniques (:func:`prx_core.registry.discover`) when None."""
    return discover() if registry is None else registry


def installed(names: Sequence[str], registry: Registry) -> None:
    """Raise AssertionError saying why when a name in ``names`` is not a technique of ``registry``:
    the plugins that failed to load, with their errors, are the likely reason."""
    problems = unknown_technique_problems(names, registry, f"selection {combo_id(names)}")
    if problems:
        raise AssertionError("\n\n".join(problems))


def refusals(names: Sequence[str], registry: Registry | None = None) -> list[str]:
    """The messages the core must refuse ``names`` with, worked out from the declarations alone
    (empty when the selection may run)."""
    registry = _registry_or_installed(registry)
    installed(names, registry)
    techniques = [registry.techniques[name] for name in names]
    expected = []
    for role in sorted({role for name in names for role in registry.roles(name)}):
        holders = [name for name in sorted(names) if role in registry.roles(name)]
        if len(holders) > 1:
            expected.append(f"{role} techniques: {names_list(holders)}; keep one")
    effects = [effect for technique in techniques for effect in technique.effects]
    expected += [f"named '{parse_effect(effect)[1]}' (each declares {effect})" for effect in sorted(set(effects))
                 if parse_effect(effect)[0] in NAMED and effects.count(effect) > 1]
    for technique in techniques:
        expected += [f"selects {technique.name} and {other}, which cannot be used together"
                     for other in technique.conflicts if other in names]
        expected += [f"{technique.name} requires {needed}" for needed in technique.requires if needed not in names]
    return expected


def subsets(registry: Registry | None = None) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(fast tier, slow tier): every subset of the registry's training techniques (sorted names)
    exactly once.

    The fast tier is the empty set, each technique alone, all of them, and the largest selections
    that run (no refusal); the slow tier is the rest. Trackers are left out: they implement no
    hook that can change training (discovery refuses one that does), so they would only multiply
    the matrix; tests/plugins/test_trackers.py checks each against its own library's reader instead."""
    registry = _registry_or_installed(registry)
    names = registry.training_techniques
    every = [combo for size in range(len(names) + 1) for combo in itertools.combinations(names, size)]
    largest = [combo for combo in every if not refusals(combo, registry)]
    largest = [combo for combo in largest if not any(set(combo) < set(other) for other in largest)]
    fast = list(dict.fromkeys([(), *[(name,) for name in names], names, *largest]))
    return fast, [combo for combo in every if combo not in fast]


def combo_id(names: Sequence[str]) -> str:
    """A selection's name for test ids and folders: ``"a+b"``, ``"none"`` for the empty one."""
    return "+".join(names) or "none"


def matrix_recipe(folder: Path, registry: Registry | None = None) -> Path:
    """Write the matrix recipe into ``folder`` and return its path.

    The recipe extends :data:`TINY_RECIPE`, trains :data:`STEPS` steps of 4 images, and holds,
    for every technique of ``registry`` (default: the installed ones) that declares them, its
    ``Technique.tiny_settings`` as its table; the other techniques run with their defaults. The
    teacher placeholders ``"{vit}"`` and ``"{cnn}"`` anywhere in a table become the tiny random
    teachers (:func:`prx_core.testing.teachers.write_tiny_teachers`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    registry = _registry_or_installed(registry)
    teachers = write_tiny_teachers(folder)
    filled = {name: _with_teachers(technique.tiny_settings, teachers)
              for name, technique in sorted(registry.techniques.items()) if technique.tiny_settings}
    path = folder / "matrix.toml"
    path.write_text(tomli_w.dumps({"extends": str(TINY_RECIPE), "train": {"steps": STEPS, "batch_size": 4}, **filled}))
    return path


def _with_teachers(value: Any, teachers: Mapping[str, str]) -> Any:
    """``value`` (a table, array or scalar) with every teacher placeholder string replaced."""
    if isinstance(value, Mapping):
        return {key: _with_teachers(item, teachers) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_with_teachers(item, teachers) for item in value]
    return teachers.get(value, value) if isinstance(value, str) else value


@attrs.define
class Run:
    """What one in-process run left behind."""

    losses: list[dict[str, float]]
    """Per step, each ``loss*`` metric."""
    events: list
    """The hook trace (:data:`prx_core.effects.Event` tuples), per-step uses included."""
    weights: dict[str, torch.Tensor]
    """The denoiser's final state dict."""
    observed: frozenset[str] = frozenset()
    """The effects :class:`prx_core.effects.EffectProbe` saw (empty unless ``probe=True``)."""
    checkpoint: Path | None = None
    """The checkpoint written at :data:`RESUME_AT` (None for a resumed run)."""


def batch_for(phase: Phase, step: int) -> Batch:
    """The step's batch, a function of the step alone (so a resumed run sees the same data)."""
    generator = torch.Generator().manual_seed(1000 + step)
    images = torch.rand(phase.batch_size, 3, phase.resolution, phase.resolution, generator=generator) * 2 - 1
    captions = [f"scene {step} {i}" for i in range(phase.batch_size)]
    return Batch(images, captions, [f"matrix:{step}:{i}" for i in range(phase.batch_size)], None)


def two_phases(phases: list[Phase]) -> list[Phase]:
    """The schedule technique's phases, or the single [train] phase cut into two equal halves."""
    if len(phases) > 1:
        return phases
    [only] = phases
    half = only.steps // 2
    return [attrs.evolve(only, name=f"{only.name}-a", steps=half),
            attrs.evolve(only, name=f"{only.name}-b", steps=only.steps - half)]


def train(recipe_path: Path, plugins: Sequence[str], folder: Path, *, registry: Registry | None = None,
          probe: bool = False, resume: Path | None = None) -> Run:
    """Plan, build and train the recipe with ``plugins`` selected for its steps, through the
    phases of :func:`two_phases` (checkpointing into ``folder`` at :data:`RESUME_AT`), then sample
    once. ``probe`` watches the run with an EffectProbe; ``resume`` starts from a checkpoint."""
    registry = _registry_or_installed(registry)
    recipe = load_recipe(recipe_path, [f"plugins={json.dumps(list(plugins))}"], registry=registry)
    info = D.DistInfo(rank=0, world_size=1, local_rank=0, strategy="none", device=torch.device("cpu"))
    context = RunContext(recipe, recipe.seed, log=lambda line: None)
    techniques = TechniqueSet(recipe, registry, context, model_config(recipe))
    phases = two_phases(plan_phases(recipe, techniques))
    text = load_text_encoder(recipe.text, info.device)
    for phase in phases:
        flops = [line.flops for line in phase_lines(techniques, phase, 8)]
        assert all(math.isfinite(value) for value in flops), f"phase {phase.name}: non-finite cost terms {flops}"
    trainer = Trainer(recipe, techniques, text, info)
    trainer.trace_steps = True
    watcher = EffectProbe(trainer) if probe else None
    checkpoints = CheckpointManager(Path(folder) / "checkpoints")
    if resume is not None:
        trainer.load_state_dict(load_state(resume))
    losses, current = [], None
    while trainer.step < sum(p.steps for p in phases):
        index, _ = phase_at(phases, trainer.step)
        if index != current:
            trainer.start_phase(phases[index], index)
            current = index
        metrics = trainer.train_step(iter([batch_for(phases[index], trainer.step)]), 1)
        losses.append({key: float(value) for key, value in metrics.items() if key.startswith("loss")})
        if watcher is not None:
            watcher.record_step(metrics)
        if trainer.step == RESUME_AT and resume is None:
            checkpoints.save(trainer.step, trainer.state_dict())
    assert trainer.nonfinite_total == 0, f"{trainer.nonfinite_total} steps had a non-finite loss or gradient"
    generate(sampling_model(trainer), text, ["a red circle"], (phases[-1].resolution,) * 2, recipe.sample, steps=2,
             guidance=resolve_guidance(trainer, recipe))
    if watcher is not None:
        watcher.close()
    weights = {name: p.detach().clone() for name, p in trainer.denoiser.state_dict().items()}
    return Run(losses, list(techniques.trace.events), weights, watcher.observed() if watcher else frozenset(),
               checkpoints.latest())


def check_combination(names: Sequence[str], recipe_path: Path, folder: Path,
                      registry: Registry | None = None) -> None:
    """Every check of the matrix (see the module docstring) on the selection ``names``, trained
    from ``recipe_path`` (:func:`matrix_recipe`) with run folders under ``folder``; ``registry``
    defaults to the installed techniques. Raises AssertionError naming the check that failed."""
    registry = _registry_or_installed(registry)
    folder = Path(folder)
    expected = refusals(names, registry)
    if expected:
        try:
            train(recipe_path, list(names), folder, registry=registry)
        except RecipeError as refused:
            message = str(refused)
        else:
            raise AssertionError(f"{combo_id(names)} ran, but its declarations say it must be refused: {expected}")
        assert all(fragment in message for fragment in expected), f"refused with:\n{message}\nexpected: {expected}"
        assert message.count("\n\n") == len(expected) - 1, f"refused for more than the declarations say:\n{message}"
        return

    first = train(recipe_path, list(names), folder / "first", registry=registry, probe=True)
    losses = [value for row in first.losses for value in row.values()]
    assert len(first.losses) == STEPS and all(math.isfinite(value) for value in losses), first.losses

    declared = declared_effects(registry.techniques[name] for name in names)
    missing, unexpected = set(declared) - first.observed, first.observed - set(declared)
    assert not missing and not unexpected, (
        f"declared but not observed: {sorted(missing)}; observed but declared by no active technique: "
        f"{sorted(unexpected)}")
    for effect, sources in effect_owners(first.events).items():
        assert sources <= declared.get(effect, frozenset()), f"{effect} came from {sorted(sources)}"
    problems = hook_order_problems(first.events)
    assert problems == [], f"the hook trace breaks the documented order: {problems}"

    reverse = train(recipe_path, list(reversed(names)), folder / "reverse", registry=registry)
    assert reverse.losses == first.losses, "same seed, plugins listed in reverse order: the losses differ"
    assert reverse.events == first.events, "same seed, plugins listed in reverse order: the hook trace differs"
    assert all(torch.equal(reverse.weights[k], w) for k, w in first.weights.items()), "the final weights differ"

    resumed = train(recipe_path, list(names), folder / "resumed", registry=registry, resume=first.checkpoint)
    assert resumed.losses == first.losses[RESUME_AT:], f"resuming at step {RESUME_AT} changed the losses"
    assert all(torch.equal(resumed.weights[k], w) for k, w in first.weights.items()), "resuming changed the weights"
    problems = hook_order_problems(resumed.events)
    assert problems == [], f"the resumed run's hook trace breaks the documented order: {problems}"
