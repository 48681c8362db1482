"""frechet_distance: closed forms, scipy agreement on realistic 2048-d statistics, singular covariances."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from fastgen.metrics import FeatureStats, fid_from_stats, frechet_distance
from fastgen.testing import make_features as realistic_features


def stats(x):
    return x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)


def scipy_fid(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's formula (without its retry): the value fastgen must reproduce."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def test_equal_covariances_give_squared_mean_distance():
    mu1, sigma = stats(realistic_features(500, 64, seed=0))
    mu2 = mu1 + np.linspace(-1, 1, 64)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-10)


@pytest.mark.parametrize("d", [1, 64, 2048])
def test_fid_of_a_distribution_with_itself_is_zero(d):
    mu, sigma = stats(realistic_features(3 * d + 10, d, seed=1))
    value = frechet_distance(mu, sigma, mu, sigma)
    assert abs(value) < 1e-8
    assert not value.diagnostics["fallback"]


def test_diagonal_covariances_match_the_scalar_formula():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3, 100), rng.uniform(0.1, 3, 100)
    mu1, mu2 = rng.normal(size=100), rng.normal(size=100)
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_scalars_are_one_dimensional_statistics():
    # pytorch-fid turns scalars into 1-d statistics: (1 - 3)^2 + 4 + 9 - 2 * sqrt(36) = 5.
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(5.0, rel=1e-14)


def test_matches_scipy_formula_on_realistic_2048d_statistics():
    d = 2048
    mu1, sigma1 = stats(realistic_features(3000, d, seed=3))
    mu2, sigma2 = stats(realistic_features(3000, d, seed=4, shift=0.05))
    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    expected = scipy_fid(mu1, sigma1, mu2, sigma2)
    assert abs(value - expected) <= 1e-9 * abs(expected)
    assert not value.diagnostics["fallback"] and value.diagnostics["clamped_mass"] == 0


def test_tensor_and_numpy_inputs_agree():
    mu1, sigma1 = stats(realistic_features(300, 32, seed=5))
    mu2, sigma2 = stats(realistic_features(300, 32, seed=6))
    from_numpy = frechet_distance(mu1, sigma1, mu2, sigma2)
    from_tensors = frechet_distance(*(torch.from_numpy(x).float() for x in (mu1, sigma1, mu2, sigma2)))
    assert from_tensors == pytest.approx(from_numpy, rel=1e-5)  # float32 inputs, computed in float64


def test_rank_deficient_covariances_are_finite_with_diagnostics():
    # 50 samples of 128-d features: rank 49. scipy's sqrtm gives a complex, inaccurate result here.
    mu1, sigma1 = stats(realistic_features(50, 128, seed=7))
    mu2, sigma2 = stats(realistic_features(50, 128, seed=8))
    with pytest.warns(RuntimeWarning, match="singular"):
        value = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(value) and value > 0
    assert value.diagnostics["fallback"]
    with pytest.warns(RuntimeWarning, match="singular"):
        assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9 * np.trace(sigma1)


def test_warns_when_samples_do_not_exceed_dimensions():
    features = realistic_features(40, 64, seed=9).float()
    small, large = FeatureStats(64).update(features), FeatureStats(64).update(realistic_features(300, 64, seed=10))
    with pytest.warns(RuntimeWarning, match="40 samples for 64-dimensional"):
        fid_from_stats(small, large)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid_from_stats(large, large)


@pytest.mark.parametrize("args,error,match", [
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), ValueError, "same length"),
    ((np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)), ValueError, r"sigma1 must be \[3, 3\]"),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.ones((3, 2))), ValueError, r"sigma2 must be \[3, 3\]"),
    ((np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3)), ValueError, "mu1 contains NaN"),
    ((np.zeros(3), np.eye(3) * np.inf, np.zeros(3), np.eye(3)), ValueError, "sigma1 contains NaN or Inf"),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.triu(np.ones((3, 3)))), ValueError, "b must be symmetric"),
    ((np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), -1.0), ValueError, "eps must be a float >= 0"),
])
def test_bad_input_errors(args, error, match):
    with pytest.raises(error, match=match):
        frechet_distance(*args)
