"""Timing a recipe's training step, alone and against the dense baseline (``prx bench``).

A bench builds the real :class:`~prx_core.train.trainer.Trainer` (the recipe's model, techniques,
optimizers, precision and ``[train] compile``) with the text encoder replaced by fixed random
embeddings (``[text] encoder = "none"``) and feeds it one synthetic batch of the requested shape
that already lies on the device, so that what is timed is the step itself: no data loading, no
text encoding, no host-to-device copy. Each plugin combination gets a fresh trainer in the same
process, one after the other, so the baseline and the techniques share the machine's state.

What is timed, per combination: ``warmup`` optimizer steps of one micro-batch each (compilation,
optimizer state), then ``steps`` optimizer steps of ``accumulation`` micro-batches each, between
two device synchronisations. Afterwards, separately: each optimizer's ``step()`` on a full set of
gradients (its share of a step: Muon's Newton–Schulz runs once per optimizer step, so
``accumulation`` amortises it), one step with the auxiliary losses timed one by one, and one
step in which host-device synchronisations are counted (there should be none).
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence

import attrs
import torch

from prx_core import distributed as D
from prx_core.data.batcher import Batch
from prx_core.errors import UserError
from prx_core.measure.cost import DEFAULT_TEXT_DIM, peak_flops, phase_lines
from prx_core.measure.host_sync import host_sync_sites
from prx_core.plan import accumulation_steps, model_config, plan_phases
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry
from prx_core.techniques import TechniqueSet
from prx_core.text import load_text_encoder
from prx_core.train.nonfinite import step_unless
from prx_core.train.trainer import Trainer
from prx_core.types import Conditioning, Phase, RunContext

COMBOS = ("baseline", "each", "full")
"""``baseline``: no technique (dense, AdamW); ``each``: every technique that changes the step,
added alone (with what it requires); ``full``: the recipe's techniques."""

NO_STEP_EFFECT = frozenset({"guides_sampling", "changes_schedule"})
"""Effects that leave the training step as it is: such techniques get no row of their own."""


@attrs.frozen
class BenchShape:
    """Square images of ``resolution`` px, ``micro_batch`` per forward, ``accumulation`` forwards
    per optimizer step."""

    resolution: int
    micro_batch: int
    accumulation: int = 1

    @property
    def batch(self) -> int:
        """Images per optimizer step."""
        return self.micro_batch * self.accumulation


@attrs.frozen
class Combo:
    """One row of the bench: ``name`` ("baseline", "+tread", "full") and its techniques."""

    name: str
    plugins: tuple[str, ...]


@attrs.frozen
class BenchResult:
    """The timing of one combination; ``failed`` holds the reason when it could not run.

    ``step_ms`` is one optimizer step (``accumulation`` micro-batches); ``warmup_s`` the time
    from building the trainer to the end of the warm-up steps (compilation included);
    ``optimizer_ms`` each optimizer's ``step()`` alone; ``term_ms`` each auxiliary loss
    (forward, one micro-batch);
    ``host_syncs`` the synchronisations in one step and ``host_sync_sites`` where each happened
    (see :func:`prx_core.measure.host_sync.host_sync_sites`);
    ``peak_mem_mb`` the CUDA allocator's peak (None on other devices); ``mfu`` the denoiser's
    analytic training FLOPs per second over the card's peak (the plain reference step's
    convention; None without a peak); ``tflop_per_image`` counts everything (teachers, optimizer
    amortised over the step's images); ``ratio`` is images/s over the baseline's.
    """

    combo: str
    plugins: tuple[str, ...]
    resolution: int
    micro_batch: int
    accumulation: int
    device: str
    compile: bool
    step_ms: float = 0.0
    images_per_s: float = 0.0
    warmup_s: float = 0.0
    peak_mem_mb: float | None = None
    optimizer_ms: dict[str, float] = attrs.Factory(dict)
    term_ms: dict[str, float] = attrs.Factory(dict)
    host_syncs: int | None = None
    host_sync_sites: tuple[str, ...] = ()
    denoiser_tflop_per_image: float = 0.0
    tflop_per_image: float = 0.0
    mfu: float | None = None
    loss: float | None = None
    ratio: float | None = None
    failed: str | None = None

    def to_json(self) -> dict:
        """Plain data: a measured row without ``failed``, a failed row with only what identifies
        it and ``failed`` (the form ``prx_core.measure.cost.load_measurements`` expects)."""
        data = attrs.asdict(self)
        data["plugins"] = list(self.plugins)
        if self.failed is None:
            data.pop("failed")
            return data
        keep = ("combo", "plugins", "resolution", "micro_batch", "accumulation", "device", "compile", "failed")
        return {k: data[k] for k in keep}


def bench_variant(recipe: Recipe, plugins: Sequence[str]) -> Recipe:
    """``recipe`` with only ``plugins`` and random text embeddings of the recipe's width."""
    text = attrs.evolve(recipe.text, encoder="none", dim=recipe.text.dim or DEFAULT_TEXT_DIM)
    return attrs.evolve(recipe, plugins=sorted(set(plugins)), text=text)


def changes_step(effects: Sequence[str]) -> bool:
    """Whether a technique with these declared effects can change the training step's cost."""
    return not effects or any(e.split(":", 1)[0] not in NO_STEP_EFFECT for e in effects)


def plugin_combos(recipe: Recipe, registry: Registry, which: Sequence[str] = COMBOS) -> list[Combo]:
    """The rows ``which`` asks for, in table order, without two rows of the same techniques."""
    unknown = sorted(set(which) - set(COMBOS))
    if unknown:
        raise UserError(f"--combos: unknown {', '.join(unknown)}; choose from {', '.join(COMBOS)} (comma-separated).")
    full = tuple(sorted(set(recipe.plugins)))
    rows: list[Combo] = []
    if "baseline" in which:
        rows.append(Combo("baseline", ()))
    if "each" in which:
        for name in full:
            technique = registry.techniques.get(name)
            if technique is None or not changes_step(technique.effects):
                continue
            needed = {name}
            while True:  # what it requires, transitively
                more = {r for n in needed for r in registry.techniques[n].requires} - needed
                if not more:
                    break
                needed |= more
            rows.append(Combo(f"+{name}", tuple(sorted(needed))))
    if "full" in which:
        rows = [row for row in rows if row.plugins != full or row.name == "baseline"]
        rows.append(Combo("full", full))
    seen, unique = set(), []
    for row in rows:
        if row.plugins not in seen:
            seen.add(row.plugins)
            unique.append(row)
    return unique


def default_shape(recipe: Recipe, registry: Registry, resolution: int | None = None,
                  micro_batch: int | None = None, accumulation: int | None = None) -> BenchShape:
    """The first phase's shape on one device (resolution, micro-batch, accumulation up to its
    global batch), with any of the three overridden."""
    variant = bench_variant(recipe, recipe.plugins)
    techniques = TechniqueSet(variant, registry, RunContext(variant, variant.seed), model_config(variant))
    phases = plan_phases(variant, techniques)
    phase = phases[0] if resolution is None else next((p for p in phases if p.resolution == resolution), phases[0])
    if micro_batch is None:
        micro_batch = phase.batch_size // accumulation_steps(recipe, phase, 1)
    if accumulation is None:
        accumulation = max(1, phase.batch_size // micro_batch)
    shape = BenchShape(resolution or phase.resolution, micro_batch, accumulation)
    if min(shape.resolution, shape.micro_batch, shape.accumulation) < 1:
        raise UserError(f"the bench shape {shape} needs a resolution, micro-batch and accumulation of at least 1.")
    return shape


def synthetic_batch(shape: BenchShape, text_tokens: int, text_dim: int, device: torch.device, seed: int = 0) -> Batch:
    """Images in [-1, 1] and text embeddings with per-sample padding, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    b, side = shape.micro_batch, shape.resolution
    images = torch.rand(b, 3, side, side, generator=g) * 2 - 1
    lengths = torch.randint(1, text_tokens + 1, (b,), generator=g)
    mask = torch.arange(text_tokens) < lengths[:, None]
    tokens = torch.randn(b, text_tokens, text_dim, generator=g) * mask[..., None]
    ids = [f"bench:{i}" for i in range(b)]
    return Batch(images.to(device), [""] * b, ids, Conditioning(tokens.to(device), mask.to(device)))


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a CUDA device; nothing to wait for elsewhere), so
    that a clock read next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _phase(recipe: Recipe, techniques: TechniqueSet, shape: BenchShape) -> tuple[Phase, int]:
    """The recipe's phase at the bench resolution (so that its disabled techniques stay off),
    with the bench's batch; the first phase when none has that resolution."""
    phases = plan_phases(recipe, techniques)
    index = next((i for i, p in enumerate(phases) if p.resolution == shape.resolution), 0)
    return attrs.evolve(phases[index], resolution=shape.resolution, batch_size=shape.batch), index


def flops_per_image(techniques: TechniqueSet, trainer: Trainer, phase: Phase, text_tokens: int) -> tuple[float, float]:
    """(denoiser, all) analytic training FLOPs per image from the cost model and hooks."""
    lines = phase_lines(techniques, phase, text_tokens)
    return sum(x.flops for x in lines if x.category == "denoiser"), sum(x.flops for x in lines)


def time_optimizers(trainer: Trainer, batch: Batch, reps: int) -> dict[str, float]:
    """Milliseconds of each optimizer's ``step()`` on the gradients of one micro-batch."""
    trainer.micro_step(batch, 1.0, timed=False)
    keep = torch.zeros((), device=trainer.device)
    out = {}
    for label, opt in trainer.optimizers.items():
        step_unless(opt, keep)  # warm: state exists, kernels compiled
        synchronize(trainer.device)
        start = time.perf_counter()
        for _ in range(reps):
            step_unless(opt, keep)
        synchronize(trainer.device)
        out[label] = 1e3 * (time.perf_counter() - start) / reps
    for opt in trainer.optimizers.values():
        opt.zero_grad(set_to_none=True)
    return out


def bench_combo(recipe: Recipe, registry: Registry, combo: Combo, shape: BenchShape, *, steps: int, warmup: int,
                device: torch.device, peak_tflops: float | None = None, optimizer_reps: int = 3,
                log: Callable[[str], None] = lambda message: None) -> BenchResult:
    """Build a trainer for ``combo`` and time its step (see module doc)."""
    variant = bench_variant(recipe, combo.plugins)
    identity = dict(combo=combo.name, plugins=combo.plugins, resolution=shape.resolution,
                    micro_batch=shape.micro_batch, accumulation=shape.accumulation, device=str(device),
                    compile=variant.train.compile)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        context = RunContext(variant, variant.seed, 0, 1, device, log)
        techniques = TechniqueSet(variant, registry, context, model_config(variant))
        text = load_text_encoder(variant.text, device)
        trainer = Trainer(variant, techniques, text, D.DistInfo(0, 1, 0, "none", device))
    except UserError as error:
        release(device)
        return BenchResult(**identity, failed=str(error))
    phase, index = _phase(variant, techniques, shape)
    trainer.start_phase(phase, index)
    batch = synthetic_batch(shape, variant.text.max_length, text.dim, device, variant.seed)

    def batches() -> Iterator[Batch]:
        while True:
            yield batch

    stream = batches()
    for _ in range(warmup):
        trainer.train_step(stream, 1)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    start = time.perf_counter()
    for _ in range(steps):
        metrics = trainer.train_step(stream, shape.accumulation)
    synchronize(device)
    step_s = (time.perf_counter() - start) / steps
    loss = float(metrics["loss"])
    optimizer_ms = time_optimizers(trainer, batch, optimizer_reps)
    trainer.train_step(stream, 1, timed=True)
    term_ms = dict(trainer.term_ms)
    sync_sites = host_sync_sites(lambda: trainer.train_step(stream, 1), device, variant.train.compile)
    denoiser_flops, all_flops = flops_per_image(techniques, trainer, phase, variant.text.max_length)
    images_per_s = shape.batch / step_s
    peak = peak_tflops if peak_tflops is not None else (peak_flops("h100") / 1e12 if cuda else None)
    result = BenchResult(
        **identity, step_ms=1e3 * step_s, images_per_s=images_per_s, warmup_s=warmup_s,
        peak_mem_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        optimizer_ms=optimizer_ms, term_ms=term_ms,
        host_syncs=len(sync_sites) if sync_sites is not None else None, host_sync_sites=sync_sites or (),
        denoiser_tflop_per_image=denoiser_flops / 1e12,
        tflop_per_image=all_flops / 1e12, mfu=denoiser_flops * images_per_s / (peak * 1e12) if peak else None,
        loss=loss,
    )
    del trainer, techniques, text, batch, stream, metrics
    release(device)
    return result


def release(device: torch.device) -> None:
    """Free what the last trainer held: compiled graphs, cached allocator blocks."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def with_ratios(results: Sequence[BenchResult]) -> list[BenchResult]:
    """Each result with ``ratio`` = its images/s over the baseline row's (when one ran)."""
    base = next((r for r in results if r.combo == "baseline" and r.failed is None and r.images_per_s), None)
    if base is None:
        return list(results)
    return [r if r.failed else attrs.evolve(r, ratio=r.images_per_s / base.images_per_s) for r in results]


def run_bench(recipe: Recipe, registry: Registry, combos: Sequence[Combo], shape: BenchShape, *, steps: int,
              warmup: int, device: torch.device, peak_tflops: float | None = None,
              log: Callable[[str], None] = lambda message: None,
              done: Callable[[BenchResult], None] = lambda result: None) -> list[BenchResult]:
    """Time every combination in order (``done`` is called after each); ratios to the baseline."""
    if steps < 1 or warmup < 1:
        raise UserError(f"--steps ({steps}) and --warmup ({warmup}) must be at least 1: the first step "
                        "compiles and creates the optimizer state, and is never timed.")
    results = []
    for combo in combos:
        result = bench_combo(recipe, registry, combo, shape, steps=steps, warmup=warmup, device=device,
                             peak_tflops=peak_tflops, log=log)
        results.append(result)
        done(result)
    return with_ratios(results)
