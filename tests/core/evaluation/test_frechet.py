"""The offline distribution metric: Fréchet distance, feature statistics, CMMD and the networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prx_core.errors import UserError, WeightsNotFoundError
from prx_core.evaluation.frechet import (
    FeatureNetwork,
    FeatureStats,
    distribution_metrics,
    extract_features,
    feature_stats,
    frechet_distance,
    load_feature_network,
    mmd_rbf,
)


def random_covariance(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((dim, rank or dim))
    return a @ a.T / dim


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), random_covariance(rng, 6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_and_diagonal_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # Diagonal covariances: sum over axes of the 1-D formula.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_general_covariances_match_the_direct_sqrtm_formula():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    for dim in (2, 5, 16):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        s1, s2 = random_covariance(rng, dim), random_covariance(rng, dim)
        cross = linalg.sqrtm(s1 @ s2).real
        direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_rank_deficient_covariances_stay_real_and_finite():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    s1, s2 = random_covariance(rng, 32, rank=5), random_covariance(rng, 32, rank=7)
    value = frechet_distance(np.zeros(32), s1, np.zeros(32), s2)
    eps = 1e-10 * np.eye(32)  # the usual fix-up sqrtm needs here
    direct = np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm((s1 + eps) @ (s2 + eps)).real)
    assert np.isfinite(value) and value == pytest.approx(direct, rel=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_feature_stats_are_mean_and_unbiased_covariance_over_batches():
    torch.manual_seed(0)
    images = torch.rand(10, 3, 4, 4) * 2 - 1

    def feature_fn(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # per-channel means: (batch, 3)

    stats = feature_stats(images, feature_fn, batch_size=3)
    direct = images.mean(dim=(2, 3)).double().numpy()
    np.testing.assert_allclose(stats.mu, direct.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(direct, rowvar=False), rtol=1e-5)
    assert stats.count == 10
    batched = feature_stats(iter(images.split(4)), feature_fn)
    np.testing.assert_allclose(batched.mu, stats.mu, rtol=1e-6)
    with pytest.raises(UserError, match="at least 2"):
        FeatureStats.of(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        extract_features(images, lambda x: x)


def test_frechet_distance_of_shifted_features_grows_with_the_shift():
    torch.manual_seed(0)
    base = torch.randn(400, 4)
    a = FeatureStats.of(base)
    near, far = FeatureStats.of(base + 0.1), FeatureStats.of(base + 1.0)
    assert frechet_distance(a.mu, a.sigma, near.mu, near.sigma) == pytest.approx(4 * 0.01, rel=1e-6)
    assert frechet_distance(a.mu, a.sigma, far.mu, far.sigma) == pytest.approx(4 * 1.0, rel=1e-6)


def test_mmd_matches_a_direct_double_sum():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 0.5
    sigma = 1.5

    def k(a, b):
        return float(torch.exp(-((a - b) ** 2).sum() / (2 * sigma**2)))

    kxx = sum(k(a, b) for a in x for b in x) / 25
    kyy = sum(k(a, b) for a in y for b in y) / 16
    kxy = sum(k(a, b) for a in x for b in y) / 20
    assert mmd_rbf(x, y, sigma=sigma, scale=1.0) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-9)


def test_distribution_metrics_reuses_reference_features():
    calls = []

    def feature_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.flatten(1)

    network = FeatureNetwork("fd_toy", feature_fn, "frechet")
    torch.manual_seed(0)
    generated, reference = torch.randn(50, 3, 1, 1), torch.randn(50, 3, 1, 1) + 2
    out = distribution_metrics(generated, reference, [network])
    assert out["fd_toy"] == pytest.approx(12.0, rel=0.3)
    calls.clear()
    cached = distribution_metrics(generated, reference, [network], {"fd_toy": reference.flatten(1)})
    assert cached == out and calls == [50]


def test_unknown_and_missing_networks_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="unknown distribution metric"):
        load_feature_network("vgg")
    with pytest.raises(WeightsNotFoundError, match="Inception-v3"):
        load_feature_network(f"inception:{tmp_path / 'missing.pth'}")
    with pytest.raises(WeightsNotFoundError, match="clip:DIR"):
        load_feature_network(f"clip:{tmp_path / 'no-such-model'}")


def test_cmmd_loads_a_clip_vision_model_from_a_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path)
    network = load_feature_network(f"clip:{tmp_path}")
    images = torch.rand(6, 3, 48, 40) * 2 - 1
    features = network.features(images)
    assert network.key == "cmmd" and features.shape == (6, 16)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(6))
    out = distribution_metrics(images, images.flip(0), [network])
    assert out["cmmd"] == pytest.approx(0.0, abs=1e-6)
    assert distribution_metrics(images, -images, [network])["cmmd"] > 0


@pytest.mark.slow
def test_efficientnet_distance_separates_smooth_images_from_noise():
    """The offline network, loaded through the teachers module (about 5-10 s on two cores)."""
    network = load_feature_network("efficientnet-lite0")
    assert network.key == "fd_efficientnet"
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(16, 3, 4, 4) * 2 - 1, size=(64, 64), mode="bilinear")
    smooth_again = torch.nn.functional.interpolate(torch.rand(16, 3, 4, 4) * 2 - 1, size=(64, 64), mode="bilinear")
    noise = torch.rand(16, 3, 64, 64) * 2 - 1
    features = network.features(smooth[:2])
    assert features.shape == (2, 320) and torch.isfinite(features).all()
    out_same = distribution_metrics(smooth, smooth_again, [network])["fd_efficientnet"]
    out_noise = distribution_metrics(smooth, noise, [network])["fd_efficientnet"]
    assert 0 <= out_same < out_noise / 3


def test_pixel_thumbnails_give_the_closed_form_distance_of_a_colour_shift():
    """A constant shift c (in [-1, 1] units) moves every thumbnail value by c / 2 and leaves the
    covariance alone: the distance is 192 (c / 2)^2, whatever the images."""
    network = load_feature_network("pixels")
    images = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    assert network.key == "fd_pixels" and extract_features(images[:2], network.features).shape == (2, 192)
    same = distribution_metrics(images, images, [network])["fd_pixels"]
    shifted = distribution_metrics(images + 0.2, images, [network])["fd_pixels"]
    assert same == pytest.approx(0.0, abs=1e-9)
    assert shifted == pytest.approx(192 * 0.1**2, rel=1e-6)
