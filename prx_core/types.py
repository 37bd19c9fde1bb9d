"""The small value types that cross the boundary between the core and the technique plugins.

Hooks return these; the core consumes them. They are deliberately plain (NamedTuple or attrs) so
that the tensors inside them can flow through a ``torch.compile``-d model without graph breaks.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import attrs
import torch
from PIL import Image
from torch import nn


class Route(NamedTuple):
    """Image tokens kept through blocks ``start..end`` (inclusive, 0-indexed).

    ``index`` has shape (batch, kept) and holds, per sample, the positions (in the full token
    grid, row-major) of the tokens that go through the routed blocks, sorted ascending. The other
    tokens skip from the input of ``start`` to the output of ``end`` unchanged.
    """

    start: int
    end: int
    index: torch.Tensor


RoutePlan = tuple[Route, ...]
"""Zero or more non-overlapping routes, in block order. An empty plan means dense."""


class Captured(NamedTuple):
    """A block's output as the block saw it: ``hidden`` (batch, tokens, dim) and, when the block
    ran inside a route, ``index`` (batch, tokens) mapping each row to its full-grid position."""

    hidden: torch.Tensor
    index: torch.Tensor | None


class Conditioning(NamedTuple):
    """Frozen text-encoder output: ``tokens`` (batch, length, text_dim) and boolean ``mask``."""

    tokens: torch.Tensor
    mask: torch.Tensor


@attrs.frozen
class Phase:
    """One stretch of training with fixed resolution and batch, e.g. "512 px" then "1024 px".

    ``disabled`` names techniques that are off for this phase (REPA in the 1024 px phase).
    """

    name: str
    steps: int
    resolution: int
    batch_size: int
    disabled: tuple[str, ...] = ()


@attrs.frozen
class StepTensors:
    """What one training micro-step produced, handed to every auxiliary loss.

    ``x0`` is the clean image in [-1, 1], ``x0_hat`` the denoiser's prediction, ``t`` the noise
    level per sample (1 = noise), ``captured`` the outputs of the blocks the phase's auxiliary
    losses read (their ``blocks``), by block index, ``route`` the route plan the denoiser ran with
    (empty when dense), ``patch`` the denoiser's patch size and ``step`` the training step.
    """

    x0: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    x0_hat: torch.Tensor
    captured: Mapping[int, Captured]
    route: RoutePlan
    patch: int
    step: int

    @property
    def grid(self) -> tuple[int, int]:
        """The (rows, cols) token grid of this step's images: the denoiser sees an H x W image as
        ``(H // patch) * (W // patch)`` tokens in row-major order, which is the order of a
        captured block's rows (before a route's ``index`` picks some of them)."""
        return self.x0.shape[-2] // self.patch, self.x0.shape[-1] // self.patch


class Router(Protocol):
    """Chooses, for one step, which image tokens each routed block sees."""

    def plan(self, batch: int, grid: tuple[int, int], step: int, device: torch.device) -> RoutePlan:
        """Return the route plan for ``batch`` samples on a ``grid`` of (rows, cols) tokens."""
        ...


class AuxiliaryLoss(Protocol):
    """An extra training loss computed from a step's tensors.

    ``name`` identifies the loss (its time share in the metrics). A loss that reads hidden
    states of the denoiser also has ``blocks``, a tuple of block indices: the core captures those
    blocks' outputs on every step of the phase and hands them over as ``StepTensors.captured``
    (a loss without ``blocks`` reads none).
    """

    name: str

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        """Return ``{term name: weighted scalar}`` (0-dim floating-point tensors); the core adds
        them to the objective."""
        ...


Predict = Callable[[torch.Tensor, torch.Tensor, Conditioning, RoutePlan], torch.Tensor]
"""``predict(x_t, t, conditioning, route_plan) -> x0_hat``: one denoiser call at sampling time."""


class Guidance(Protocol):
    """Combines one or more denoiser calls into the x0 prediction of a sampling step."""

    def __call__(
        self, predict: Predict, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning
    ) -> torch.Tensor:
        ...


@attrs.frozen
class OptimizerClaim:
    """A plugin's claim on parameters: it builds the optimizer that steps them.

    ``params`` are (qualified name, parameter) pairs from ``model.named_parameters()``.
    ``build(params) -> torch.optim.Optimizer`` is called once, after all claims are checked.
    """

    owner: str
    params: tuple[tuple[str, nn.Parameter], ...]
    build: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    label: str = ""


@attrs.frozen
class CostTerm:
    """Training FLOPs per image that a plugin adds (positive) or removes (negative).

    ``category`` is one of "denoiser", "teacher", "optimizer" (optimizer FLOPs are per step and
    the cost model divides them by the global batch).
    """

    name: str
    flops: float
    category: str = "denoiser"
    per: str = "image"


EFFECTS: dict[str, str] = {
    "routes_tokens": "some blocks see fewer image tokens than the image has patches (the step's route plan)",
    "loss_term": "a loss term of that name appears in the steps' terms (metrics 'loss/<name>')",
    "adds_module": "model.extras[<name>] exists and its parameters get non-zero gradients",
    "optimizer": "the optimizer with that label steps the parameters it claimed (they change) and the "
                 "default AdamW does not hold them",
    "guides_sampling": "the sampler calls the technique's guidance",
    "changes_schedule": "the batch shape (resolution or batch size) changes at a phase boundary",
}
"""Effect kind -> what observing it means. Kinds in :data:`NAMED` take ``:<name>``."""

NAMED = ("loss_term", "adds_module", "optimizer")


def parse_effect(effect: str) -> tuple[str, str]:
    """``"loss_term:repa"`` -> ``("loss_term", "repa")``; ``"routes_tokens"`` -> ``("routes_tokens", "")``.

    Raises ValueError for a string outside the vocabulary."""
    kind, _, name = effect.partition(":")
    if kind not in EFFECTS:
        raise ValueError(f"unknown effect kind {kind!r} in {effect!r}; the vocabulary is {', '.join(EFFECTS)}")
    if (kind in NAMED) != bool(name):
        form = f"{kind}:<name>" if kind in NAMED else kind
        raise ValueError(f"effect {effect!r} must be written {form!r}")
    return kind, name


@attrs.frozen
class Technique:
    """What a plugin registers: its name, configuration class and declared behaviour.

    ``plugin`` is a class called as ``plugin(config, context)`` (``config`` is None when the
    technique has no config class; ``context`` is a :class:`RunContext`) whose instance carries
    the ``@hookimpl`` methods; implementing an exclusive hook (``prx_guidance``, ...) gives the
    technique that hook's role (:data:`prx_core.hookspecs.EXCLUSIVE`). ``conflicts`` and
    ``requires`` name other techniques. ``effects`` are the observable effects the interference
    matrix checks (see docs/plugins.md for the vocabulary). ``tiny_settings`` is the technique's
    table for the matrix's tiny run (:mod:`prx_core.testing`: the 4-block ``prx-test`` model,
    32 px images, 4 steps of 4 images), for a technique whose defaults do not fit it; teacher
    settings name the tiny random teachers ``"{vit}"`` or ``"{cnn}"``.
    """

    name: str
    plugin: Callable[..., Any]
    config: type | None = None
    summary: str = ""
    effects: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    tiny_settings: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class RunContext:
    """What a technique instance may know about the run it is part of.

    Passed as ``plugin(config, context)`` when the core builds the technique for a run.
    ``recipe`` is the resolved :class:`prx_core.recipe.schema.Recipe`; ``log`` prints a line
    on rank 0 (and into the run log).
    """

    recipe: Any
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    log: Callable[[str], None] = print


@attrs.frozen
class RunStart:
    """What a tracker learns once, on rank 0, when a run's training is about to start.

    ``name`` is the run's display name (the run folder relative to ``[train] runs_dir``, e.g.
    ``quickstart``); ``folder`` the run folder, where a tracker keeps what it needs to continue
    its tracker run after ``--resume`` (:func:`prx_core.runfolder.read_tracker_state`).
    ``recipe`` is the resolved recipe as plain TOML data (what ``recipe.toml`` holds), ``facts``
    the run's facts (techniques, parameters, device, processes, precision, git commit, versions).
    Training continues after step ``start_step`` (0 for a new run; the checkpoint's step after
    ``--resume``) until ``total_steps``; ``resumed`` is True under ``--resume``.
    """

    name: str
    folder: Path
    recipe: Mapping[str, Any]
    facts: Mapping[str, Any]
    start_step: int
    total_steps: int
    resumed: bool


@attrs.frozen
class SampleGrid:
    """A grid of preview samples as the run folder has it: ``image`` (the PNG at ``path``) and
    the ``captions`` of its cells, row by row."""

    image: Image.Image
    captions: Sequence[str]
    path: Path


class MetricsSink(Protocol):
    """Where a tracker sends a run's records (returned by ``prx_metrics_sink``).

    The core calls it on rank 0 only, on a thread of its own (training never waits for a
    tracker), in this order: :meth:`open` once, then :meth:`metrics` at each logged step,
    :meth:`images` when a sample grid is made, :meth:`evaluation` after the final evaluation, and
    :meth:`close` at the end, also after Ctrl-C or an error. An exception from any method is
    reported once and switches this sink off for the rest of the run; ``metrics.jsonl`` remains
    the record. After ``--resume`` the core first sends again, in step order, the rows and grids
    the run folder holds up to ``RunStart.start_step`` (so a tracker fills in what the kill made
    it lose), then every record after it, which the resumed run makes again (and the final grid
    and evaluation of a run that had finished training). Within one process each record comes
    once; the sink must skip what its tracker already holds, so that no step is held twice.
    """

    def open(self) -> None:
        """Create or continue the tracker run and record the recipe and the run facts."""
        ...

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        """One logged step: ``row`` is the line ``metrics.jsonl`` gets (numbers, plus "phase")."""
        ...

    def images(self, step: int, grid: SampleGrid) -> None:
        """A sample grid made after training step ``step``."""
        ...

    def evaluation(self, step: int, results: Mapping[str, float]) -> None:
        """An evaluation at training step ``step``, flattened: ``{"prompt_following/overall": 0.43, ...}``;
        each periodic one (``[eval] every``, prompt following only) and the final one (with the
        distribution metrics), in step order with the metrics rows."""
        ...

    def close(self, status: str) -> None:
        """The end of this process's part of the run: "finished", "interrupted" or "failed"."""
        ...
