"""Euler and Heun samplers for the x-prediction flow (docs/recipe.md §2).

Time runs from 1 (noise) to 0 on ``linspace(1, 0, steps + 1)`` shifted like training. Each step
asks the guidance (or, without one, a plain conditional call) for x0_hat and moves along the
implied velocity.
"""
from __future__ import annotations

from typing import Literal

import torch

from prx_core.objective import shift_time, velocity
from prx_core.types import Conditioning, Guidance, Predict


def time_grid(steps: int, shift: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``steps + 1`` noise levels from 1 to 0, shifted."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def predict_x0(predict: Predict, guidance: Guidance | None, x: torch.Tensor, t: torch.Tensor,
               cond: Conditioning, uncond: Conditioning) -> torch.Tensor:
    """One guided (or plain conditional) x0 prediction at noise level ``t`` (per sample)."""
    if guidance is None:
        return predict(x, t, cond, ())
    return guidance(predict, x, t, cond, uncond)


@torch.no_grad()
def sample(
    predict: Predict,
    noise: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    *,
    steps: int,
    shift: float,
    method: Literal["euler", "heun"] = "euler",
    guidance: Guidance | None = None,
    floor: float = 0.0,
) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to an image (t = 0); returns x in [-1, 1] (unclamped).

    ``floor`` clamps t in the velocity as training does; the default 0 makes the last Euler step
    land exactly on the final x0 prediction (the grid never evaluates t = 0)."""
    grid = time_grid(steps, shift, noise.device)
    x = noise
    batch = noise.shape[0]
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        tb = t.expand(batch)
        v = velocity(x, predict_x0(predict, guidance, x, tb, cond, uncond), tb, floor)
        x_euler = x - (t - t_next) * v
        if method == "heun" and t_next > 0:
            tn = t_next.expand(batch)
            v_next = velocity(x_euler, predict_x0(predict, guidance, x_euler, tn, cond, uncond), tn, floor)
            x = x - (t - t_next) * 0.5 * (v + v_next)
        else:
            x = x_euler
    return x
