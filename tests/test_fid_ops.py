"""Parity of the matrix square root ops (sqrtm, trace_sqrt_product) across backends and with scipy."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import fastgen
from fastgen.ops import BackendUnavailableError
from fastgen.ops.fid import SQRTM_EIGH, SQRTM_NEWTON_SCHULZ, SYMMETRIZE_CHECKED, TRACE_SQRT_PRODUCT
from fastgen.ops.fid import _numpy_lapack
from fastgen.ops.fid.cholesky import upper_congruence
from fastgen.ops.fid.reference import symmetrize_checked_ref, trace_sqrt_product_ref
from fastgen.testing import backends_for

# Relative tolerances per dtype for these dense factorizations (conditioning ~1e2 test matrices).
RTOL = {torch.float64: 1e-10, torch.float32: 2e-4}
SIZES = (1, 2, 3, 17, 64, 129)


def spd(n, dtype=torch.float64, *, seed=0, rank=None, batch=()):
    """A symmetric positive (semi)definite matrix with eigenvalues in [0.1, 10] (rank < n: semidefinite)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=gen, dtype=torch.float64))
    w = 0.1 + 9.9 * torch.rand(*batch, n, generator=gen, dtype=torch.float64)
    if rank is not None:
        w[..., rank:] = 0
    return ((q * w.unsqueeze(-2)) @ q.mT).to(dtype)


def general(n, dtype=torch.float64, *, seed=0):
    """A nonsymmetric matrix with eigenvalues near 1..2 (well off the negative real axis)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.eye(n, dtype=torch.float64) * 1.5 + 0.3 * torch.randn(n, n, generator=gen,
                                                                        dtype=torch.float64) / n ** 0.5).to(dtype)


def rel_err(actual, expected):
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_sqrtm_squares_back_and_matches_scipy(method, n, dtype):
    a = spd(n, dtype, seed=n)
    x = fastgen.ops.sqrtm(a, method)
    assert x.dtype == dtype and x.shape == a.shape
    assert rel_err(x @ x, a) < RTOL[dtype]
    expected = torch.from_numpy(np.real(scipy.linalg.sqrtm(a.double().numpy())))
    assert rel_err(x, expected) < RTOL[dtype]


@pytest.mark.parametrize("n", (1, 5, 40))
def test_sqrtm_general_matrix_matches_scipy(n):
    a = general(n, seed=n)
    x = fastgen.ops.sqrtm(a)  # auto: not symmetric -> Newton-Schulz
    expected = torch.from_numpy(np.real(scipy.linalg.sqrtm(a.numpy())))
    assert rel_err(x, expected) < 1e-10


def test_sqrtm_batched_and_non_contiguous():
    a = spd(9, seed=3, batch=(2, 3))
    strided = spd(18, seed=4)[::2, ::2]  # every other row and column: not dense, still SPD
    for method in ("eigh", "newton_schulz"):
        x = fastgen.ops.sqrtm(a, method)
        for index in np.ndindex(2, 3):
            assert rel_err(x[index], fastgen.ops.sqrtm(a[index].contiguous(), method)) < 1e-12
        assert rel_err(fastgen.ops.sqrtm(strided, method), fastgen.ops.sqrtm(strided.contiguous(), method)) < 1e-12


def test_sqrtm_eigh_clamps_rounding_on_semidefinite():
    a = spd(12, seed=5, rank=4)
    x = fastgen.ops.sqrtm(a, "eigh")
    assert torch.isfinite(x).all() and rel_err(x @ x, a) < 1e-12


@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_sqrtm_gradcheck_float64(method):
    a = spd(6, seed=6)
    fn = (lambda m: fastgen.ops.sqrtm((m + m.mT) / 2, method)) if method == "eigh" else \
        (lambda m: fastgen.ops.sqrtm(m, method))
    assert torch.autograd.gradcheck(fn, (a.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda m: fastgen.ops.sqrtm(m, "newton_schulz"),
                                    (general(5, seed=7).requires_grad_(),))


TRACE_BACKENDS = backends_for(TRACE_SQRT_PRODUCT)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend", TRACE_BACKENDS)
def test_trace_sqrt_product_matches_scipy(backend, n, dtype):
    a, b = spd(n, dtype, seed=10 + n), spd(n, dtype, seed=20 + n)
    trace, info = fastgen.ops.trace_sqrt_product(a, b, return_diagnostics=True, impl=backend)
    expected = np.trace(scipy.linalg.sqrtm(a.double().numpy() @ b.double().numpy())).real
    assert trace.dtype == dtype
    assert abs(float(trace) - expected) <= RTOL[dtype] * expected
    if backend == "ref" or dtype == torch.float64:  # in float32 the near-singular margin decides
        assert info["fallback"] == (backend == "ref")
    assert info["clamped_mass"] == 0 and info["min_eigenvalue"] > 0


@pytest.mark.parametrize("backend", TRACE_BACKENDS)
def test_trace_sqrt_product_diagonal_closed_form(backend):
    a, b = torch.rand(50, dtype=torch.float64) + 0.1, torch.rand(50, dtype=torch.float64) + 0.1
    trace = fastgen.ops.trace_sqrt_product(torch.diag(a), torch.diag(b), impl=backend)
    assert abs(float(trace) - float((a * b).sqrt().sum())) < 1e-12


@pytest.mark.parametrize("singular", ["a", "b", "both"])
def test_trace_sqrt_product_singular_falls_back_and_stays_exact(singular):
    a = spd(40, seed=30, rank=10 if singular in ("a", "both") else None)
    b = spd(40, seed=31, rank=15 if singular in ("b", "both") else None)
    trace, info = fastgen.ops.trace_sqrt_product(a, b, return_diagnostics=True)
    assert info["fallback"]
    # tr((A A)^1/2) = tr(A) exactly for PSD A: the nuclear-norm form keeps it to rounding even
    # with 30 zero eigenvalues (square roots of rounded eigenvalues would be off by ~1e-7 each).
    assert abs(float(fastgen.ops.trace_sqrt_product(a, a)) - float(a.trace())) < 1e-12 * float(a.trace())
    expected = np.trace(scipy.linalg.sqrtm(a.numpy() @ b.numpy())).real
    assert abs(float(trace) - expected) < 1e-6 * expected  # scipy itself loses digits on singular products


def test_trace_sqrt_product_batched():
    a, b = spd(7, seed=40, batch=(3,)), spd(7, seed=41, batch=(3,))
    trace = fastgen.ops.trace_sqrt_product(a, b)
    assert trace.shape == (3,)
    for i in range(3):
        assert abs(float(trace[i]) - float(fastgen.ops.trace_sqrt_product(a[i], b[i]))) < 1e-12


@pytest.mark.parametrize("n,block", [(1, 4), (5, 2), (300, 64), (256, 256)])
def test_upper_congruence_is_the_upper_triangle_of_lt_b_l(n, block):
    lower = torch.linalg.cholesky(spd(n, seed=n))
    b = spd(n, seed=n + 1)
    expected = (lower.mT @ b @ lower).triu()
    got = torch.from_numpy(upper_congruence(lower.numpy(), b.numpy(), block)).triu()
    assert rel_err(got, expected) < 1e-13


NUMPY_LAPACK = _numpy_lapack.load()
needs_numpy_lapack = pytest.mark.skipif(NUMPY_LAPACK is None, reason="this numpy bundles no OpenBLAS")


@needs_numpy_lapack
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", (1, 7, 130))
def test_numpy_lapack_in_place_routines_match_numpy_linalg(n, dtype):
    a = spd(n, seed=n).numpy().astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12

    def close(actual, expected):
        return np.abs(actual - expected).max() <= tol * np.abs(expected).max()

    x = a.copy()
    x[np.triu_indices(n, 1)] = 7.0  # never read: only the lower triangle goes in
    assert NUMPY_LAPACK.cholesky_lower_in_place(x) == 0
    assert close(np.tril(x), np.linalg.cholesky(a))
    assert np.all(x[np.triu_indices(n, 1)] == 7.0)
    y = a.copy()
    y[np.tril_indices(n, -1)] = np.nan  # never read: only the upper triangle goes in
    assert close(NUMPY_LAPACK.eigvalsh_of_upper_in_place(y), np.linalg.eigvalsh(a))


@needs_numpy_lapack
def test_numpy_lapack_reports_a_matrix_that_is_not_positive_definite():
    x = -np.eye(4)
    assert NUMPY_LAPACK.cholesky_lower_in_place(x) > 0


def test_cholesky_path_without_numpy_lapack_gives_the_same_trace(monkeypatch):
    a, b = spd(150, seed=95), spd(150, seed=96)
    with_lapack = fastgen.ops.trace_sqrt_product(a, b, impl="cpu")
    monkeypatch.setattr(_numpy_lapack, "load", lambda: None)
    trace, info = fastgen.ops.trace_sqrt_product(a, b, impl="cpu", return_diagnostics=True)
    assert not info["fallback"] and abs(float(trace) - float(with_lapack)) < 1e-12 * float(trace)


@pytest.mark.parametrize("backend", TRACE_BACKENDS)
def test_trace_sqrt_product_gradcheck_float64(backend):
    a, b = spd(5, seed=50), spd(5, seed=51)
    assert torch.autograd.gradcheck(
        lambda x, y: fastgen.ops.trace_sqrt_product((x + x.mT) / 2, (y + y.mT) / 2, impl=backend),
        (a.requires_grad_(), b.requires_grad_()))


SYMMETRIZE_BACKENDS = backends_for(SYMMETRIZE_CHECKED)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (31, 31), (33, 33), (2, 3, 70, 70)])
@pytest.mark.parametrize("backend", SYMMETRIZE_BACKENDS)
def test_symmetrize_checked_matches_formula(backend, shape, dtype):
    a = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(shape[-1]))
    for x in (a, a.mT):  # a transposed view is not contiguous
        sym, maxima = SYMMETRIZE_CHECKED.call(x, impl=backend)
        assert sym.shape == x.shape and maxima.shape == (*x.shape[:-2], 2)
        assert torch.equal(sym, (x + x.mT) / 2)  # one rounding either way: bit equal
        assert torch.equal(maxima[..., 0], (x - x.mT).abs().amax((-2, -1)))
        assert torch.equal(maxima[..., 1], ((x + x.mT) / 2).abs().amax((-2, -1)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", SYMMETRIZE_BACKENDS)
def test_symmetrize_checked_flags_nan_and_inf(backend, bad):
    a = torch.randn(3, 40, 40, dtype=torch.float64)
    a[1, 35, 2] = bad
    maxima = SYMMETRIZE_CHECKED.call(a, impl=backend)[1]
    assert maxima[1].isnan().all() and maxima[[0, 2]].isfinite().all()


def test_symmetrize_checked_gradcheck_and_compile():
    a = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: SYMMETRIZE_CHECKED.call(x)[0], (a,))
    compiled = torch.compile(lambda x: SYMMETRIZE_CHECKED.call(x), fullgraph=True)(a.detach())
    for got, want in zip(compiled, symmetrize_checked_ref(a.detach())):
        assert torch.equal(got, want)


def test_opcheck():
    a, b = spd(6, seed=60), spd(6, seed=61)
    for backend in backends_for(SQRTM_EIGH):
        torch.library.opcheck(SQRTM_EIGH.op, (a.clone().requires_grad_(), backend))
    for backend in backends_for(SQRTM_NEWTON_SCHULZ):
        torch.library.opcheck(SQRTM_NEWTON_SCHULZ.op, (a.clone().requires_grad_(), 50, 1e-8, backend))
    for backend in TRACE_BACKENDS:
        torch.library.opcheck(TRACE_SQRT_PRODUCT.op, (a.clone().requires_grad_(), b.clone().requires_grad_(),
                                                      backend))
    for backend in SYMMETRIZE_BACKENDS:
        torch.library.opcheck(SYMMETRIZE_CHECKED.op, (general(7).requires_grad_(), backend))
    x = fastgen.ops.sqrtm(a)
    torch.library.opcheck(torch.ops.fastgen.sqrtm_backward.default, (torch.randn(6, 6, dtype=torch.float64), x))
    torch.library.opcheck(torch.ops.fastgen.trace_sqrt_product_backward.default,
                          (torch.tensor(1.0, dtype=torch.float64), a, b))


def test_torch_compile_fullgraph_matches_eager():
    a, b = spd(8, seed=70), spd(8, seed=71)

    def fid_trace(x, y):
        return fastgen.ops.trace_sqrt_product(x, y) + fastgen.ops.sqrtm(x, "eigh").trace()

    leaves = [(a.clone().requires_grad_(), b.clone().requires_grad_()) for _ in range(2)]
    compiled = torch.compile(fid_trace, fullgraph=True)(*leaves[0])
    eager = fid_trace(*leaves[1])
    assert abs(float(compiled) - float(eager)) < 1e-12
    compiled.backward()
    eager.backward()
    for got, want in zip(leaves[0], leaves[1]):
        assert rel_err(got.grad, want.grad) < 1e-10


def test_forced_backend_that_cannot_run_names_why():
    a = spd(4)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        fastgen.ops.trace_sqrt_product(a, a, impl="cuda")
    with pytest.raises(BackendUnavailableError, match="cpu.*runs on cpu|float32 or float64|dtype"):
        TRACE_SQRT_PRODUCT.select("cpu", (a.half(), a.half()))


def test_env_forces_reference(monkeypatch):
    a, b = spd(30, seed=80), spd(30, seed=81)
    monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    _, info = fastgen.ops.trace_sqrt_product(a, b, return_diagnostics=True)
    assert info["fallback"]  # the reference ran


@pytest.mark.parametrize("call,error,match", [
    (lambda: fastgen.ops.sqrtm(torch.ones(3, 4, dtype=torch.float64)), ValueError, r"a must be a square matrix.*\(3, 4\)"),
    (lambda: fastgen.ops.sqrtm(torch.ones(3, dtype=torch.float64)), ValueError, "square matrix"),
    (lambda: fastgen.ops.sqrtm(torch.ones(3, 3, dtype=torch.float16)), TypeError, "float32 or float64"),
    (lambda: fastgen.ops.sqrtm(torch.ones(3, 3, dtype=torch.int64)), TypeError, "float32 or float64"),
    (lambda: fastgen.ops.sqrtm([[1.0]]), TypeError, "a must be a torch.Tensor"),
    (lambda: fastgen.ops.sqrtm(torch.empty(0, 0, dtype=torch.float64)), ValueError, "must not be empty"),
    (lambda: fastgen.ops.sqrtm(torch.full((2, 2), float("nan"), dtype=torch.float64)), ValueError, "NaN"),
    (lambda: fastgen.ops.sqrtm(general(4), "eigh"), ValueError, "must be symmetric"),
    (lambda: fastgen.ops.sqrtm(-spd(4), "eigh"), ValueError, "positive semidefinite.*smallest eigenvalue"),
    (lambda: fastgen.ops.sqrtm(spd(4), "cholesky"), ValueError, "method must be one of"),
    (lambda: fastgen.ops.sqrtm(spd(4), "newton_schulz", max_iter=0), ValueError, "max_iter must be an int >= 1"),
    (lambda: fastgen.ops.sqrtm(-torch.eye(3, dtype=torch.float64) + 0.01 * general(3), "newton_schulz"),
     RuntimeError, "did not converge"),
    (lambda: fastgen.ops.trace_sqrt_product(spd(3), spd(4)), ValueError, "same shape"),
    (lambda: fastgen.ops.trace_sqrt_product(spd(3), general(3)), ValueError, "b must be symmetric"),
    (lambda: fastgen.ops.trace_sqrt_product(spd(3), spd(3).index_put_((torch.tensor(1), torch.tensor(2)),
                                                                     torch.tensor(float("inf"), dtype=torch.float64))),
     ValueError, "b contains NaN or Inf"),
    (lambda: fastgen.ops.trace_sqrt_product(torch.full((3, 3), float("nan"), dtype=torch.float64), spd(3)),
     ValueError, "a contains NaN or Inf"),
    (lambda: fastgen.ops.trace_sqrt_product(spd(3), spd(3, torch.float32)), TypeError, "dtype of a"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reference_and_cholesky_agree_on_realistic_statistics():
    # Covariances of post-ReLU random features (like Inception pool features): a decaying spectrum.
    gen = torch.Generator().manual_seed(90)
    n, d = 600, 256
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64) * torch.arange(1, d + 1, dtype=torch.float64) ** -0.7
    covs = [torch.cov(torch.relu(torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix).mT) for _ in range(2)]
    fast = fastgen.ops.trace_sqrt_product(*covs, impl="cpu")
    assert abs(float(fast) - float(trace_sqrt_product_ref(*covs)[0])) < 1e-11 * float(fast)
