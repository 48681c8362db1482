"""Parity of the Triton Newton-Schulz square root (fastgen/ops/fid/triton.py) with its reference.

Without a GPU the kernels run on CPU tensors in the Triton interpreter: small shapes only.
"""
from __future__ import annotations

import pytest
import torch

import fastgen
from fastgen.ops.fid import SQRTM_NEWTON_SCHULZ
from fastgen.ops.fid.reference import relative_residual, sqrtm_newton_schulz_ref
from fastgen.testing import backends_for

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif("triton" not in backends_for(SQRTM_NEWTON_SCHULZ, DEVICE),
                       reason=f"the Triton backend cannot run {DEVICE} tensors here"),
]

DTYPES = (torch.float32, torch.float64)
# Relative error in X against the reference: the reference stops up to three iterations earlier
# (convergence is checked every fourth iteration here), so the two agree to the rounding of
# conditioning ~1e2 matrices, not bitwise.
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}
# The relative residual |X X - A|_F / |A|_F is itself at rounding level: absolute tolerances.
RESIDUAL_ATOL = {torch.float32: 2e-6, torch.float64: 1e-14}


def spd(n, dtype, *, seed=0, batch=()):
    """Symmetric positive definite, eigenvalues in [0.1, 10]."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=gen, dtype=torch.float64))
    w = 0.1 + 9.9 * torch.rand(*batch, n, generator=gen, dtype=torch.float64)
    return ((q * w.unsqueeze(-2)) @ q.mT).to(dtype=dtype, device=DEVICE)


def general(n, dtype, *, seed=0, batch=()):
    """Nonsymmetric, eigenvalues near 1.5 (positive real part)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(*batch, n, n, generator=gen, dtype=torch.float64)
    return (1.5 * torch.eye(n, dtype=torch.float64) + 0.3 * noise / n ** 0.5).to(dtype=dtype, device=DEVICE)


MAKERS = {"spd": spd, "general": general}


def default_tol(dtype):
    return torch.finfo(dtype).eps ** 0.5


def rel_err(actual, expected):
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def run_triton(a, max_iter=100, tol=None):
    return SQRTM_NEWTON_SCHULZ.call(a, max_iter, default_tol(a.dtype) if tol is None else tol, impl="triton")


def assert_matches_reference(a, max_iter=100, tol=None):
    tol = default_tol(a.dtype) if tol is None else tol
    x, residual = run_triton(a, max_iter, tol)
    x_ref, residual_ref = sqrtm_newton_schulz_ref(a, max_iter, tol)
    assert x.shape == a.shape and x.dtype == a.dtype and x.is_contiguous()
    assert residual.shape == a.shape[:-2] and residual.dtype == a.dtype
    assert rel_err(x, x_ref) < RTOL[a.dtype]
    atol = RESIDUAL_ATOL[a.dtype]
    torch.testing.assert_close(residual, residual_ref, rtol=0, atol=atol)
    # The fused residual against the same formula on the kernel's own X.
    torch.testing.assert_close(residual, relative_residual(x, a), rtol=0, atol=atol)
    return x, residual


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1, 3, 17, 33))
@pytest.mark.parametrize("kind", MAKERS)
def test_matches_reference(kind, n, dtype):
    a = MAKERS[kind](n, dtype, seed=n)
    x, residual = assert_matches_reference(a)
    assert float(residual) <= default_tol(dtype)
    assert rel_err(x @ x, a) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,n", [((2,), 17), ((2, 3), 5)], ids=["2x17", "2x3x5"])
def test_batched(batch, n, dtype):
    # One batch mixes SPD and general matrices: the loop runs until the slowest has converged.
    a = torch.cat([spd(n, dtype, seed=1, batch=batch)[:1], general(n, dtype, seed=2, batch=batch)[1:]])
    x, residual = assert_matches_reference(a)
    assert bool((residual <= default_tol(dtype)).all())
    assert rel_err(x @ x, a) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_several_tiles(dtype):
    # 70 > one 64 x 64 output tile and three chunks of the shared dimension, the last one partial.
    assert_matches_reference(spd(70, dtype, seed=3))


@pytest.mark.parametrize("view", ["transposed", "strided", "batch_permuted"])
def test_non_contiguous(view):
    if view == "transposed":
        a = general(9, torch.float64, seed=4).mT
    elif view == "strided":  # every other row and column: not dense, still SPD
        a = spd(18, torch.float64, seed=5)[::2, ::2]
    else:
        a = spd(6, torch.float64, seed=6, batch=(2, 2)).transpose(0, 1)
    assert not a.is_contiguous()
    x, _ = run_triton(a)
    x_contiguous, _ = run_triton(a.contiguous())
    assert rel_err(x, x_contiguous) < 1e-14
    assert_matches_reference(a)


@pytest.mark.parametrize("max_iter", (1, 3, 6))
def test_stops_at_max_iter(max_iter):
    # tol = 0 never converges, so both run exactly max_iter iterations (6: past a check after the
    # fourth), and agree to rounding.
    a = spd(17, torch.float64, seed=7)
    x, residual = run_triton(a, max_iter, 0.0)
    x_ref, residual_ref = sqrtm_newton_schulz_ref(a, max_iter, 0.0)
    assert rel_err(x, x_ref) < 1e-14
    torch.testing.assert_close(residual, residual_ref, rtol=1e-12, atol=0)


def test_zero_and_empty_batch():
    zero = torch.zeros(3, 3, dtype=torch.float64, device=DEVICE)
    x, residual = run_triton(zero, 5)
    assert bool((x == 0).all()) and float(residual) == 0
    x, residual = run_triton(torch.ones(0, 4, 4, dtype=torch.float32, device=DEVICE))
    assert x.shape == (0, 4, 4) and residual.shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_api_and_gradient(dtype):
    a = general(5, dtype, seed=8)
    weights = torch.randn(5, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(a)
    results = {}
    for impl in ("triton", "ref"):
        leaf = a.clone().requires_grad_()
        x = fastgen.ops.fid.sqrtm(leaf, "newton_schulz", impl=impl)
        (x * weights).sum().backward()
        results[impl] = x.detach(), leaf.grad
    assert rel_err(results["triton"][0], results["ref"][0]) < RTOL[dtype]
    # The backward solves a Sylvester equation in X's eigenbasis: its error is X's times ~cond.
    assert rel_err(results["triton"][1], results["ref"][1]) < 10 * RTOL[dtype]
