"""FID: the Fréchet distance of 2048-d statistics and the statistics of 50000 x 2048 features.

Run (the JSON is read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_fid.py -q --benchmark-json=OUT.json

Statistics come from ``fastgen.testing.make_features``: post-ReLU features with a decaying spectrum,
like Inception pool features (two related sample sets, 10000 x 2048 each, float64).

``frechet_distance``, d = 2048, float64. Providers (each returns the distance):
    fastgen   ``fastgen.metrics.frechet_distance``: Cholesky, blocked congruence, eigenvalue-only solve
    scipy     pytorch-fid's formula: ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` and its trace
    eigvals   torchmetrics' formula: ``torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()``
    eigh      the symmetric formula: A^1/2 by ``torch.linalg.eigh``, then ``eigvalsh(A^1/2 B A^1/2)``
extra_info ``rel_diff`` = |value - scipy's value| / scipy's value.

``feature_stats``, 50000 x 2048 float32 features -> mean and covariance (float64). Providers:
    fastgen   ``fastgen.metrics.FeatureStats(2048).update(x).compute()``
    numpy     ``np.cov(x, rowvar=False)`` (and the mean): float64 throughout
    torch     ``torch.cov`` of the features converted to float64
extra_info ``rel_err`` = |sigma - sigma_float64|_F / |sigma_float64|_F, against np.cov.

The slow providers run a few rounds only (scipy takes ~10 s a call); torch.compile is left out:
every provider is a handful of LAPACK/BLAS calls, which Inductor leaves as they are.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import scipy.linalg
import torch

from fastgen.metrics import FeatureStats, frechet_distance
from fastgen.testing import make_features

SUITE = "fid"
DIM = 2048
STATS_SHAPE = (50000, 2048)
DISTANCE_PROVIDERS = ["fastgen", "scipy", "eigvals", "eigh"]
STATS_PROVIDERS = ["fastgen", "numpy", "torch"]
ROUNDS = {"fastgen": 7, "eigh": 3, "eigvals": 3, "scipy": 3, "numpy": 3, "torch": 3}


@functools.cache
def statistics() -> tuple[np.ndarray, ...]:
    stats = []
    for seed, shift in ((1, 0.0), (2, 0.05)):
        x = make_features(10000, DIM, seed=seed, shift=shift)
        stats += [x.mean(0).numpy(), torch.cov(x.mT).numpy()]
    return tuple(stats)


def scipy_formula(mu1, sigma1, mu2, sigma2) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def eigvals_formula(mu1, sigma1, mu2, sigma2) -> float:
    trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace)


def eigh_formula(mu1, sigma1, mu2, sigma2) -> float:
    w, u = torch.linalg.eigh(sigma1)
    root = (u * w.clamp_min(0).sqrt()) @ u.mT
    trace = torch.linalg.eigvalsh(root @ sigma2 @ root).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace)


@functools.cache
def scipy_value() -> float:
    return scipy_formula(*statistics())


def make_distance(provider: str):
    arrays = statistics()
    tensors = tuple(torch.from_numpy(a) for a in arrays)
    if provider == "fastgen":
        return lambda: float(frechet_distance(*arrays))
    if provider == "scipy":
        return lambda: scipy_formula(*arrays)
    if provider == "eigvals":
        return lambda: eigvals_formula(*tensors)
    if provider == "eigh":
        return lambda: eigh_formula(*tensors)
    raise ValueError(provider)


def run_rounds(benchmark, provider: str, fn, warm_up: bool = True):
    if warm_up:
        fn()
    return benchmark.pedantic(fn, rounds=ROUNDS[provider], iterations=1)


@pytest.mark.parametrize("provider", DISTANCE_PROVIDERS)
def test_frechet_distance(benchmark, provider):
    distance = make_distance(provider)
    benchmark.group = f"frechet_distance d={DIM} float64"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "frechet_distance", "provider": provider, "shape": [DIM, DIM], "dtype": "float64",
        "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    value = run_rounds(benchmark, provider, distance, warm_up=provider != "scipy")
    benchmark.extra_info["value"] = value
    benchmark.extra_info["rel_diff"] = abs(value - scipy_value()) / abs(scipy_value())


@functools.cache
def features() -> np.ndarray:
    x = make_features(STATS_SHAPE[0] // 10, STATS_SHAPE[1], seed=3, dtype=torch.float32)
    # Ten shifted copies with noise: 50000 distinct rows without a 50000 x 2048 float64 matmul here.
    gen = torch.Generator().manual_seed(4)
    rows = [x + 0.1 * i + 0.05 * torch.rand(x.shape, generator=gen) for i in range(10)]
    return torch.cat(rows).numpy()


@functools.cache
def float64_covariance() -> np.ndarray:
    return np.cov(features(), rowvar=False)


def make_stats(provider: str):
    x = features()
    if provider == "fastgen":
        return lambda: FeatureStats(x.shape[1]).update(x).compute()
    if provider == "numpy":
        return lambda: (x.mean(0, dtype=np.float64), np.cov(x, rowvar=False))
    if provider == "torch":
        xt = torch.from_numpy(x)
        return lambda: (xt.mean(0, dtype=torch.float64), torch.cov(xt.mT.double()))
    raise ValueError(provider)


@pytest.mark.parametrize("provider", STATS_PROVIDERS)
def test_feature_stats(benchmark, provider):
    compute = make_stats(provider)
    benchmark.group = f"feature_stats {STATS_SHAPE[0]}x{STATS_SHAPE[1]} float32"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "feature_stats", "provider": provider, "shape": list(STATS_SHAPE),
        "dtype": "float32", "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    sigma = np.asarray(run_rounds(benchmark, provider, compute)[1])
    expected = float64_covariance()
    benchmark.extra_info["rel_err"] = float(np.linalg.norm(sigma - expected) / np.linalg.norm(expected))
