"""The plan of a run, decided before any compute: the model's resolved shape, the phases, how each
phase's global batch splits into micro-batches and accumulation steps, and the parameter count.
The cost of the plan is :mod:`prx_core.measure.cost`."""
from __future__ import annotations

import attrs
import torch

from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.errors_format import where
from prx_core.recipe.schema import Recipe
from prx_core.techniques import TechniqueSet
from prx_core.text import text_width
from prx_core.types import Phase


def model_config(recipe: Recipe, text_dim: int | None = None) -> DenoiserConfig:
    """The denoiser's shape: the ``[model]`` preset with the recipe's overrides, for text embeddings
    ``text_dim`` wide (default: :func:`prx_core.text.text_width`). Every hook that needs the
    model's shape gets this object."""
    if text_dim is None:
        try:
            text_dim = text_width(recipe.text)
        except (RecipeError, WeightsNotFoundError) as err:
            raise type(err)(f"{where(recipe, 'text')}: {err}") from None
    try:
        return recipe.model.resolve(text_dim)
    except ValueError as err:
        raise RecipeError(f"{where(recipe, 'model')}: [model] {err}; change hidden or heads.") from None


def plan_phases(recipe: Recipe, techniques: TechniqueSet) -> list[Phase]:
    """The schedule technique's phases, or one phase from ``[train]`` and ``[data]``; with
    ``[train] phase_steps`` set, each phase trains that many steps instead."""
    _, schedule = techniques.call_one("prx_resolution_schedule", recipe=recipe)
    phases = list(schedule) if schedule is not None else [
        Phase("train", recipe.train.steps, recipe.data.resolution, recipe.train.batch_size)]
    if recipe.train.phase_steps is not None:
        phases = with_phase_steps(phases, recipe.train.phase_steps, where(recipe, "train.phase_steps"))
    for phase in phases:
        unknown = sorted(set(phase.disabled) - set(techniques.names) - set(recipe.techniques))
        if unknown:
            raise RecipeError(f"phase '{phase.name}' disables {', '.join(unknown)}, which the recipe neither "
                              f"selects ({', '.join(techniques.names) or 'none'}) nor configures. Fix the "
                              f"phase's `disabled` list.")
    return phases


def with_phase_steps(phases: list[Phase], steps: list[int], source: str = "the recipe") -> list[Phase]:
    """``phases`` with their steps replaced by ``steps``, one count per phase, in order; ``source``
    names the file (or ``--set`` item) that set them."""
    names = ", ".join(p.name for p in phases)
    if len(steps) != len(phases) or any(n < 1 for n in steps):
        raise RecipeError(f"{source}: [train] phase_steps = {list(steps)} must give one step count of at least 1 per "
                          f"phase of the schedule ({len(phases)}: {names}), in order; remove it to train the "
                          "schedule's own steps.")
    return [attrs.evolve(phase, steps=n) for phase, n in zip(phases, steps)]


def accumulation_steps(recipe: Recipe, phase: Phase, world_size: int) -> int:
    """Micro-steps per optimizer step so that micro-batch x processes x steps = global batch.

    ``[train] micro_batch_size`` is the largest per-device batch; a phase whose global batch
    gives each process less (1024 px in the speedrun) uses that smaller batch."""
    per_process = phase.batch_size // world_size
    micro = min(recipe.train.micro_batch_size or per_process, per_process)
    if micro < 1 or phase.batch_size % (micro * world_size):
        raise RecipeError(
            f"{where(recipe, 'train.micro_batch_size')}: phase '{phase.name}': global batch {phase.batch_size} is not "
            f"a multiple of [train] micro_batch_size ({micro}) x {world_size} processes. Pick a micro-batch that divides "
            f"{phase.batch_size // world_size if phase.batch_size >= world_size else phase.batch_size}."
        )
    return phase.batch_size // (micro * world_size)


def parameter_count(config: DenoiserConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in PRXDenoiser(config).parameters())
