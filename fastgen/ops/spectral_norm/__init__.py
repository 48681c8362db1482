"""Spectral-norm power iteration: ``fastgen::spectral_norm_step`` and its backward op."""
from __future__ import annotations

import math

import torch

from fastgen.ops import _checks as checks
from fastgen.ops._library import (
    OpSpec,
    cpp_backend,
    cuda_backend,
    define,
    only_dtypes,
    triton_backend,
)
from fastgen.ops.spectral_norm.reference import spectral_norm_step_backward_ref, spectral_norm_step_ref

_SCHEMA = "(Tensor weight_mat, Tensor u, Tensor v, int n_power_iterations, float eps)"


SPECTRAL_NORM_STEP = define(OpSpec(
    name="spectral_norm_step",
    schema=_SCHEMA + " -> (Tensor, Tensor, Tensor)",
    reference=spectral_norm_step_ref,
    fake=lambda weight_mat, u, v, n_power_iterations, eps: (
        weight_mat.new_empty(()), torch.empty_like(u), torch.empty_like(v)),
    backends=(cpp_backend("spectral_norm_step"),
              triton_backend("fastgen.ops.spectral_norm.triton", "spectral_norm_step"),
              cuda_backend("spectral_norm_step", only_dtypes(torch.float32, torch.float64))),
    # No gradient through the power iteration: sigma = u^T W v with u and v held fixed.
    no_grad_inputs=("u", "v"),
    no_grad_outputs=(1, 2),
    # d sigma / d W = u_new v_new^T needs neither W nor the u, v given (often buffers updated in place).
    backward_inputs=(),
    backward_outputs=(1, 2),
    backward=OpSpec(
        name="spectral_norm_step_backward",
        schema="(Tensor grad_sigma, Tensor u_new, Tensor v_new) -> Tensor",
        reference=spectral_norm_step_backward_ref,
        fake=lambda grad_sigma, u_new, v_new: u_new.new_empty((u_new.shape[0], v_new.shape[0])),
    ),
))


def _check_vector(name: str, t: object, length: int, weight_mat: torch.Tensor) -> None:
    checks.tensor(name, t)
    if tuple(t.shape) != (length,):
        raise ValueError(f"{name} must have shape [{length}] to match weight_mat {tuple(weight_mat.shape)}, "
                         f"got {tuple(t.shape)}")
    checks.like(name, t, "weight_mat", weight_mat)


def check_inputs(weight_mat: object, u: object, v: object, n_power_iterations: object, eps: object) -> None:
    """Shape, dtype, device and argument checks shared by the op and the spectral_norm module."""
    checks.tensor("weight_mat", weight_mat)
    if weight_mat.dim() != 2:
        raise ValueError(f"weight_mat must be 2-D [out, in], got shape {tuple(weight_mat.shape)}")
    if weight_mat.numel() == 0:
        raise ValueError(f"weight_mat must not be empty, got shape {tuple(weight_mat.shape)}")
    checks.float_dtype("weight_mat", weight_mat)
    _check_vector("u", u, weight_mat.shape[0], weight_mat)
    _check_vector("v", v, weight_mat.shape[1], weight_mat)
    checks.positive_int("n_power_iterations", n_power_iterations)
    checks.positive_float("eps", eps)


def spectral_norm_step(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int = 1,
                       eps: float = 1e-12, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_power_iterations`` of power iteration on W [M, N] from u [M], v [N]; returns (sigma, u_new, v_new).

    Matches ``torch.nn.utils.parametrizations.spectral_norm``: u = normalize(W v), v = normalize(W^T u)
    with normalize(a) = a / max(|a|, eps), then sigma = u^T W v. sigma (a 0-dim tensor) is
    differentiable with respect to ``weight_mat`` with u and v held fixed (d sigma / d W = u v^T);
    u_new and v_new carry no gradient. A weight with NaN or Inf raises ValueError (checked on
    sigma, outside torch.compile). An all-zero weight gives sigma = 0 and zero u, v.
    """
    check_inputs(weight_mat, u, v, n_power_iterations, eps)
    sigma, u_new, v_new = SPECTRAL_NORM_STEP.call(weight_mat, u, v, n_power_iterations, float(eps), impl=impl)
    # item() rather than torch.isfinite: a 0-dim tensor op costs more than this whole check.
    if not torch.compiler.is_compiling() and not math.isfinite(sigma.item()):
        raise ValueError("weight_mat contains NaN or Inf: its spectral norm is not finite")
    return sigma, u_new, v_new
