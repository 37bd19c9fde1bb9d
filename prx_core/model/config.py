"""Denoiser architecture: the resolved configuration and the size presets."""
from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class DenoiserConfig:
    """Every number that fixes the denoiser's shape (docs/recipe.md §1)."""

    hidden: int
    depth: int
    heads: int
    mlp_ratio: float = 3.5
    patch: int = 32
    bottleneck: int = 256
    text_dim: int = 2304
    time_dim: int = 256
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch * self.patch

    def __attrs_post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 4 for 2-D RoPE")


INIT_SCHEMES = ("pytorch", "xavier")
"""How the denoiser's weights start (see :meth:`prx_core.model.denoiser.PRXDenoiser.reset_parameters`)."""

PRESETS: dict[str, dict] = {
    # The PRX speedrun model: 1.177 B parameters with a 2304-d (T5Gemma-2B) text input.
    "prx-1.2b": dict(hidden=1792, depth=16, heads=28, mlp_ratio=3.5, patch=32, bottleneck=256),
    # A mid-size model for GPU experiments.
    "prx-300m": dict(hidden=1024, depth=16, heads=16, mlp_ratio=3.5, patch=32, bottleneck=256),
    # Deep enough for routing to matter on a CPU (12 blocks).
    "prx-small": dict(hidden=384, depth=12, heads=6, mlp_ratio=3.5, patch=8, bottleneck=128),
    # The quickstart's model: about 5 M parameters, trains on two CPU cores in minutes.
    "prx-tiny": dict(hidden=192, depth=6, heads=3, mlp_ratio=3.5, patch=8, bottleneck=64),
    # For tests: seconds per step on a CPU.
    "prx-test": dict(hidden=64, depth=4, heads=2, mlp_ratio=2.0, patch=8, bottleneck=32),
}
