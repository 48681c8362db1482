"""Matrix square roots for FID: ``fastgen::sqrtm_eigh``, ``fastgen::sqrtm_newton_schulz`` and
``fastgen::trace_sqrt_product``, each with a backward op; and ``fastgen::symmetrize_checked``, the
one-pass symmetrization and symmetry check of their inputs."""
from __future__ import annotations

import math

import torch

from fastgen.ops import _checks as checks
from fastgen.ops._library import Backend, OpSpec, cpp_backend, define, only_dtypes, triton_backend
from fastgen.ops.fid.reference import (
    sqrtm_backward_ref,
    sqrtm_eigh_ref,
    sqrtm_newton_schulz_ref,
    symmetrize_checked_ref,
    trace_sqrt_product_backward_ref,
    trace_sqrt_product_ref,
)

def _contiguous_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


_SQRTM_BACKWARD = OpSpec(
    name="sqrtm_backward",
    schema="(Tensor grad_x, Tensor x) -> Tensor",
    reference=sqrtm_backward_ref,
    fake=lambda grad_x, x: _contiguous_like(x),
)

SQRTM_EIGH = define(OpSpec(
    name="sqrtm_eigh",
    schema="(Tensor a) -> Tensor",
    reference=sqrtm_eigh_ref,
    fake=_contiguous_like,
    backward_inputs=(),
    backward_outputs=(0,),
    backward=_SQRTM_BACKWARD,
))

SQRTM_NEWTON_SCHULZ = define(OpSpec(
    name="sqrtm_newton_schulz",
    schema="(Tensor a, int max_iter, float tol) -> (Tensor, Tensor)",
    reference=sqrtm_newton_schulz_ref,
    fake=lambda a, max_iter, tol: (_contiguous_like(a), a.new_empty(a.shape[:-2])),
    backends=(triton_backend("fastgen.ops.fid.triton", "sqrtm_newton_schulz",
                             only_dtypes(torch.float32, torch.float64)),),
    no_grad_outputs=(1,),  # the residual
    backward_inputs=(),
    backward_outputs=(0,),
    backward=OpSpec(
        name="sqrtm_newton_schulz_backward",
        schema="(Tensor grad_x, Tensor x) -> Tensor",
        reference=sqrtm_backward_ref,
        fake=lambda grad_x, x: _contiguous_like(x),
    ),
))


SYMMETRIZE_CHECKED = define(OpSpec(
    name="symmetrize_checked",
    schema="(Tensor a) -> (Tensor, Tensor)",
    reference=symmetrize_checked_ref,
    fake=lambda a: (_contiguous_like(a), a.new_empty((*a.shape[:-2], 2))),
    backends=(cpp_backend("symmetrize_checked", only_dtypes(torch.float32, torch.float64)),),
    no_grad_outputs=(1,),  # the maxima of the check
))


def _cholesky_path():
    from fastgen.ops.fid.cholesky import trace_sqrt_product_cholesky
    return trace_sqrt_product_cholesky


TRACE_SQRT_PRODUCT = define(OpSpec(
    name="trace_sqrt_product",
    schema="(Tensor a, Tensor b) -> (Tensor, Tensor)",
    reference=trace_sqrt_product_ref,
    fake=lambda a, b: (a.new_empty(a.shape[:-2]), a.new_empty((*a.shape[:-2], 3))),
    # The Cholesky path is torch's BLAS and LAPACK: no native extension needed, CPU tensors only
    # (on a GPU the eigenvalue solve runs on the host anyway, and the reference is as good).
    backends=(Backend("cpu", lambda: ("cpu",), lambda: None, _cholesky_path,
                      only_dtypes(torch.float32, torch.float64)),),
    no_grad_outputs=(1,),  # the diagnostics
    backward=OpSpec(
        name="trace_sqrt_product_backward",
        schema="(Tensor grad, Tensor a, Tensor b) -> (Tensor, Tensor)",
        reference=trace_sqrt_product_backward_ref,
        fake=lambda grad, a, b: (_contiguous_like(a), _contiguous_like(b)),
    ),
))

METHODS = ("auto", "eigh", "newton_schulz")


def _check_square(name: str, a: object, *, finite: bool = True) -> None:
    """Shape, dtype and (with ``finite``) no NaN or Inf; ``_symmetrized`` finds those on its own pass."""
    checks.tensor(name, a)
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} must be a square matrix or a batch of them [..., n, n], got shape "
                         f"{tuple(a.shape)}")
    if a.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64 (LAPACK has no half types), got {a.dtype}")
    if a.numel() == 0:
        raise ValueError(f"{name} must not be empty (n >= 1, no empty batch), got shape {tuple(a.shape)}")
    if finite and not checks.all_finite(a):
        raise ValueError(f"{name} contains NaN or Inf")


def symmetry_tolerance(dtype: torch.dtype) -> float:
    """Relative asymmetry max|A - A^T| / max|A| accepted as rounding: sqrt(eps) of the dtype
    (covariances summed in another order, or computed in float32 and stored in float64, pass)."""
    return math.sqrt(torch.finfo(dtype).eps)


def asymmetry(a: torch.Tensor) -> float:
    """max|A - A^T| / max|A| over the batch (0 for a zero matrix)."""
    a = a.detach()
    scale = float(a.abs().max())
    return float((a - a.mT).abs().max()) / scale if scale > 0 else 0.0


def _asymmetry_error(name: str, relative: float, dtype: torch.dtype) -> ValueError:
    return ValueError(f"{name} must be symmetric: max|{name} - {name}^T| / max|{name}| = {relative:.3g} exceeds "
                      f"{symmetry_tolerance(dtype):.3g} (use method='newton_schulz' for a general matrix)")


def _check_symmetric(name: str, a: torch.Tensor) -> None:
    if torch.compiler.is_compiling():
        return
    if (rel := asymmetry(a)) > symmetry_tolerance(a.dtype):
        raise _asymmetry_error(name, rel, a.dtype)


def _symmetrized(name: str, a: torch.Tensor) -> torch.Tensor:
    """(a + a^T) / 2, after checking that a is symmetric to sqrt(eps) of its dtype (per matrix:
    max|a - a^T| / max|(a + a^T) / 2|; the latter is at most max|a|, so this is the stricter test,
    and equal for symmetric a)."""
    out, maxima = SYMMETRIZE_CHECKED.call(a)
    if torch.compiler.is_compiling():
        return out
    difference, largest = maxima.detach().reshape(-1, 2).unbind(-1)
    if largest.isnan().any():  # the kernel's NaN marks a NaN or Inf entry
        raise ValueError(f"{name} contains NaN or Inf")
    relative = torch.where(largest > 0, difference / largest.clamp_min(torch.finfo(a.dtype).tiny), difference)
    if not (worst := float(relative.max())) <= symmetry_tolerance(a.dtype):  # NaN fails too
        raise _asymmetry_error(name, worst, a.dtype)
    return out


def sqrtm(a: torch.Tensor, method: str = "auto", *, max_iter: int = 100, tol: float | None = None,
          impl: str = "auto") -> torch.Tensor:
    """The principal square root X of a (X @ X = a), for a matrix or a batch [..., n, n].

    ``method="eigh"``: a must be symmetric (to sqrt(eps) of its dtype, then read as (a + a^T) / 2)
    and positive semidefinite; X = U diag(sqrt(w)) U^T, with eigenvalues below zero from rounding
    (down to -sqrt(eps) max|w|) clamped to 0, and a ValueError for a truly indefinite a.
    ``method="newton_schulz"``: any a whose eigenvalues avoid the closed negative real axis; the
    coupled Newton-Schulz iteration (matrix products only: BLAS on the CPU, a Triton batched matmul
    for CUDA tensors), stopping when |I - ZY|_F <= tol (default sqrt(eps) of the dtype) or after
    ``max_iter`` iterations; a RuntimeError when the residual |X X - a|_F / |a|_F is still above
    ``tol``. ``method="auto"``: eigh when a is symmetric, else newton_schulz.

    Differentiable: the backward solves the Sylvester equation X^T G + G X^T = dX in X's
    eigenbasis (a singular a has no finite gradient along its null space: 0 there).
    """
    _check_square("a", a)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    checks.positive_int("max_iter", max_iter)
    tol = symmetry_tolerance(a.dtype) if tol is None else checks.positive_float("tol", tol)
    if method == "auto":
        method = "eigh" if torch.compiler.is_compiling() or asymmetry(a) <= symmetry_tolerance(a.dtype) \
            else "newton_schulz"
    elif method == "eigh":
        _check_symmetric("a", a)
    if method == "eigh":
        if not torch.compiler.is_compiling():
            w = torch.linalg.eigvalsh(a.detach())
            low, high = float(w.min()), float(w.abs().max())
            if low < -symmetry_tolerance(a.dtype) * high:
                raise ValueError(f"a must be positive semidefinite for method='eigh': its smallest eigenvalue "
                                 f"is {low:.6g} (largest magnitude {high:.6g}); its square root is complex")
        return SQRTM_EIGH.call(a, impl=impl)
    x, residual = SQRTM_NEWTON_SCHULZ.call(a, max_iter, tol, impl=impl)
    if not torch.compiler.is_compiling() and not (worst := float(residual.max())) <= tol:  # NaN fails too
        raise RuntimeError(f"sqrtm: Newton-Schulz did not converge in {max_iter} iterations: relative "
                           f"residual |X X - a|_F / |a|_F = {worst:.3g} > tol = {tol:.3g} (a may have "
                           "eigenvalues on or near the negative real axis, or need more iterations)")
    return x


def trace_sqrt_product(a: torch.Tensor, b: torch.Tensor, *, return_diagnostics: bool = False,
                       impl: str = "auto") -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
    """tr((a b)^1/2) for symmetric positive semidefinite a and b [n, n] (or batches [..., n, n]).

    The trace term of the Frechet distance, exact without a matrix square root: for a = L L^T,
    a b has the eigenvalues of the symmetric L^T b L, so a Cholesky factor, a blocked congruence and
    an eigenvalue-only symmetric solve give it (the CPU backend). When a is not positive definite
    (fewer samples than dimensions), the eigh formula tr((a^1/2 b a^1/2)^1/2) runs instead.
    Eigenvalues below zero (rounding) count as 0. a and b must be symmetric to sqrt(eps) of their
    dtype and are read as (a + a^T) / 2 (the op ``fastgen::trace_sqrt_product`` takes them
    symmetrized: its CPU kernel reads the lower triangle of a).

    With ``return_diagnostics=True`` also returns {"min_eigenvalue": smallest eigenvalue of the
    symmetric product before clamping, "clamped_mass": sum of the negative eigenvalues clamped (as a
    positive number), "fallback": whether the eigh formula ran}, over the batch (min, sum, any).
    Differentiable with respect to both (the gradient is infinite where an eigenvalue is 0: those
    directions get none).
    """
    _check_square("a", a, finite=False)
    _check_square("b", b, finite=False)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    checks.like("b", b, "a", a)
    trace, diag = TRACE_SQRT_PRODUCT.call(_symmetrized("a", a), _symmetrized("b", b), impl=impl)
    if not return_diagnostics:
        return trace
    diag = diag.detach().reshape(-1, 3)
    return trace, {"min_eigenvalue": float(diag[:, 0].min()), "clamped_mass": float(diag[:, 1].sum()),
                   "fallback": bool(diag[:, 2].max() > 0)}
