"""What a run checks on this machine before it creates anything, and ``--dry-run`` with it.

The recipe's own rules (each value's constraints, checked when it loads; the techniques'
``prx_check_recipe``; the phases and their batch split) hold on any machine. These depend on the
machine: the device exists, the text encoder and the evaluation's metric networks can be loaded,
the data sources are where the recipe says. ``prx run`` checks them before the run folder exists;
``prx run --dry-run`` checks them too, unless ``--skip-local-checks`` plans for another machine.
"""
from __future__ import annotations

from prx_core.data.locations import source_problems
from prx_core.distributed import device_problem
from prx_core.errors import RecipeError
from prx_core.evaluation.frechet import feature_network_problem
from prx_core.recipe.errors_format import where
from prx_core.recipe.schema import Recipe
from prx_core.text import encoder_problem


def local_problems(recipe: Recipe) -> list[str]:
    """One paragraph per thing this machine lacks to run ``recipe``, each naming the recipe file and key."""
    found = []
    problem = device_problem(recipe.train.device)
    if problem:
        found.append(f"{where(recipe, 'train.device')}: [train] device = {problem}.")
    problem = encoder_problem(recipe.text)
    if problem:
        found.append(f"{where(recipe, 'text.encoder')}: [text] encoder: {problem}")
    for index, problem in source_problems(recipe.data):
        found.append(f"{where(recipe, 'data.sources')}: [data] sources[{index}]: {problem}.")
    for index, spec in enumerate(recipe.eval.distribution_metrics):
        problem = feature_network_problem(spec)
        if problem:
            found.append(f"{where(recipe, 'eval.distribution_metrics')}: [eval] distribution_metrics[{index}] = "
                         f"\"{spec}\": {problem}")
    return found


def check_local(recipe: Recipe) -> None:
    """Raise :class:`RecipeError` listing every local problem (see :func:`local_problems`)."""
    found = local_problems(recipe)
    if found:
        raise RecipeError("\n\n".join(found))
