"""The cost model: training FLOPs per image per phase, projected throughput, GPU-hours and dollars.

FLOPs come from the analytic denoiser count (:mod:`prx_core.model.flops`) plus every active
technique's ``prx_cost`` terms. Throughput is ``MFU x peak / FLOPs per image``, where the MFU is
assumed (``--mfu``) or derived from a measurement (``--measured BENCH.json``). MFU here counts
*all* training FLOPs (denoiser, teachers, optimizer), so an assumed MFU is the fraction of the
card's bf16 dense peak the whole step achieves; multi-GPU scaling is taken as linear (any
communication loss belongs in the MFU).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from rich.console import Group
from rich.table import Table

from prx_core.errors import PluginError, UserError
from prx_core.model.flops import tokens_for, train_flops_per_image
from prx_core.plan import plan_phases
from prx_core.types import CostTerm, Phase

PEAK_BF16_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}
"""Dense bf16 tensor-core peak per GPU (no sparsity), TFLOP/s."""

DEFAULT_MFU = 0.35
"""Assumed when nothing is measured: the reference step reaches 33-37 % with ``torch.compile``."""

DEFAULT_TEXT_DIM = 2304
"""The speedrun's text width (T5Gemma-2B), used when neither the caller nor ``[text] dim`` gives
one. The text projection is under 0.5 % of the FLOPs at 512 px, so the choice barely matters."""

CATEGORIES = ("denoiser", "teacher", "optimizer")


@attrs.frozen
class ReferenceRun:
    """Photoroom's PRX speedrun (docs/recipe.md §8-9): 32 H200 for 24 h at about $2/GPU-hour."""

    gpus: int = 32
    gpu: str = "h200"
    hours: float = 24.0
    price_per_gpu_hour: float = 2.0
    images: float = 100_000 * 1024 + 20_000 * 512

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.hours

    @property
    def dollars(self) -> float:
        return self.gpu_hours * self.price_per_gpu_hour

    @property
    def images_per_s_per_gpu(self) -> float:
        return self.images / (self.hours * 3600 * self.gpus)


REFERENCE = ReferenceRun()


@attrs.frozen
class CostLine:
    """One contribution to the FLOPs per image: ``source`` is "core" or the technique's name.

    ``flops`` is per image (per-step terms are already divided by the global batch);
    ``raw_flops`` and ``per`` keep what the technique reported.
    """

    source: str
    name: str
    category: str
    flops: float
    raw_flops: float
    per: str


@attrs.frozen
class PhaseCost:
    name: str
    resolution: int
    image_tokens: int
    text_tokens: int
    batch_size: int
    steps: int
    lines: tuple[CostLine, ...]
    mfu: float
    mfu_source: str
    peak_flops: float
    gpus: int

    @property
    def flops_per_image(self) -> float:
        return sum(line.flops for line in self.lines)

    def flops_in(self, category: str) -> float:
        return sum(line.flops for line in self.lines if line.category == category)

    @property
    def images(self) -> float:
        return float(self.steps * self.batch_size)

    @property
    def images_per_s_per_gpu(self) -> float:
        return self.mfu * self.peak_flops / self.flops_per_image

    @property
    def wall_s(self) -> float:
        return self.images / (self.images_per_s_per_gpu * self.gpus)

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.gpus / 3600


@attrs.frozen
class CostReport:
    """What a recipe costs on ``gpus`` GPUs of kind ``gpu`` at ``price_per_gpu_hour``."""

    recipe_name: str
    gpu: str
    gpus: int
    price_per_gpu_hour: float
    text_dim: int
    phases: tuple[PhaseCost, ...]
    reference: ReferenceRun = REFERENCE

    @property
    def images(self) -> float:
        return sum(p.images for p in self.phases)

    @property
    def wall_hours(self) -> float:
        return sum(p.wall_s for p in self.phases) / 3600

    @property
    def gpu_hours(self) -> float:
        return sum(p.gpu_hours for p in self.phases)

    @property
    def dollars(self) -> float:
        return self.gpu_hours * self.price_per_gpu_hour

    @property
    def total_flops(self) -> float:
        return sum(p.images * p.flops_per_image for p in self.phases)

    @property
    def images_per_s_per_gpu(self) -> float:
        return self.images / (self.wall_hours * 3600 * self.gpus)

    @property
    def mfu(self) -> float:
        """Whole-run MFU: all training FLOPs over the GPU-seconds at peak."""
        return self.total_flops / (self.gpu_hours * 3600 * peak_flops(self.gpu))

    @property
    def reference_mfu(self) -> float:
        """The reference run's MFU if each of its images cost this recipe's mean FLOPs per image."""
        ref = self.reference
        return self.total_flops / self.images * ref.images / (ref.gpu_hours * 3600 * peak_flops(ref.gpu))


@attrs.frozen
class Measurement:
    """One measured throughput: images/s per GPU at a resolution, for a plugin set (None: any)."""

    resolution: int
    images_per_s: float
    plugins: frozenset[str] | None
    source: str


def peak_flops(gpu: str) -> float:
    """Peak dense bf16 FLOP/s of one GPU of kind ``gpu``."""
    try:
        return PEAK_BF16_TFLOPS[gpu.lower()] * 1e12
    except KeyError:
        known = ", ".join(sorted(PEAK_BF16_TFLOPS))
        raise UserError(f"unknown GPU kind '{gpu}': choose one of {known}.") from None


def _technique_lines(technique_set: Any, model_config: Any, phase: Phase, text_tokens: int) -> list[CostLine]:
    lines = []
    for name, terms in technique_set.call("prx_cost", phase=phase, model_config=model_config,
                                           text_tokens=text_tokens):
        for term in terms or ():
            lines.append(cost_line(name, term, phase.batch_size))
    return sorted(lines, key=lambda line: (line.source, line.name))


def cost_line(source: str, term: CostTerm, global_batch: int) -> CostLine:
    """Turn a technique's :class:`CostTerm` into FLOPs per image.

    Optimizer terms are per optimizer step (CostTerm's contract), as is any term with
    ``per="step"``; both are divided by the global batch.
    """
    if term.category not in CATEGORIES:
        raise PluginError(
            f"technique '{source}' reported cost term '{term.name}' in category '{term.category}'; "
            f"the cost model knows {', '.join(CATEGORIES)}. Fix the plugin's prx_cost hook."
        )
    if term.per not in ("image", "step"):
        raise PluginError(
            f"technique '{source}' reported cost term '{term.name}' per '{term.per}'; use per='image' or "
            f"per='step' in its prx_cost hook."
        )
    per_step = term.category == "optimizer" or term.per == "step"
    flops = term.flops / global_batch if per_step else term.flops
    return CostLine(source, term.name, term.category, flops, term.flops, "step" if per_step else "image")


def estimate_cost(
    recipe: Any,
    technique_set: Any,
    gpu: str = "h100",
    gpus: int = 1,
    price: float = 2.0,
    mfu: float | None = None,
    measured: Iterable[Measurement] = (),
) -> CostReport:
    """Project the FLOPs, throughput, GPU-hours and dollars of training ``recipe``.

    ``technique_set`` is the run's :class:`prx_core.techniques.TechniqueSet` (anything with its
    ``names``, ``model_config`` and ``call(hook, phase=None, **kw) -> [(name, result)]``); the
    text width of the estimate is its model's. ``mfu`` is used for every phase
    unless ``measured`` holds a throughput for the phase (see :func:`load_measurements`); with
    neither, :data:`DEFAULT_MFU` is assumed.
    """
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1 (got {gpus}).")
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu is a fraction of the peak in (0, 1] (got {mfu}); e.g. 0.35 for 35 %.")
    peak = peak_flops(gpu)
    model_config = technique_set.model_config
    text_tokens = recipe.text.max_length
    measured = list(measured)
    phases = []
    for phase in plan_phases(recipe, technique_set):

        def flops_at(resolution: int, phase: Phase = phase) -> float:
            lines = phase_lines(technique_set, attrs.evolve(phase, resolution=resolution), text_tokens)
            return sum(line.flops for line in lines)

        lines = phase_lines(technique_set, phase, text_tokens)
        phase_mfu, source = _phase_mfu(phase, _active(technique_set, phase), flops_at, peak, mfu, measured)
        image_tokens = tokens_for(phase.resolution, model_config.patch)
        phases.append(PhaseCost(phase.name, phase.resolution, image_tokens, text_tokens, phase.batch_size,
                                phase.steps, lines, phase_mfu, source, peak, gpus))
    return CostReport(recipe.name, gpu.lower(), gpus, price, model_config.text_dim, tuple(phases))


def phase_lines(technique_set: Any, phase: Phase, text_tokens: int) -> tuple[CostLine, ...]:
    """The dense denoiser's FLOPs per image plus every active technique's terms in ``phase``, for
    the technique set's model."""
    model_config = technique_set.model_config
    image_tokens = tokens_for(phase.resolution, model_config.patch)
    dense = train_flops_per_image(model_config, image_tokens, text_tokens)
    lines = (CostLine("core", "denoiser (dense)", "denoiser", dense, dense, "image"),
             *_technique_lines(technique_set, model_config, phase, text_tokens))
    total = sum(line.flops for line in lines)
    if total <= 0:
        raise PluginError(f"the cost terms of phase '{phase.name}' at {phase.resolution}px sum to {total:.3g} "
                          f"FLOPs per image: a technique's prx_cost removes more than the denoiser costs.")
    return lines


def _active(technique_set: Any, phase: Phase) -> frozenset[str]:
    return frozenset(technique_set.names) - frozenset(phase.disabled)


def _phase_mfu(phase: Phase, active: frozenset[str], flops_at: Callable[[int], float], peak: float,
               mfu: float | None, measured: list[Measurement]) -> tuple[float, str]:
    """MFU of a phase: measured at its resolution if possible, else measured at the nearest
    resolution (same plugin set), else the given or default MFU."""
    usable = [m for m in measured if m.plugins is None or m.plugins == active]
    if measured and not usable:
        sets = sorted({",".join(sorted(m.plugins)) or "(none)" for m in measured if m.plugins is not None})
        raise UserError(
            f"no measurement matches phase '{phase.name}' (plugins {','.join(sorted(active)) or '(none)'}); "
            f"the measurement file has plugin sets {'; '.join(sets)}. Run `prx bench` on this recipe."
        )
    if usable:
        nearest = min(usable, key=lambda m: abs(m.resolution - phase.resolution))
        same = [m for m in usable if m.resolution == nearest.resolution]
        images_per_s = sum(m.images_per_s for m in same) / len(same)
        measured_mfu = images_per_s * flops_at(nearest.resolution) / peak
        if nearest.resolution == phase.resolution:
            return measured_mfu, f"measured ({nearest.source})"
        # Another resolution's throughput says little about this one's; its MFU transfers better.
        return measured_mfu, f"MFU measured at {nearest.resolution}px ({nearest.source})"
    if mfu is not None:
        return mfu, "given"
    return DEFAULT_MFU, "assumed"


def load_measurements(path: str | Path) -> list[Measurement]:
    """Read throughput measurements: ``prx bench`` output ({"results": [...]}), a JSON list, or
    JSON lines such as the reference step's (``res``, ``img_per_s``). Each record needs a
    resolution (``resolution`` or ``res``) and images/s per GPU (``images_per_s`` or
    ``img_per_s``); ``plugins`` (a list) restricts it to that plugin set."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read the measurement file {path}: {err.strerror}.") from None
    try:
        data = json.loads(text)
        records = data.get("results", [data]) if isinstance(data, dict) else data
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is neither JSON nor JSON lines (line {err.lineno}: {err.msg}).") from None
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "failed" in record:
            continue
        resolution = record.get("resolution", record.get("res"))
        images_per_s = record.get("images_per_s", record.get("img_per_s"))
        if resolution is None or images_per_s is None:
            raise UserError(f"{path}, record {i}: needs 'resolution' (or 'res') and 'images_per_s' "
                            f"(or 'img_per_s'); it has {', '.join(sorted(record))}.")
        plugins = record.get("plugins")
        out.append(Measurement(int(resolution), float(images_per_s),
                               None if plugins is None else frozenset(plugins), f"{path.name}#{i}"))
    if not out:
        raise UserError(f"{path} holds no throughput measurement.")
    return out


FLOP_UNITS = ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP"), (1.0, "FLOP"))
TOTAL_UNITS = ((1e18, "EFLOP"), (1e15, "PFLOP"), *FLOP_UNITS)


def flop_unit(report: CostReport) -> tuple[float, str]:
    """(scale, name) of the largest unit in which the costliest phase is at least 0.1 per image:
    TFLOP for the speedrun, GFLOP or MFLOP for the tiny models of the quickstart and the tests, so
    that three decimals show every term."""
    largest = max((p.flops_per_image for p in report.phases), default=0.0)
    return next(((scale, name) for scale, name in FLOP_UNITS if largest >= 0.1 * scale), FLOP_UNITS[-1])


def format_flops(flops: float, scale: float) -> str:
    """``flops`` in the unit ``scale`` with three decimals, or two significant digits when three
    decimals would show a non-zero term as 0.000."""
    value = flops / scale
    return f"{value:.3f}" if value == 0 or abs(value) >= 5e-4 else f"{value:.2g}"


def render_cost_report(report: CostReport) -> Group:
    """Rich tables: per phase, per cost term, and the totals against the reference run."""
    phases = Table(title=f"Cost of '{report.recipe_name}' on {report.gpus} x {report.gpu.upper()} "
                         f"at ${report.price_per_gpu_hour:g}/GPU-hour", title_justify="left")
    scale, unit = flop_unit(report)

    def _t(flops: float) -> str:
        return format_flops(flops, scale)

    for column in ("phase", "res", "img tok", "txt tok", "global batch", "steps", f"{unit}/img denoiser",
                   "teacher", "optimizer", "total", "MFU", "img/s/GPU", "wall h", "GPU-h", "$"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for p in report.phases:
        phases.add_row(p.name, str(p.resolution), str(p.image_tokens), str(p.text_tokens), str(p.batch_size),
                       f"{p.steps:,}", _t(p.flops_in("denoiser")), _t(p.flops_in("teacher")),
                       _t(p.flops_in("optimizer")), _t(p.flops_per_image), f"{p.mfu:.1%} {p.mfu_source}",
                       f"{p.images_per_s_per_gpu:.1f}", f"{p.wall_s / 3600:.2f}", f"{p.gpu_hours:.1f}",
                       f"{p.gpu_hours * report.price_per_gpu_hour:,.0f}")

    terms = Table(title=f"Cost terms ({unit} per image; per-step terms divided by the global batch)",
                  title_justify="left")
    for column in ("source", "term", "category", *(p.name for p in report.phases)):
        terms.add_column(column, justify="right" if column in {p.name for p in report.phases} else "left")
    keys = sorted({(line.source, line.name, line.category) for p in report.phases for line in p.lines},
                  key=lambda k: (k[0] != "core", k))
    for key in keys:
        cells = []
        for p in report.phases:
            found = [line.flops for line in p.lines if (line.source, line.name, line.category) == key]
            cells.append(_t(sum(found)) if found else "-")
        terms.add_row(*key, *cells)

    ref = report.reference
    totals = Table(title="Totals against the reference run (docs/recipe.md §8-9)", title_justify="left")
    for column in ("", "this recipe", f"reference ({ref.gpus} x {ref.gpu.upper()}, {ref.hours:g} h)", "ratio"):
        totals.add_column(column, justify="left" if not column else "right")
    rows = [
        ("images (M)", report.images / 1e6, ref.images / 1e6, "{:.1f}"),
        ("img/s per GPU", report.images_per_s_per_gpu, ref.images_per_s_per_gpu, "{:.1f}"),
        ("MFU (reference: at this recipe's FLOPs/image)", report.mfu, report.reference_mfu, "{:.1%}"),
        ("wall-clock hours", report.wall_hours, ref.hours, "{:.1f}"),
        ("GPU-hours", report.gpu_hours, ref.gpu_hours, "{:,.0f}"),
        ("dollars", report.dollars, ref.dollars, "{:,.0f}"),
    ]
    for label, ours, theirs, fmt in rows:
        totals.add_row(label, fmt.format(ours), fmt.format(theirs), f"{ours / theirs:.2f}x")
    total_scale, total_unit = next(((scale, name) for scale, name in TOTAL_UNITS if report.total_flops >= scale),
                                   TOTAL_UNITS[-1])
    totals.caption = (f"total {report.total_flops / total_scale:.1f} {total_unit}; reference dollars at "
                      f"${ref.price_per_gpu_hour:g}/GPU-hour; text width {report.text_dim}")
    return Group(phases, terms, totals)
