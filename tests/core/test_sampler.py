"""Euler and Heun samplers (docs/recipe.md §2): exactness with a perfect predictor, the time grid, the
guidance hook."""
from __future__ import annotations

import pytest
import torch

from prx_core.objective import shift_time
from prx_core.sampler import sample, time_grid
from prx_core.types import Conditioning


def conditioning(batch: int, marker: float) -> Conditioning:
    return Conditioning(torch.full((batch, 2, 4), marker), torch.ones(batch, 2, dtype=torch.bool))


def perfect(x0: torch.Tensor, calls: list | None = None):
    """An x0 predictor that always returns the true image."""

    def predict(x_t, t, cond, route):
        if calls is not None:
            calls.append(t.clone())
        return x0

    return predict


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("steps, shift", [(1, 3.0), (4, 3.0), (20, 1.0), (50, 3.0)])
def test_a_perfect_x0_predictor_reaches_the_image_from_any_noise(method, steps, shift):
    """Exact while every non-zero grid time is above the 0.05 velocity floor (true up to 58 steps
    at shift 3, the recipe's 50-step evaluation included)."""
    g = torch.Generator().manual_seed(steps)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(3, 3, 8, 8, generator=g) * 3
    cond, uncond = conditioning(3, 1.0), conditioning(3, 0.0)
    out = sample(perfect(x0), noise, cond, uncond, steps=steps, shift=shift, method=method)
    assert torch.allclose(out, x0, atol=1e-5)


def test_heun_asks_for_one_prediction_per_step_plus_a_correction_except_at_the_last_step():
    x0, calls = torch.zeros(2, 3, 4, 4), []
    sample(perfect(x0, calls), torch.randn(2, 3, 4, 4), conditioning(2, 1), conditioning(2, 0), steps=5, shift=3.0,
           method="heun")
    assert len(calls) == 2 * 5 - 1
    calls.clear()
    sample(perfect(x0, calls), torch.randn(2, 3, 4, 4), conditioning(2, 1), conditioning(2, 0), steps=5, shift=3.0)
    assert len(calls) == 5
    assert torch.allclose(torch.stack([c[0] for c in calls]), time_grid(5, 3.0)[:-1])


def test_time_grid_runs_from_1_to_0_shifted_like_training():
    grid = time_grid(4, 3.0)
    assert grid.shape == (5,)
    assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
    assert torch.allclose(grid, shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), 3.0))
    assert grid[1].item() == pytest.approx(0.9)  # 3 * 0.75 / (1 + 2 * 0.75)
    assert (grid[1:] < grid[:-1]).all()
    assert torch.allclose(time_grid(4, 1.0), torch.linspace(1, 0, 5))


def test_guidance_is_called_with_predict_x_t_t_cond_and_uncond_and_its_output_is_used():
    batch = 2
    x0 = torch.rand(batch, 3, 4, 4)
    cond, uncond = conditioning(batch, 1.0), conditioning(batch, 0.0)
    predict = perfect(torch.full_like(x0, 7.0))  # wrong on purpose: the guidance must replace it
    seen = []

    def guidance(predict_fn, x_t, t, c, u):
        seen.append((predict_fn, x_t.shape, t.clone(), c, u))
        return x0

    out = sample(predict, torch.randn_like(x0), cond, uncond, steps=3, shift=3.0, guidance=guidance)
    assert torch.allclose(out, x0, atol=1e-5)
    assert len(seen) == 3
    for (fn, shape, t, c, u), t_expected in zip(seen, time_grid(3, 3.0)[:-1]):
        assert fn is predict and shape == x0.shape
        assert t.shape == (batch,) and torch.allclose(t, t_expected.expand(batch))
        assert c is cond and u is uncond


def test_without_guidance_the_sampler_makes_a_plain_conditional_dense_call():
    seen = []

    def predict(x_t, t, cond, route):
        seen.append((cond, route))
        return torch.zeros_like(x_t)

    cond, uncond = conditioning(1, 1.0), conditioning(1, 0.0)
    sample(predict, torch.randn(1, 3, 4, 4), cond, uncond, steps=2, shift=1.0)
    assert len(seen) == 2 and all(c is cond and r == () for c, r in seen)
