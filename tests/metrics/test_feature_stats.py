"""FeatureStats: np.cov in float64, batch-size independence, merge, 2-process all_reduce, .npz files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastgen.metrics import FeatureStats, load_stats, save_stats


def features(n, d, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + 3.0, 0)
    return x.astype(dtype)


def fro_rel(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-6)])
@pytest.mark.parametrize("n,d,chunk_rows", [(2, 1, 4096), (100, 3, 16), (1000, 70, 256), (5000, 300, 4096)])
def test_equals_np_cov_in_float64(n, d, chunk_rows, dtype, tol):
    x = features(n, d, dtype, seed=n)
    mu, sigma = FeatureStats(d, chunk_rows=chunk_rows, block=32).update(x).compute()
    expected = np.cov(x.astype(np.float64), rowvar=False).reshape(d, d)
    assert fro_rel(sigma, expected) <= tol
    assert np.abs(mu - x.astype(np.float64).mean(0)).max() <= tol * np.abs(x).max()
    assert np.array_equal(sigma, sigma.T)


def test_unchanged_by_batch_size():
    x = features(1000, 40, seed=1)
    results = []
    for batch in (1, 7, 128, 1000):
        stats = FeatureStats(40, chunk_rows=96)
        for start in range(0, 1000, batch):
            stats.update(x[start:start + batch])
        results.append(stats.compute())
    for mu, sigma in results[1:]:
        assert np.array_equal(mu, results[0][0]) and np.array_equal(sigma, results[0][1])


def test_half_and_tensor_inputs():
    x = features(300, 20, seed=2)
    half = FeatureStats(20).update(torch.from_numpy(x).half()).compute()[1]
    expected = np.cov(torch.from_numpy(x).half().double().numpy(), rowvar=False)
    assert fro_rel(half, expected) <= 1e-6


def test_merge_equals_one_stream():
    x = features(900, 30, np.float64, seed=3)
    whole = FeatureStats(30).update(x).compute()
    merged = FeatureStats(30).update(x[:250]).merge(FeatureStats(30).update(x[250:700]))
    merged.merge(FeatureStats(30)).merge(FeatureStats(30).update(x[700:]))
    assert merged.count == 900
    for got, want in zip(merged.compute(), whole):
        assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
    merged.update(x[:100])  # streaming goes on after a merge
    assert merged.count == 1000
    expected = np.cov(np.concatenate([x, x[:100]]), rowvar=False)
    assert fro_rel(merged.compute()[1], expected) <= 1e-13


def _all_reduce_worker(rank, world_size, store_path, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        x = features(1001, 25, np.float64, seed=4)
        shard = x[:400] if rank == 0 else x[400:]  # unequal shards
        stats = FeatureStats(25, chunk_rows=64).update(shard).all_reduce()
        mu, sigma = stats.compute()
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), mu=mu, sigma=sigma, count=stats.count)
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's C++ teardown: gloo's threads can still be joinable there and abort
    # ("terminate called without an active exception") after the work is done.
    os._exit(0)


def test_all_reduce_over_two_gloo_processes_equals_single_process(tmp_path):
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    mu, sigma = FeatureStats(25).update(features(1001, 25, np.float64, seed=4)).compute()
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as result:
            assert int(result["count"]) == 1001
            assert np.allclose(result["mu"], mu, rtol=1e-13, atol=1e-13)
            assert fro_rel(result["sigma"], sigma) <= 1e-13


def test_all_reduce_without_process_group_is_a_no_op():
    stats = FeatureStats(4).update(features(10, 4, seed=5))
    before = stats.compute()
    after = stats.all_reduce().compute()
    assert np.array_equal(before[1], after[1])


def test_npz_round_trip_is_pytorch_fid_compatible(tmp_path):
    x = features(200, 16, seed=6)
    stats = FeatureStats(16).update(x)
    path = tmp_path / "stats.npz"
    stats.save(path)
    with np.load(path) as raw:  # what pytorch-fid reads
        assert raw["mu"].dtype == np.float64 and raw["sigma"].shape == (16, 16)
    mu, sigma, count = load_stats(path)
    assert count == 200
    assert np.array_equal(mu, stats.compute()[0]) and np.array_equal(sigma, stats.compute()[1])
    plain = tmp_path / "plain"  # no .npz suffix, no count: still read back
    save_stats(plain, mu, sigma)
    assert load_stats(plain)[2] is None and np.array_equal(load_stats(plain)[1], sigma)
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(ValueError, match=r"missing \['mu', 'sigma'\]"):
        load_stats(tmp_path / "other.npz")


@pytest.mark.parametrize("call,error,match", [
    (lambda: FeatureStats(0), ValueError, "dim must be an int >= 1"),
    (lambda: FeatureStats(4, chunk_rows=0), ValueError, "chunk_rows must be an int >= 1"),
    (lambda: FeatureStats(4).update(np.zeros((3, 5))), ValueError, r"features must be \[batch, 4\]"),
    (lambda: FeatureStats(4).update(np.zeros(4)), ValueError, r"features must be \[batch, 4\]"),
    (lambda: FeatureStats(2).update(np.array([[1.0, np.nan]])), ValueError, "NaN or Inf"),
    (lambda: FeatureStats(2).update(np.ones((3, 2), dtype=np.int64)), TypeError, "floating-point"),
    (lambda: FeatureStats(2).update(np.ones((3, 2))).update(np.ones((3, 2), np.float32)), TypeError,
     "must stay torch.float64"),
    (lambda: FeatureStats(2).update(np.ones((1, 2))).covariance, ValueError, "at least 2 samples, got 1"),
    (lambda: FeatureStats(2).mean, ValueError, "no samples"),
    (lambda: FeatureStats(2).merge(FeatureStats(3)), ValueError, "dim 2"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
