"""tr((AB)^1/2) through a Cholesky factor: the fast exact path (BLAS and LAPACK of torch and numpy).

For A = L L^T (positive definite), AB = L (L^T B L) L^-1, so AB has the eigenvalues of the
symmetric M = L^T B L, and tr((AB)^1/2) = sum sqrt(eig(M)): one Cholesky (n^3/3 flops), the
congruence L^T B L in blocks that skip L's zero triangle (4n^3/3 flops instead of 4n^3), and an
eigenvalue-only symmetric solve. The general formulas cost far more: scipy's sqrtm a Schur
decomposition of AB, eigvals(AB) a nonsymmetric Hessenberg QR, and the eigh formula a full
eigendecomposition of A.

The congruence and the eigenvalue solve run in numpy's BLAS and LAPACK (OpenBLAS), not torch's
(MKL), which on this project's AMD CPUs is slower for both: at d = 2048 a float64 product took
~30% longer, and the solve 355-380 ms against 310-340 (outliers to 520 against 400; alternating
the two, 10 calls each). The Cholesky stays in torch: numpy's copies its input twice.

The square root of an eigenvalue near 0 amplifies its rounding error (about eps |M|) to
sqrt(eps |M|). A singular B gives M eigenvalues that are pure rounding, some of them negative; so
when the Cholesky fails (A singular: fewer samples than dimensions) or M has an eigenvalue <= 0,
the reference runs instead: a nuclear norm, accurate there. The diagnostics say which ran.
"""
from __future__ import annotations

import numpy as np
import torch

from fastgen.ops.fid.reference import diagnostics, trace_sqrt_product_ref

# Columns per block of the congruence: big enough for BLAS to run near peak, small enough that
# the work skipped in L's zero upper triangle is most of it.
_BLOCK = 256


def lower_congruence(lower: torch.Tensor, b: torch.Tensor, block: int = _BLOCK) -> torch.Tensor:
    """L^T B L for lower-triangular L and symmetric B, correct on and below the diagonal (above it:
    the symmetric entries inside diagonal blocks, garbage elsewhere: read it with UPLO="L")."""
    lower_np, b_np = lower.numpy(), b.numpy()
    n = lower.shape[-1]
    # D = (B L)^T = L^T B; row block j of L^T is zero left of column j.
    d = np.empty_like(b_np, order="C")
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        np.matmul(lower_np[j0:, j0:j1].T, b_np[j0:], out=d[j0:j1])
    # M[i-block, :i1] = L[:, i-block]^T (B L)[:, :i1]; L[:, i-block] is zero above row i0. The
    # strict upper triangle outside the diagonal blocks is never written: UPLO="L" never reads it.
    m = np.empty_like(d)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        np.matmul(lower_np[i0:, i0:i1].T, d[:i1, i0:].T, out=m[i0:i1, :i1])
    return torch.from_numpy(m)


def trace_sqrt_product_cholesky(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same results as ``trace_sqrt_product_ref`` for symmetric a and b (of a, only the lower
    triangle is read); diagnostics[2] is 1.0 when that reference ran."""
    if a.dim() != 2:
        return trace_sqrt_product_ref(a, b)
    lower, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        return trace_sqrt_product_ref(a, b)
    eigenvalues = torch.from_numpy(np.linalg.eigvalsh(lower_congruence(lower, b).numpy(), UPLO="L"))
    if float(eigenvalues.min()) <= 0:
        return trace_sqrt_product_ref(a, b)
    return eigenvalues.clamp_min(0).sqrt().sum(-1), diagnostics(eigenvalues, fallback=False)
