"""fastgen_C::symmetric_eigvalsh (two-stage tridiagonalization) against torch.linalg.eigvalsh."""
from __future__ import annotations

import pytest
import torch

from fastgen import _backends

pytestmark = pytest.mark.skipif(_backends.cext_reason() is not None, reason="needs fastgen._C")

# Odd sizes around the band width (32) and the row blocks of the dense-to-band stage (256).
SIZES = (1, 2, 3, 17, 63, 64, 65, 200, 513)
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def eigvalsh(a):
    return torch.ops.fastgen_C.symmetric_eigvalsh(a)


def assert_eigvals_close(got, expected, dtype=torch.float64):
    """Eigenvalues agree to RTOL[dtype] * max |lambda| (the accuracy a backward stable method has)."""
    assert got.dtype == dtype and got.shape == expected.shape
    expected = expected.to(torch.float64)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (got.to(torch.float64) - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= RTOL[dtype] * scale, f"max error {err:.3e} > {RTOL[dtype]:.0e} * {scale:.3e}"


def random_symmetric(n, *, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return (a + a.T).to(dtype)


def with_spectrum(eigenvalues, *, seed=0):
    """Q diag(eigenvalues) Q^T for a random orthogonal Q."""
    n = eigenvalues.numel()
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * eigenvalues) @ q.T


@pytest.mark.parametrize("n", SIZES)
def test_random_symmetric(n):
    a = random_symmetric(n, seed=n)
    assert_eigvals_close(eigvalsh(a), torch.linalg.eigvalsh(a))


def test_empty():
    assert eigvalsh(torch.empty(0, 0, dtype=torch.float64)).shape == (0,)


@pytest.mark.parametrize("n", (65, 300))
def test_spd_wide_spectrum(n):
    """An FID-like covariance: eigenvalues from 1e-8 to 1e2, log-spaced."""
    lam = torch.logspace(-8, 2, n, dtype=torch.float64)
    a = with_spectrum(lam, seed=1)
    got = eigvalsh(a)
    assert_eigvals_close(got, torch.linalg.eigvalsh(a))
    assert_eigvals_close(got, lam)


@pytest.mark.parametrize("n", (64, 201))
def test_repeated_eigenvalues(n):
    lam = torch.tensor([-3.0, 1.0, 2.0], dtype=torch.float64).repeat_interleave(n // 3 + 1)[:n]
    a = with_spectrum(lam, seed=2)
    assert_eigvals_close(eigvalsh(a), lam.sort().values)


def test_identity_and_zero():
    n = 100
    assert_eigvals_close(eigvalsh(torch.eye(n, dtype=torch.float64) * 5), torch.full((n,), 5.0, dtype=torch.float64))
    assert torch.equal(eigvalsh(torch.zeros(n, n, dtype=torch.float64)), torch.zeros(n, dtype=torch.float64))


@pytest.mark.parametrize("n", (2, 50, 130))
def test_tridiagonal_and_diagonal(n):
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(n, generator=gen, dtype=torch.float64)
    e = torch.randn(n - 1, generator=gen, dtype=torch.float64)
    diagonal = torch.diag(d)
    assert_eigvals_close(eigvalsh(diagonal), d.sort().values)
    tridiagonal = diagonal + torch.diag(e, -1) + torch.diag(e, 1)
    assert_eigvals_close(eigvalsh(tridiagonal), torch.linalg.eigvalsh(tridiagonal))
    # Split into independent blocks by zeros on the off-diagonal.
    split = diagonal + torch.diag(e * (torch.arange(n - 1) % 7 != 3), -1)
    assert_eigvals_close(eigvalsh(split), torch.linalg.eigvalsh(split, UPLO="L"))


@pytest.mark.parametrize("n", (17, 200))
def test_float32(n):
    a = random_symmetric(n, seed=4, dtype=torch.float32)
    assert_eigvals_close(eigvalsh(a), torch.linalg.eigvalsh(a.double()), torch.float32)


def test_reads_lower_triangle_only():
    """The strict upper triangle is never read, NaN there included; strided inputs are fine."""
    n = 97
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = torch.linalg.eigvalsh(a, UPLO="L")
    assert_eigvals_close(eigvalsh(a), expected)
    assert_eigvals_close(eigvalsh(a.T.contiguous().T), expected)
    with_nan = a.clone()
    with_nan[torch.ones(n, n, dtype=torch.bool).triu(1)] = float("nan")
    assert_eigvals_close(eigvalsh(with_nan), expected)


@pytest.mark.parametrize("scale", (1e-250, 1e250))
def test_extreme_scale(scale):
    """Entries near the ends of the float64 range (rescaled by a power of two inside)."""
    a = random_symmetric(70, seed=6)
    assert_eigvals_close(eigvalsh(a * scale), torch.linalg.eigvalsh(a) * scale)


def test_nonfinite_gives_nan():
    a = random_symmetric(40, seed=7)
    a[20, 3] = float("inf")
    assert eigvalsh(a).isnan().all()


def test_single_thread():
    a = random_symmetric(150, seed=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = eigvalsh(a)
    finally:
        torch.set_num_threads(threads)
    assert_eigvals_close(got, torch.linalg.eigvalsh(a))


def test_argument_checks():
    with pytest.raises(RuntimeError, match="2-D"):
        eigvalsh(torch.zeros(2, 2, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="square"):
        eigvalsh(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float64 or float32"):
        eigvalsh(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="float64 or float32"):
        eigvalsh(torch.zeros(2, 2, dtype=torch.float16))
