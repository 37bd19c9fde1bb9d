"""The interference matrix: every subset of the installed techniques, trained for a few steps on
the tiny model, in-process.

* The techniques are the ones :func:`prx_core.plugins.discover` finds when the module is
  collected (``PRX_PLUGINS`` narrows them), so a plugin installed later joins the matrix by
  existing; a technique without a table in :data:`TINY_TABLES` runs with its defaults.
* Every combination crosses a phase boundary. With ``multires`` in the subset its table gives
  the two phases (32 px x 4 images, then 16 px x 2 images: the batch shape changes). Without it,
  the core plans one phase from ``[train]`` and the harness cuts it into two identical halves, so
  the core still re-resolves routers, captures and losses at step 2; only multires changes the
  batch shape, which is how its "changes_schedule" effect is told apart.
* Techniques with teachers run with tiny random-weight networks saved by a fixture: a 2-layer
  DINOv2 (repa, dino_perceptual) and timm's ``test_efficientnet`` (lpips needs a CNN's stages).

For each combination: a selection with a declared conflict (shared role, declared conflict,
missing requirement) is refused with exactly those messages, and any other runs; losses are
finite; the effects observed (:mod:`prx_core.effects`) are exactly those the active techniques
declare, and the trace names only declaring techniques as their sources; the hook trace keeps
the documented order; a second run with the recipe's plugins in reverse order gives the same
losses, weights and trace (same seed: determinism and order-independence together); resuming
from the checkpoint written at step 3 gives the same losses and weights as the uninterrupted run.

The fast tier (no mark) is the empty set, each technique alone, all of them, and the largest
selections that run; the rest of the 2^n subsets are marked ``slow``.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import attrs
import pytest
import timm
import tomli_w
import torch
from transformers import Dinov2Config, Dinov2Model

from prx_core import distributed as D
from prx_core.checkpoint import CheckpointManager, load_state
from prx_core.cost import phase_lines
from prx_core.data.batcher import Batch
from prx_core.data.schedule import phase_at
from prx_core.effects import EffectProbe, declared_effects, effect_owners, effect_problems, hook_order_problems
from prx_core.errors import RecipeError
from prx_core.generate import generate
from prx_core.plugins import Registry, TechniqueSet, discover
from prx_core.recipe.errors_format import names_list
from prx_core.recipe.loader import load_recipe
from prx_core.text import load_text_encoder
from prx_core.train.loop import resolve_guidance, sampling_model
from prx_core.train.plan import plan_phases
from prx_core.train.trainer import Trainer
from prx_core.types import Phase, RunContext

REGISTRY = discover()
NAMES = tuple(sorted(REGISTRY.techniques))
STEPS = 4
RESUME_AT = 3  # inside the second phase: the resumed run restarts that phase at its checkpoint step

TINY_TABLES = {
    "multires": {"phases": [{"name": "32px", "resolution": 32, "batch_size": 4, "steps": 2},
                            {"name": "16px", "resolution": 16, "batch_size": 2, "steps": 2}]},
    "repa": {"teacher": "{vit}", "block": 1, "projector_dim": 16},
    "lpips": {"teacher": "{cnn}", "min_side": 16},
    "dino_perceptual": {"teacher": "{vit}", "size": 28},
}
"""Tables for techniques whose defaults do not fit the 4-block prx-test model at 32 px or need
weights this machine lacks ("{vit}", "{cnn}": the tiny teachers); the others run with defaults."""


def refusals(names: tuple[str, ...], registry: Registry = REGISTRY) -> list[str]:
    """The messages the core must refuse ``names`` with, worked out from the declarations alone."""
    techniques = [registry.techniques[name] for name in names]
    expected = []
    for role in sorted({role for t in techniques for role in t.roles}):
        holders = [t.name for t in techniques if role in t.roles]
        if len(holders) > 1:
            expected.append(f"{role} techniques: {names_list(holders)}; keep one")
    for technique in techniques:
        expected += [f"selects {technique.name} and {other}, which cannot be used together"
                     for other in technique.conflicts if other in names]
        expected += [f"{technique.name} requires {needed}" for needed in technique.requires if needed not in names]
    return expected


def subsets() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(fast tier, slow tier): every subset of NAMES exactly once."""
    every = [combo for size in range(len(NAMES) + 1) for combo in itertools.combinations(NAMES, size)]
    largest = [combo for combo in every if not refusals(combo)]
    largest = [combo for combo in largest if not any(set(combo) < set(other) for other in largest)]
    fast = [(), *[(name,) for name in NAMES], NAMES, *largest]
    fast = list(dict.fromkeys(fast))
    return fast, [combo for combo in every if combo not in fast]


FAST, SLOW = subsets()


def combo_id(names: tuple[str, ...]) -> str:
    return "+".join(names) or "none"


# --- the harness --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix_recipe(tmp_path_factory) -> Path:
    """A recipe extending tests/fixtures/tiny.toml with a table for every installed technique
    that has one in TINY_TABLES, the teacher placeholders filled with tiny saved networks."""
    folder = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    vit = Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                       patch_size=14, image_size=28)
    Dinov2Model(vit).save_pretrained(folder / "vit")
    torch.save(timm.create_model("test_efficientnet").state_dict(), folder / "cnn.pth")
    teachers = {"{vit}": f"hf:{folder / 'vit'}", "{cnn}": f"timm:test_efficientnet@{folder / 'cnn.pth'}"}
    tables = {name: {key: teachers.get(value, value) if isinstance(value, str) else value
                     for key, value in table.items()}
              for name, table in TINY_TABLES.items() if name in REGISTRY.techniques}
    recipe = {"extends": str(Path(__file__).parent / "fixtures" / "tiny.toml"),
              "train": {"steps": STEPS, "batch_size": 4}, **tables}
    path = folder / "matrix.toml"
    path.write_text(tomli_w.dumps(recipe))
    return path


@attrs.define
class Run:
    """What one in-process run left behind."""

    losses: list[dict[str, float]]
    events: list
    weights: dict[str, torch.Tensor]
    observed: frozenset[str] = frozenset()
    checkpoint: Path | None = None


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


def train(path: Path, plugins: list[str], folder: Path, *, registry: Registry = REGISTRY, probe: bool = False,
          resume: Path | None = None) -> Run:
    """Plan, build, train STEPS steps through the phases (checkpointing at RESUME_AT), sample once."""
    recipe = load_recipe(path, [f"plugins={json.dumps(plugins)}"], registry=registry)
    info = D.DistInfo(rank=0, world_size=1, local_rank=0, strategy="none", device=torch.device("cpu"))
    techniques = TechniqueSet(recipe, registry, RunContext(recipe, recipe.seed, log=lambda line: None))
    phases = two_phases(plan_phases(recipe, techniques))
    text = load_text_encoder(recipe.text, info.device)
    model_config = recipe.model.resolve(text.dim)
    for phase in phases:
        assert all(math.isfinite(line.flops) for line in phase_lines(techniques, model_config, phase, 8))
    trainer = Trainer(recipe, techniques, text, info)
    trainer.trace_steps = True
    watcher = EffectProbe(trainer) if probe else None
    checkpoints = CheckpointManager(folder / "checkpoints")
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


def check_combination(names: tuple[str, ...], path: Path, folder: Path, registry: Registry = REGISTRY) -> None:
    """Every check of the matrix on one selection (see the module docstring)."""
    expected = refusals(names, registry)
    if expected:
        with pytest.raises(RecipeError) as refused:
            train(path, list(names), folder, registry=registry)
        message = str(refused.value)
        assert all(fragment in message for fragment in expected), f"refused with:\n{message}\nexpected: {expected}"
        assert message.count("\n\n") == len(expected) - 1, f"refused for more than the declarations say:\n{message}"
        return

    first = train(path, list(names), folder / "first", registry=registry, probe=True)
    losses = [value for row in first.losses for value in row.values()]
    assert len(first.losses) == STEPS and all(math.isfinite(value) for value in losses), first.losses

    declared = declared_effects(registry.techniques[name] for name in names)
    missing, unexpected = set(declared) - first.observed, first.observed - set(declared)
    assert not missing and not unexpected, (
        f"declared but not observed: {sorted(missing)}; observed but declared by no active technique: "
        f"{sorted(unexpected)}")
    for effect, sources in effect_owners(first.events).items():
        assert sources <= declared.get(effect, frozenset()), f"{effect} came from {sorted(sources)}"
    assert hook_order_problems(first.events) == []

    reverse = train(path, list(reversed(names)), folder / "reverse", registry=registry)
    assert reverse.losses == first.losses, "same seed, plugins listed in reverse order: the losses differ"
    assert reverse.events == first.events, "same seed, plugins listed in reverse order: the hook trace differs"
    assert all(torch.equal(reverse.weights[k], w) for k, w in first.weights.items()), "the final weights differ"

    resumed = train(path, list(names), folder / "resumed", registry=registry, resume=first.checkpoint)
    assert resumed.losses == first.losses[RESUME_AT:], "resuming at step 3 changed the losses"
    assert all(torch.equal(resumed.weights[k], w) for k, w in first.weights.items()), "resuming changed the weights"
    assert hook_order_problems(resumed.events) == []


# --- the tests ----------------------------------------------------------------------------------


def test_installed_techniques_load_and_declare_known_effects():
    assert REGISTRY.broken == (), REGISTRY.describe_broken()
    assert [problem for name in NAMES for problem in effect_problems(REGISTRY.techniques[name])] == []
    assert len(FAST) + len(SLOW) == 2 ** len(NAMES)


@pytest.mark.parametrize("names", FAST, ids=combo_id)
def test_combination(names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("names", SLOW, ids=combo_id)
def test_combination_slow(names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path)
