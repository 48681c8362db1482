"""Matrix square roots and tr((AB)^1/2) in plain torch: the specification and the oracle.

* ``sqrtm_eigh_ref``: the principal square root of a symmetric positive semidefinite matrix,
  U diag(sqrt(max(w, 0))) U^T from its eigendecomposition.
* ``sqrtm_newton_schulz_ref``: the coupled Newton-Schulz iteration (Higham, "Functions of
  Matrices", 6.3) for a general matrix whose eigenvalues lie off the closed negative real axis;
  only matrix products, which is why it suits GPUs. Returns X and the relative residual
  |X X - A|_F / |A|_F per matrix.
* ``sqrtm_backward_ref``: the gradient of both: for X = A^1/2, dA = Y with X^T Y + Y X^T = dX,
  solved in X's eigenbasis.
* ``symmetrize_checked_ref``: (A + A^T) / 2 and the maxima its symmetry check needs.
* ``trace_sqrt_product_ref``: tr((AB)^1/2) for symmetric PSD A and B as the nuclear norm of
  A^1/2 B^1/2, with eigenvalues of A and B below zero from rounding clamped.

All take batches [..., n, n]; half types are rejected by the public functions (LAPACK has none).
"""
from __future__ import annotations

import torch


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    return (a + a.mT) / 2


def symmetrize_checked_ref(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((A + A^T) / 2, [..., 2] = (max |A - A^T|, max |(A + A^T) / 2|)): what checking that A is
    symmetric needs; NaN maxima when A holds a NaN or Inf."""
    sym = symmetrize(a)
    poison = (a * 0).sum((-2, -1))  # NaN exactly when some entry is NaN or Inf
    stats = torch.stack([(a - a.mT).abs().amax((-2, -1)), sym.abs().amax((-2, -1))], -1)
    return sym, stats + poison.unsqueeze(-1)


def sqrtm_eigh_ref(a: torch.Tensor) -> torch.Tensor:
    """Exactly symmetric (so its backward takes the real eigenbasis)."""
    w, u = torch.linalg.eigh(symmetrize(a))
    return symmetrize((u * w.clamp_min(0).sqrt().unsqueeze(-2)) @ u.mT)


def _identity_like(a: torch.Tensor) -> torch.Tensor:
    return torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)


def newton_schulz_scale(a: torch.Tensor) -> torch.Tensor:
    """|A|_F per matrix, [..., 1, 1]: A / |A|_F has spectral radius <= 1, where the iteration converges."""
    return torch.linalg.matrix_norm(a).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]


def relative_residual(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """|X X - A|_F / |A|_F per matrix (0 for a zero A with a zero X)."""
    return torch.linalg.matrix_norm(x @ x - a) / newton_schulz_scale(a)[..., 0, 0]


def sqrtm_newton_schulz_ref(a: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, residual): Y -> A^1/2 / c^1/2 and Z -> (A / c)^-1/2 with T = (3I - ZY) / 2, Y <- YT, Z <- TZ.

    Stops one iteration after |I - ZY|_F <= tol holds for every matrix of the batch (convergence
    is quadratic by then, so that last step takes the error to about tol^2), or after max_iter.
    """
    scale = newton_schulz_scale(a)
    eye = _identity_like(a)
    y, z = a / scale, eye
    for _ in range(max_iter):
        zy = z @ y
        converged = float(torch.linalg.matrix_norm(eye - zy).max()) <= tol
        t = 1.5 * eye - 0.5 * zy
        y, z = y @ t, t @ z
        if converged:
            break
    x = y * scale.sqrt()
    return x, relative_residual(x, a)


def sqrtm_backward_ref(grad_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Y with X^T Y + Y X^T = grad_x, for X = A^1/2 (so dL/dA = Y).

    With X^T = V S V^-1 (eigenvalues s), Y = V ((V^-1 G V) / (s_i + s_j)) V^-1. A symmetric X uses
    its real orthogonal eigenbasis; otherwise the complex one (X must be diagonalizable). Where
    s_i + s_j is 0 (a singular A) the gradient is infinite: it is taken as 0 along those directions.
    """
    def solve(denominator: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.where(denominator == 0, 0, g / torch.where(denominator == 0, 1, denominator))

    if bool(torch.equal(x, x.mT)):
        s, v = torch.linalg.eigh(x)
        return v @ solve(s.unsqueeze(-1) + s.unsqueeze(-2), v.mT @ grad_x @ v) @ v.mT
    s, v = torch.linalg.eig(x.mT)
    g = torch.linalg.solve(v, grad_x.to(v.dtype) @ v)
    y = v @ solve(s.unsqueeze(-1) + s.unsqueeze(-2), g) @ torch.linalg.inv(v)
    return y.real.contiguous()


def _psd_sqrt_and_eigenvalues(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w, u = torch.linalg.eigh(symmetrize(a))
    return (u * w.clamp_min(0).sqrt().unsqueeze(-2)) @ u.mT, w


def trace_sqrt_product_ref(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tr((AB)^1/2), diagnostics) as the nuclear norm |A^1/2 B^1/2|_*: AB = A^1/2 (A^1/2 B) is
    similar to (A^1/2 B^1/2)(A^1/2 B^1/2)^T, so its eigenvalues are the squared singular values of
    K = A^1/2 B^1/2. Singular values come with an absolute error of about eps |K|, where square roots
    of eigenvalues amplify the rounding of near-zero ones to sqrt(eps |K|^2): this is the form that
    stays accurate for singular covariances (fewer samples than dimensions).

    diagnostics = [smallest eigenvalue of A and B, sum of their eigenvalues below zero (rounding)
    clamped to 0 as a positive mass, 1.0 ("the general PSD path ran")].
    """
    root_a, eigenvalues_a = _psd_sqrt_and_eigenvalues(a)
    root_b, eigenvalues_b = _psd_sqrt_and_eigenvalues(b)
    trace = torch.linalg.svdvals(root_a @ root_b).sum(-1)
    return trace, diagnostics(torch.cat([eigenvalues_a, eigenvalues_b], -1), fallback=True)


def diagnostics(eigenvalues: torch.Tensor, fallback: bool) -> torch.Tensor:
    return torch.stack([eigenvalues.min(-1).values, (-eigenvalues).clamp_min(0).sum(-1),
                        torch.full_like(eigenvalues[..., 0], float(fallback))], -1)


def trace_sqrt_product_backward_ref(grad: torch.Tensor, a: torch.Tensor,
                                    b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d tr((AB)^1/2) / dB = 1/2 A^1/2 (A^1/2 B A^1/2)^-1/2 A^1/2, and the same with A and B swapped.

    Both are symmetric (the op reads A and B through (A + A^T) / 2). Eigenvalues of the inner
    matrix at or below zero have an infinite derivative; their directions get no gradient.
    """
    def grad_wrt_second(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        root = sqrtm_eigh_ref(first)
        w, v = torch.linalg.eigh(symmetrize(root @ symmetrize(second) @ root))
        inv_sqrt = torch.where(w > 0, w.clamp_min(torch.finfo(w.dtype).tiny).rsqrt(), 0)
        inner = (v * inv_sqrt.unsqueeze(-2)) @ v.mT
        return (grad[..., None, None] / 2) * (root @ inner @ root)

    return grad_wrt_second(b, a), grad_wrt_second(a, b)
