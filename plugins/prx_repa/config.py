"""The ``[repa]`` recipe table."""
from __future__ import annotations

from typing import Literal

import attrs

from prx_core.recipe.constraints import NON_EMPTY_STRING, at_least, greater_than, setting


@attrs.frozen(kw_only=True)
class RepaConfig:
    """REPA's settings; the defaults are docs/recipe.md §5.

    ``teacher``: the frozen feature network (syntax in :mod:`prx_core.teachers`); the quickstart
    uses ``"efficientnet-lite0"``. ``block``: the denoiser block whose output is aligned (7 is the
    8th block). ``projector_dim``: width of the 3-layer SiLU MLP projector. ``weight``: the loss
    weight. ``input_scale``: the teacher sees the clean image resized by this factor; unset, it
    is resized so that the teacher's grid equals the denoiser's token grid (teacher patch /
    denoiser patch, 16/32 at 512 px); when the grids still differ the teacher's features are
    bilinearly resampled to the token grid. ``resize``: how the clean image is resized for the
    teacher (:data:`prx_core.teachers.RESIZE_MODES`): ``"nearest"`` as PRX does
    (``F.interpolate`` with its default mode, no antialias), ``"bilinear-antialias"`` or
    ``"bilinear"``.
    """

    teacher: str = setting("hf:facebook/dinov3-vitl16-pretrain-lvd1689m", NON_EMPTY_STRING)
    block: int = setting(7, at_least(0))
    projector_dim: int = setting(1024, at_least(1))
    weight: float = setting(0.5, at_least(0))
    input_scale: float | None = setting(None, greater_than(0))
    resize: Literal["nearest", "bilinear", "bilinear-antialias"] = "nearest"
