"""The interface every teacher exposes: a frozen feature network with its input normalisation inside."""
from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TOKEN_STRIDE = 16
"""A CNN teacher's patch tokens come from its feature stage whose stride is closest to this:
the patch of the ViT teachers it stands in for, so the same resize rule gives the same grid."""


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
