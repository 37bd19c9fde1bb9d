"""``prx run --dry-run``: everything a run would decide before compute, printed, nothing trained."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from prx_core.diffusers_format.checkpoint import is_diffusers_spec
from prx_core.measure.cost import estimate_cost, render_cost_report
from prx_core.plan import accumulation_steps, model_config, parameter_count, plan_phases
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry
from prx_core.techniques import TechniqueSet
from prx_core.train.initial_weights import check_initial_weights
from prx_core.train.preflight import check_local
from prx_core.types import RunContext


def print_plan(recipe: Recipe, registry: Registry, gpus: int | None = None, gpu: str = "h200",
               price: float = 2.0, local_checks: bool = True) -> None:
    """Validate ``recipe`` as a run would (techniques, phases, batch split and, with
    ``local_checks``, this machine: prx_core.train.preflight) and print the plan. Every problem
    is raised before anything is printed."""
    console = Console(highlight=False, width=None if Console().is_terminal else 140)
    if local_checks:
        check_local(recipe)
    config = model_config(recipe)
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, log=console.print), config)
    phases = plan_phases(recipe, techniques)
    initial = check_initial_weights(recipe, config.text_dim, download=False)
    gpus = gpus or 1
    splits = [accumulation_steps(recipe, phase, gpus) for phase in phases]
    table = Table(title=f"plan of '{recipe.name}' on {gpus} process(es)")
    for column in ("phase", "resolution", "global batch", "per device x accumulation", "steps", "techniques off"):
        table.add_column(column)
    for phase, accumulation in zip(phases, splits):
        per_device = phase.batch_size // (gpus * accumulation)
        table.add_row(phase.name, f"{phase.resolution} px", str(phase.batch_size), f"{per_device} x {accumulation}",
                      f"{phase.steps:,}", ", ".join(phase.disabled) or "-")
    console.print(f"techniques: {', '.join(techniques.names) or '(none)'}")
    console.print(f"model: {recipe.model.preset}, {parameter_count(config):,} parameters "
                  f"(hidden {config.hidden}, depth {config.depth}, heads {config.heads}, patch {config.patch}), "
                  f"text width {config.text_dim}")
    if is_diffusers_spec(recipe.model.init):
        console.print(f"initial weights: {initial.folder} (shape checked against [model])" if initial else
                      f"initial weights: {recipe.model.init} is not on this machine, so its shape was not checked; "
                      "`prx run` checks it before training", markup=False)
    console.print(table)
    report = estimate_cost(recipe, techniques, gpu=gpu, gpus=gpus, price=price)
    console.print(render_cost_report(report))
