"""The recipe: one attrs class per TOML table of the core. Technique tables are structured into
each technique's own config class and kept in ``Recipe.techniques``.

Defaults are the PRX speedrun's numbers (docs/recipe.md); the quickstart overrides the sizes.
"""
from __future__ import annotations

from typing import Any, Literal

import attrs

from prx_core.data.config import DataConfig
from prx_core.model.config import INIT_SCHEMES, PRESETS, DenoiserConfig


def _check_init(instance: Any, attribute: Any, value: str) -> None:
    if value not in INIT_SCHEMES and not value.startswith("diffusers:"):
        raise ValueError(f"init = {value!r}: write one of {', '.join(repr(s) for s in INIT_SCHEMES)} or "
                         "'diffusers:PATH_OR_ID'")


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

    preset: str = "prx-1.2b"
    init: str = attrs.field(default="pytorch", validator=_check_init)
    hidden: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    patch: int | None = None
    bottleneck: int | None = None
    activation_checkpointing: bool = False

    @property
    def init_scheme(self) -> str:
        """The scheme the denoiser is built with (weights loaded from a checkpoint replace it)."""
        return self.init if self.init in INIT_SCHEMES else "pytorch"

    def resolve(self, text_dim: int) -> DenoiserConfig:
        fields = dict(PRESETS[self.preset])
        for name in ("hidden", "depth", "heads", "mlp_ratio", "patch", "bottleneck"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return DenoiserConfig(**fields, text_dim=text_dim)


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

    encoder: str = "google/t5gemma-2b-2b-ul2"
    max_length: int = 256
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    autocast: bool = False
    clean: Literal["deepfloyd", "none"] = "deepfloyd"
    dim: int | None = None


@attrs.define(kw_only=True)
class ObjectiveConfig:
    """x-prediction with the loss in v-space (docs/recipe.md §2)."""

    time_sampling: Literal["shifted_logit_normal", "logit_normal"] = "shifted_logit_normal"
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    uniform_fraction: float = 0.1
    t_min: float = 1e-3
    t_max: float = 1.0
    loss_t_floor: float = 0.05
    caption_dropout: float = 0.1


@attrs.define(kw_only=True)
class OptimConfig:
    """The default optimizer (AdamW) for parameters no technique claims, the LR schedule,
    clipping and EMA."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    grad_clip: float = 0.2
    ema_decay: float = 0.999
    ema_every: int = 10


@attrs.define(kw_only=True)
class TrainConfig:
    """``batch_size`` is the global batch; ``micro_batch_size`` the largest per-device batch
    (default: global / processes), gradient accumulation makes up the rest. ``max_wall_s`` stops training
    (with checkpoint, samples and evaluation) once that many seconds have passed, for
    equal-wall-clock ablations. ``precision``: "auto" is bf16 autocast on GPU, fp32 on CPU.
    ``phase_steps``: the steps of each phase of the schedule, in order, in place of the
    schedule's own (``prx ablate --budget bench:SECONDS`` sets it to what each variant's
    measured throughput buys); a recipe without a schedule has one phase of ``steps``."""

    steps: int = 120_000
    batch_size: int = 1024
    micro_batch_size: int | None = None
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    log_every: int = 10
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    max_nonfinite_in_row: int = 5
    max_wall_s: float | None = None
    phase_steps: list[int] | None = None
    runs_dir: str = "runs"


@attrs.define(kw_only=True)
class SampleConfig:
    sampler: Literal["euler", "heun"] = "euler"
    steps: int = 50
    preview_steps: int = 20
    shift: float = 3.0
    num_prompts: int = 16
    columns: int = 4
    seed: int = 1234


@attrs.define(kw_only=True)
class EvalConfig:
    """Prompt-following evaluation on held-out scene prompts (see prx_core.evaluation), and
    distribution metrics of the same images against the scene generator's renders of the same
    prompts (``"efficientnet-lite0"``: Fréchet distance on offline ImageNet features;
    ``"pixels"``: on 8 x 8 colour thumbnails, which no technique trains against;
    ``"inception"``: FID and ``"clip"``: CMMD where those weights are available).

    ``every``: also evaluate prompt following every that many steps during training (0: only at
    the end), one row per evaluation in ``evals.jsonl`` with the step and the training clock
    (evaluation time is not counted in it): quality against training time."""

    num_prompts: int = 64
    steps: int = 50  # PRX samples with 50 Euler steps
    seed: int = 4321
    distribution_metrics: list[str] = attrs.Factory(lambda: ["efficientnet-lite0"])
    every: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.define(kw_only=True)
class DistributedConfig:
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"


@attrs.define(kw_only=True)
class Recipe:
    name: str = "run"
    seed: int = 0
    plugins: list[str] = attrs.Factory(list)
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


CORE_TABLES = ("model", "text", "data", "objective", "optim", "train", "sample", "eval", "distributed")
CORE_KEYS = ("name", "seed", "plugins", "extends")
