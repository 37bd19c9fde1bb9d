"""REPA's grid alignment as plain functions: the teacher's tokens on the denoiser's token grid.

The denoiser sees an image as a (rows, cols) grid of patch tokens; REPA compares each token's
hidden state with the teacher's feature at the same place. The teacher sees the clean image
resized so that its own grid equals the token grid (or scaled by a fixed ``input_scale``), and
when the two grids still differ (another scale, a CNN whose grid rounds differently) its feature
map is resampled to the token grid.
"""
from __future__ import annotations

import torch

from prx_core.teachers import FeatureTeacher, resize_images


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

    The image is resized per :func:`teacher_input_size` by ``resize``
    (:data:`prx_core.teachers.RESIZE_MODES`); when the teacher's own grid still differs (another
    ``input_scale``, a CNN whose grid rounds differently) its feature map is bilinearly resampled
    to ``grid``.
    """
    size = teacher_input_size(teacher.patch, grid, tuple(images_01.shape[-2:]), input_scale)
    tokens = teacher.patch_tokens(resize_images(images_01, size, resize))
    own = teacher.grid_for(size)
    if own != tuple(grid):
        features = tokens.transpose(1, 2).unflatten(2, own)
        tokens = resize_images(features, tuple(grid)).flatten(2).transpose(1, 2)
    return tokens
