"""tr((AB)^1/2) through a Cholesky factor: the fast exact path (BLAS and LAPACK of torch and numpy).

For A = L L^T (positive definite), AB = L (L^T B L) L^-1, so AB has the eigenvalues of the
symmetric M = L^T B L, and tr((AB)^1/2) = sum sqrt(eig(M)): one Cholesky (n^3/3 flops), the
congruence L^T B L in blocks that skip L's zero triangle (4n^3/3 flops instead of 4n^3), and an
eigenvalue-only symmetric solve. The general formulas cost far more: scipy's sqrtm a Schur
decomposition of AB, eigvals(AB) a nonsymmetric Hessenberg QR, and the eigh formula a full
eigendecomposition of A.

All three run in numpy's BLAS and LAPACK (OpenBLAS; the factorizations in place through
``_numpy_lapack``), not torch's (MKL), which on this project's AMD CPUs is slower: at d = 2048 a
float64 product took ~30% longer, and the eigenvalue solve 355-380 ms against 310-340 (outliers to
520 against 400; alternating the two, 10 calls each). Mixing the two also costs: OpenBLAS's idle
threads spin for a while after each call, and slowed the torch work that followed by ~40%. Where
numpy has no bundled OpenBLAS, torch's Cholesky and ``numpy.linalg.eigvalsh`` run instead.

The square root of an eigenvalue near 0 amplifies its rounding error (about eps |M|) to
sqrt(eps |M|). A singular B gives M eigenvalues that are pure rounding, some of them negative; so
when the Cholesky fails (A singular: fewer samples than dimensions) or M has an eigenvalue <= 0,
the reference runs instead: a nuclear norm, accurate there. The diagnostics say which ran.
"""
from __future__ import annotations

import numpy as np
import torch

from fastgen.ops.fid import _numpy_lapack
from fastgen.ops.fid.reference import diagnostics, trace_sqrt_product_ref

# Columns per block of the congruence: big enough for BLAS to run near peak, small enough that
# the work skipped in L's zero upper triangle is most of it (at d = 2048 float64: 146-155 ms with
# 128, 153-165 with 256, 166-180 with 512).
_BLOCK = 128


def upper_congruence(lower: np.ndarray, b: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """L^T B L for lower-triangular L and symmetric B, correct on and above the diagonal (below it:
    the symmetric entries inside diagonal blocks, garbage elsewhere). L's upper triangle must be 0
    inside its diagonal blocks; above them it is never read."""
    n = lower.shape[-1]
    # D = (B L)^T = L^T B; row block j of L^T is zero left of column j.
    d = np.empty_like(b, order="C")
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        np.matmul(lower[j0:, j0:j1].T, b[j0:], out=d[j0:j1])
    # M[:i1, i-block] = D[:i1] L[:, i-block], and L[:, i-block] is zero above row i0.
    m = np.empty_like(d)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        np.matmul(d[:i1, i0:], lower[i0:, i0:i1], out=m[:i1, i0:i1])
    return m


def _zero_above_diagonal_blocks(x: np.ndarray, block: int = _BLOCK) -> None:
    for k0 in range(0, x.shape[0], block):
        tile = x[k0:k0 + block, k0:k0 + block]
        tile[...] = np.tril(tile)


def trace_sqrt_product_cholesky(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same results as ``trace_sqrt_product_ref`` for symmetric a and b (of a, only the lower
    triangle is read); diagnostics[2] is 1.0 when that reference ran."""
    if a.dim() != 2:
        return trace_sqrt_product_ref(a, b)
    lapack = _numpy_lapack.load()
    if lapack is None:
        lower, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            return trace_sqrt_product_ref(a, b)
        lower_np = lower.numpy()
    else:
        lower_np = np.array(a.numpy(), order="C")  # factorized in place: a copy of a
        if lapack.cholesky_lower_in_place(lower_np) != 0:
            return trace_sqrt_product_ref(a, b)
        _zero_above_diagonal_blocks(lower_np)
    m = upper_congruence(lower_np, b.numpy())
    # LAPACK reduces m's upper triangle as its lower one either way (see _numpy_lapack).
    eigenvalues = torch.from_numpy(lapack.eigvalsh_of_upper_in_place(m) if lapack is not None
                                   else np.linalg.eigvalsh(m.T, UPLO="L"))
    if float(eigenvalues.min()) <= 0:
        return trace_sqrt_product_ref(a, b)
    return eigenvalues.clamp_min(0).sqrt().sum(-1), diagnostics(eigenvalues, fallback=False)
