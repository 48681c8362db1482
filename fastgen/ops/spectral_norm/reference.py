"""One spectral-norm step in plain torch: the specification and the test oracle.

Power iteration as ``torch.nn.utils.parametrizations.spectral_norm`` does it, for a
2-D weight W [M, N] and vectors u [M], v [N]:

    repeat n_power_iterations times:
        u = normalize(W v)      normalize(a) = a / max(||a||, eps)
        v = normalize(W^T u)
    sigma = u^T W v             u and v detached: d sigma / d W = u v^T

Half-precision inputs are computed in float32 and rounded once at the end; eps is
applied in float32 there, so it never rounds to zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.ops._library import to_accumulation_dtype as _acc


def power_iteration_ref(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                        n_power_iterations: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """u and v after ``n_power_iterations`` steps, in the accumulation dtype, without gradient."""
    with torch.no_grad():
        w, u, v = _acc(weight_mat), _acc(u), _acc(v)
        for _ in range(n_power_iterations):
            u = F.normalize(torch.mv(w, v), dim=0, eps=eps)
            v = F.normalize(torch.mv(w.t(), u), dim=0, eps=eps)
    return u, v


def spectral_norm_step_ref(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                           n_power_iterations: int, eps: float):
    """(sigma, u_new, v_new): sigma is a 0-dim tensor, differentiable with respect to weight_mat."""
    u_new, v_new = power_iteration_ref(weight_mat, u, v, n_power_iterations, eps)
    sigma = torch.dot(u_new, torch.mv(_acc(weight_mat), v_new))
    return sigma.to(weight_mat.dtype), u_new.to(u.dtype), v_new.to(v.dtype)


def spectral_norm_step_backward_ref(grad_sigma: torch.Tensor, u_new: torch.Tensor,
                                    v_new: torch.Tensor) -> torch.Tensor:
    """d weight_mat = grad_sigma * u_new v_new^T (u_new, v_new are the forward's outputs, in W's dtype)."""
    grad = _acc(grad_sigma) * torch.outer(_acc(u_new), _acc(v_new))
    return grad.to(u_new.dtype)
