"""x-prediction with the loss in v-space (docs/recipe.md §2): time sampling, noising, the loss, and
the noise gate of auxiliary losses."""
from __future__ import annotations

import pytest
import torch

from prx_core.objective import add_noise, gated_mean, noise_gate, sample_time, shift_time, v_space_loss, velocity
from prx_core.recipe.schema import ObjectiveConfig


def draws(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.rand(n, generator=g), torch.rand(n, generator=g)


def test_shift_is_s_t_over_1_plus_s_minus_1_t():
    t = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
    for s in (1.0, 3.0, 0.5):
        expected = torch.tensor([s * v / (1 + (s - 1) * v) for v in t.tolist()])
        assert torch.allclose(shift_time(t, s), expected, atol=1e-7)
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert torch.equal(shift_time(t, 1.0), t)


def test_without_shift_and_uniform_share_time_is_the_sigmoid_of_the_normal_draws():
    normal, uniform, choice = draws(1000)
    config = ObjectiveConfig(shift=1.0, uniform_fraction=0.0)
    assert torch.allclose(sample_time(normal, uniform, choice, config), torch.sigmoid(normal), atol=1e-7)


def test_shifted_logit_normal_applies_the_shift_after_the_sigmoid():
    normal, uniform, choice = draws(1000)
    config = ObjectiveConfig(shift=3.0, uniform_fraction=0.0)
    expected = shift_time(torch.sigmoid(normal), 3.0)
    assert torch.allclose(sample_time(normal, uniform, choice, config), expected, atol=1e-6)


def test_the_uniform_share_is_uniform_fraction_and_unshifted():
    normal, uniform, choice = draws(100_000, seed=1)
    config = ObjectiveConfig(uniform_fraction=0.1)
    t = sample_time(normal, uniform, choice, config)
    is_uniform = torch.isclose(t, uniform * (1 - 1e-3) + 1e-3, atol=1e-7, rtol=0)
    assert is_uniform.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert t[is_uniform].mean().item() == pytest.approx(0.5, abs=0.01)  # U[1e-3, 1): not shifted
    assert t[~is_uniform].mean().item() > 0.6  # shift 3 moves the rest towards noise


def test_time_is_clamped_to_t_min_and_below_one():
    normal = torch.tensor([-60.0, -20.0, 0.0, 20.0, 60.0])
    zeros = torch.zeros(5)
    t = sample_time(normal, zeros, torch.ones(5), ObjectiveConfig(t_min=1e-3))
    assert t.min().item() == pytest.approx(1e-3)
    assert (t < 1).all()
    assert t.max().item() > 0.999
    t = sample_time(normal, zeros, zeros, ObjectiveConfig(t_min=1e-3, uniform_fraction=1.0))  # uniform draw 0
    assert torch.allclose(t, torch.full((5,), 1e-3))


def test_jit_logit_normal_uses_mean_and_std_without_shift():
    normal, uniform, choice = draws(1000)
    config = ObjectiveConfig(time_sampling="logit_normal", logit_mean=-0.8, logit_std=0.8, shift=3.0,
                             uniform_fraction=0.0)
    t = sample_time(normal, uniform, choice, config)
    assert torch.allclose(t, torch.sigmoid(normal * 0.8 - 0.8).clamp(1e-3, 1 - 1e-6), atol=1e-7)
    assert t.median().item() == pytest.approx(torch.sigmoid(torch.tensor(-0.8)).item(), abs=0.03)


def test_add_noise_interpolates_from_the_image_at_0_to_the_noise_at_1():
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    x_t = add_noise(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(x_t[0], x0[0])
    assert torch.equal(x_t[1], noise[1])
    assert torch.allclose(x_t[2], 0.75 * x0[2] + 0.25 * noise[2])


def test_v_space_loss_is_the_mean_squared_velocity_error_with_the_time_floor():
    g = torch.Generator().manual_seed(0)
    x0, x0_hat, noise = (torch.randn(4, 3, 2, 2, generator=g) for _ in range(3))
    t = torch.tensor([0.01, 0.05, 0.3, 0.9])  # the first is below the 0.05 floor
    x_t = add_noise(x0, noise, t)
    total = 0.0
    for i in range(4):
        denominator = max(t[i].item(), 0.05)
        v_hat = (x_t[i] - x0_hat[i]) / denominator
        v = (x_t[i] - x0[i]) / denominator
        total += ((v_hat - v) ** 2).sum().item()
    expected = total / x0.numel()
    assert v_space_loss(x0_hat, x0, x_t, t, floor=0.05).item() == pytest.approx(expected, rel=1e-5)
    # without the floor the first sample's weight would be 25x larger
    assert v_space_loss(x0_hat, x0, x_t, t, floor=1e-4).item() > 2 * expected


def test_velocity_of_the_true_image_is_noise_minus_image():
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0.3, 0.8])
    assert torch.allclose(velocity(add_noise(x0, noise, t), x0, t, floor=0.05), noise - x0, atol=1e-5)


def test_v_space_loss_computes_in_fp32_from_bf16_predictions():
    x0 = torch.randn(2, 3, 4, 4)
    x0_hat = (x0 + 0.01).bfloat16()
    t = torch.tensor([0.5, 0.5])
    loss = v_space_loss(x0_hat, x0, add_noise(x0, torch.randn_like(x0), t), t, floor=0.05)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(((x0_hat.float() - x0) / 0.5).pow(2).mean().item(), rel=1e-4)


def test_noise_gate_keeps_the_samples_clean_enough_and_the_gated_mean_counts_the_others_as_zero():
    t = torch.tensor([0.1, 0.75, 0.69, 1.0])
    assert noise_gate(t, 0.3).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert noise_gate(t, 0.0).tolist() == [1.0] * 4
    assert gated_mean(torch.tensor([1.0, 2.0, 3.0, 4.0]), noise_gate(t, 0.3)).item() == pytest.approx(1.0)
