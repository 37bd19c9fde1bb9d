"""The recipe: one attrs class per TOML table of the core. Technique tables are structured into
each technique's own config class and kept in ``Recipe.techniques``.

Defaults are the PRX speedrun's numbers (docs/recipe.md); the quickstart overrides the sizes.
Every field declares what its value may be (:func:`~prx_core.recipe.constraints.setting`) and
each class its cross-field rules (``RULES``); the recipe loader checks them all before anything
is built, and ``prx recipe show --constraints`` prints them.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
import torch

from prx_core.data.config import DataConfig
from prx_core.model.config import INIT_SCHEMES, PRESETS, DenoiserConfig
from prx_core.recipe.constraints import (
    DISTINCT,
    NON_EMPTY_ARRAY,
    NON_EMPTY_STRING,
    Check,
    OneOf,
    Rule,
    at_least,
    between,
    each,
    greater_than,
    setting,
)


@attrs.define(kw_only=True)
class ModelConfig:
    """``preset`` names a size from ``prx_core.model.config.PRESETS``; any field set here
    overrides the preset's value. The text width comes from the text encoder.

    ``init``: where the denoiser's weights start. ``"pytorch"`` (PRX): PyTorch's default Linear
    init; ``"xavier"``: Xavier-uniform with zero biases and N(0, 0.02) for the time MLP; both zero
    the adaLN modulations and the final layer. ``"diffusers:PATH_OR_ID"``: the weights of a
    diffusers ``PRXTransformer2DModel`` (a local folder or a Hub id, e.g. one written by ``prx
    export --format diffusers``), to fine-tune it; its shape must equal this table's, which is
    checked before the run folder is made."""

    preset: str = setting("prx-1.2b", OneOf(tuple(PRESETS)))
    init: str = setting("pytorch", Check(lambda value: value in INIT_SCHEMES or value.startswith("diffusers:"),
                                         "one of " + ", ".join(f'"{s}"' for s in INIT_SCHEMES)
                                         + ' or "diffusers:PATH_OR_ID"'))
    hidden: int | None = setting(None, at_least(1))
    depth: int | None = setting(None, at_least(1))
    heads: int | None = setting(None, at_least(1))
    mlp_ratio: float | None = setting(None, greater_than(0))
    patch: int | None = setting(None, at_least(1))
    bottleneck: int | None = setting(None, at_least(1))
    activation_checkpointing: bool = False

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("hidden", "heads", "preset"), "hidden is a multiple of heads, and hidden / heads a multiple of 4",
             lambda c: c.architecture_problem()),
    )

    @property
    def init_scheme(self) -> str:
        """The scheme the denoiser is built with (weights loaded from a checkpoint replace it)."""
        return self.init if self.init in INIT_SCHEMES else "pytorch"

    def sizes(self) -> dict[str, Any]:
        """The preset's sizes with the fields set here applied."""
        fields = dict(PRESETS[self.preset])
        for name in ("hidden", "depth", "heads", "mlp_ratio", "patch", "bottleneck"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields

    def resolve(self, text_dim: int) -> DenoiserConfig:
        return DenoiserConfig(**self.sizes(), text_dim=text_dim)

    def architecture_problem(self) -> str | None:
        """Why these sizes make no model (attention heads that do not split the width evenly, or
        heads too narrow for 2-D RoPE), or None."""
        sizes = self.sizes()
        hidden, heads = sizes["hidden"], sizes["heads"]
        given = f"(preset {self.preset} with this table's values)"
        if hidden % heads:
            return f"hidden {hidden} is not a multiple of heads {heads} {given}; change hidden or heads."
        if (hidden // heads) % 4:
            return (f"hidden {hidden} / heads {heads} makes heads of width {hidden // heads} {given}; 2-D RoPE needs "
                    "a multiple of 4: change hidden or heads.")
        return None


@attrs.define(kw_only=True)
class TextConfig:
    """``encoder``: a Hugging Face id, a local directory, ``package:NAME/SUBDIR`` for weights
    shipped inside an installed Python package, or ``"none"`` (fixed random embeddings, for
    benchmarks). ``dim``: the encoder's output width; needed by ``--dry-run`` and ``"none"``,
    checked against the encoder when it loads. ``dtype``: the encoder's compute precision
    ("auto": bf16 on GPU, fp32 on CPU). ``autocast``: false (PRX) converts the encoder's weights
    to ``dtype`` and runs it without autocast; true keeps fp32 weights under autocast to
    ``dtype``. ``clean``: "deepfloyd" (PRX) cleans every caption before tokenising
    (:mod:`prx_core.caption_cleaning`), "none" tokenises it as written."""

    encoder: str = setting("google/t5gemma-2b-2b-ul2", NON_EMPTY_STRING)
    max_length: int = setting(256, at_least(1))
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    autocast: bool = False
    clean: Literal["deepfloyd", "none"] = "deepfloyd"
    dim: int | None = setting(None, at_least(1))

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("dim", "encoder"), 'encoder = "none" needs dim',
             lambda c: "random embeddings need their width in [text] dim: set it, e.g. dim = 2304."
             if c.encoder == "none" and c.dim is None else None),
    )


@attrs.define(kw_only=True)
class ObjectiveConfig:
    """x-prediction with the loss in v-space (docs/recipe.md §2)."""

    time_sampling: Literal["shifted_logit_normal", "logit_normal"] = "shifted_logit_normal"
    shift: float = setting(3.0, greater_than(0))
    logit_mean: float = 0.0
    logit_std: float = setting(1.0, at_least(0))
    uniform_fraction: float = setting(0.1, between(0, 1))
    t_min: float = setting(1e-3, between(0, 1, high_strict=True))
    t_max: float = setting(1.0, between(0, 1, low_strict=True))
    loss_t_floor: float = setting(0.05, between(0, 1, low_strict=True))
    caption_dropout: float = setting(0.1, between(0, 1))

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("t_min", "t_max"), "t_min < t_max",
             lambda c: None if c.t_min < c.t_max else
             f"must be below t_max = {c.t_max} (noise levels are drawn from [t_min, t_max))."),
    )


@attrs.define(kw_only=True)
class OptimConfig:
    """The default optimizer (AdamW) for parameters no technique claims, the LR schedule,
    clipping and EMA."""

    lr: float = setting(1e-4, at_least(0))
    betas: tuple[float, float] = setting((0.9, 0.95), each(between(0, 1, high_strict=True)))
    eps: float = setting(1e-8, greater_than(0))
    weight_decay: float = setting(0.0, at_least(0))
    warmup_steps: int = setting(1000, at_least(0))
    grad_clip: float = setting(0.2, greater_than(0))
    ema_decay: float = setting(0.999, between(0, 1))
    ema_every: int = setting(10, at_least(1))


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def is_device_name(name: str) -> bool:
    """"auto", or a torch device string of a known type: "cpu", "cuda", "cuda:1", "mps"."""
    if name == "auto":
        return True
    try:
        return torch.device(name).type in DEVICE_TYPES
    except (RuntimeError, ValueError):
        return False


@attrs.define(kw_only=True)
class TrainConfig:
    """``batch_size`` is the global batch; ``micro_batch_size`` the largest per-device batch
    (default: global / processes), gradient accumulation makes up the rest. ``max_wall_s`` stops training
    (with checkpoint, samples and evaluation) once that many seconds have passed, for
    equal-wall-clock ablations. ``precision``: "auto" is bf16 autocast on GPU, fp32 on CPU.
    ``phase_steps``: the steps of each phase of the schedule, in order, in place of the
    schedule's own (``prx ablate --budget bench:SECONDS`` sets it to what each variant's
    measured throughput buys); a recipe without a schedule has one phase of ``steps``.
    ``sample_every = 0`` writes only the final grid.

    Divergence (see prx_core.train.divergence): a run stops, without writing a checkpoint from the
    bad state, when ``max_nonfinite_in_row`` optimizer steps in a row had a non-finite loss or
    gradient, when the weights or their EMA stop being finite, when one optimizer step multiplies
    the weights' norm by more than ``max_weight_growth`` (0: never), or when the diffusion loss
    has stayed above ``spike_factor`` times its running median (over the last ``spike_window`` steps of the
    phase) for ``spike_steps`` steps in a row (0: never). A checkpoint falling due while the loss
    is above that line waits until it is below again."""

    steps: int = setting(120_000, at_least(1))
    batch_size: int = setting(1024, at_least(1))
    micro_batch_size: int | None = setting(None, at_least(1))
    device: str = setting("auto", Check(is_device_name, '"auto" or a device name such as "cpu", "cuda", "cuda:1" '
                                                         'or "mps"'))
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    log_every: int = setting(10, at_least(1))
    sample_every: int = setting(1000, at_least(0))
    checkpoint_every: int = setting(1000, at_least(1))
    keep_checkpoints: int = setting(2, at_least(1))
    max_nonfinite_in_row: int = setting(5, at_least(1))
    max_weight_growth: float = setting(2.0, Check(lambda v: v == 0 or v > 1, "0 (never) or a number > 1"))
    spike_factor: float = setting(3.0, greater_than(1))
    spike_window: int = setting(100, at_least(2))
    spike_steps: int = setting(20, at_least(0))
    max_wall_s: float | None = setting(None, greater_than(0))
    phase_steps: list[int] | None = setting(None, NON_EMPTY_ARRAY, each(at_least(1)))
    runs_dir: str = setting("runs", NON_EMPTY_STRING)


@attrs.define(kw_only=True)
class SampleConfig:
    sampler: Literal["euler", "heun"] = "euler"
    steps: int = setting(50, at_least(1))
    preview_steps: int = setting(20, at_least(1))
    shift: float = setting(3.0, greater_than(0))
    num_prompts: int = setting(16, at_least(1))
    columns: int = setting(4, at_least(1))
    seed: int = setting(1234, at_least(0))


DISTRIBUTION_METRICS = ("efficientnet-lite0", "pixels", "inception", "clip")
LOCATED_METRICS = ("inception", "clip")
"""The metrics whose network can be named by a location (``inception:PATH``, ``clip:ID_OR_DIR``)."""


def is_metric_spec(spec: str) -> bool:
    """``efficientnet-lite0``, ``pixels``, ``inception`` or ``inception:PATH``, ``clip`` or
    ``clip:ID_OR_DIR``."""
    kind, colon, location = spec.partition(":")
    return kind in DISTRIBUTION_METRICS and not (kind not in LOCATED_METRICS and colon)


@attrs.define(kw_only=True)
class EvalConfig:
    """Prompt-following evaluation on held-out scene prompts (see prx_core.evaluation), and
    distribution metrics of the same images against the scene generator's renders of the same
    prompts (``"efficientnet-lite0"``: Fréchet distance on offline ImageNet features;
    ``"pixels"``: on 8 x 8 colour thumbnails, which no technique trains against;
    ``"inception"``: FID and ``"clip"``: CMMD where those weights are available).

    ``every``: also evaluate prompt following every that many steps during training (0: only at
    the end), one row per evaluation in ``evals.jsonl`` with the step and the training clock
    (evaluation time is not counted in it): quality against training time.

    ``prompts``: ``"held-out"`` (the colour x shape pairs training never shows: generalisation to
    new combinations) or ``"training"`` (pairs training shows): the two side by side tell an
    attribute the model cannot render from one it cannot combine."""

    num_prompts: int = setting(64, at_least(1))
    steps: int = setting(50, at_least(1))  # PRX samples with 50 Euler steps
    seed: int = setting(4321, at_least(0))
    distribution_metrics: list[str] = setting(
        attrs.Factory(lambda: ["efficientnet-lite0"]),
        each(Check(is_metric_spec, '"efficientnet-lite0", "pixels", "inception[:PATH]" or "clip[:ID_OR_DIR]"')),
        DISTINCT)
    every: int = setting(0, at_least(0))
    prompts: Literal["held-out", "training"] = "held-out"

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("num_prompts", "distribution_metrics"), "num_prompts >= 2 when distribution_metrics is not empty",
             lambda c: "a distribution metric compares image sets and needs at least 2 prompts; raise num_prompts "
             "or set distribution_metrics = []." if c.distribution_metrics and c.num_prompts < 2 else None),
    )


@attrs.define(kw_only=True)
class DistributedConfig:
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"


def _resolution_fits_patch(recipe: Recipe) -> str | None:
    patch = recipe.model.sizes()["patch"]
    if recipe.data.resolution % patch == 0:
        return None
    return (f"not a multiple of the model's patch ({patch} px, from [model] preset "
            f"{recipe.model.preset} or patch); use e.g. {max(patch, recipe.data.resolution // patch * patch)}.")


@attrs.define(kw_only=True)
class Recipe:
    """The whole recipe. ``name`` is the run folder's name under ``[train] runs_dir``."""

    name: str = setting("run", Check(lambda n: bool(n) and n not in (".", "..") and not set(n) & set("/\\"),
                                     "a folder name (not empty, no '/' or '\\', not '.' or '..')"))
    seed: int = setting(0, at_least(0))
    plugins: list[str] = setting(attrs.Factory(list), DISTINCT)
    model: ModelConfig = attrs.Factory(ModelConfig)
    text: TextConfig = attrs.Factory(TextConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    objective: ObjectiveConfig = attrs.Factory(ObjectiveConfig)
    optim: OptimConfig = attrs.Factory(OptimConfig)
    train: TrainConfig = attrs.Factory(TrainConfig)
    sample: SampleConfig = attrs.Factory(SampleConfig)
    eval: EvalConfig = attrs.Factory(EvalConfig)
    distributed: DistributedConfig = attrs.Factory(DistributedConfig)
    techniques: dict[str, Any] = attrs.Factory(dict)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(("data.resolution", "model.patch", "model.preset"), "[data] resolution is a multiple of the model's patch",
             _resolution_fits_patch),
    )


CORE_TABLES = ("model", "text", "data", "objective", "optim", "train", "sample", "eval", "distributed")
CORE_KEYS = ("name", "seed", "plugins", "extends")
