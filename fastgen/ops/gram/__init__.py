"""Gram matrices: ``fastgen::gram_matrix`` and its backward op (the style loss of neural style transfer)."""
from __future__ import annotations

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
from fastgen.ops.gram.reference import gram_matrix_backward_ref, gram_matrix_ref

_TRITON = "fastgen.ops.gram.triton"
# The C++ and CUDA kernels compute in the input dtype; half types go to the reference or Triton.
_native_dtypes = only_dtypes(torch.float32, torch.float64)


def _backends(kernel: str) -> tuple:
    return (cpp_backend(kernel, _native_dtypes), triton_backend(_TRITON, kernel),
            cuda_backend(kernel, _native_dtypes))


GRAM_MATRIX = define(OpSpec(
    name="gram_matrix",
    schema="(Tensor features) -> Tensor",
    reference=gram_matrix_ref,
    fake=lambda features: features.new_empty(features.shape[0], features.shape[1], features.shape[1]),
    backends=_backends("gram_matrix_fwd"),
    backward=OpSpec(
        name="gram_matrix_backward",
        schema="(Tensor grad_out, Tensor features) -> Tensor",
        reference=gram_matrix_backward_ref,
        fake=lambda grad_out, features: features.new_empty(features.shape),
        backends=_backends("gram_matrix_bwd"),
    ),
))


def gram_matrix(features: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """``G = F F^T`` per sample: features [B, C, N] (or [B, C, H, W], flattened to N = H * W) -> [B, C, C].

    G is not normalized: style losses usually divide it by C * H * W (or H * W) themselves.
    Gradients flow to features. ``impl`` forces a backend ("ref", "cpu", "triton", "cuda");
    "auto" picks the fastest that fits.
    """
    checks.tensor("features", features)
    if features.dim() not in (3, 4):
        raise ValueError(f"features must be a 3-D [B, C, N] or 4-D [B, C, H, W] tensor, "
                         f"got shape {tuple(features.shape)}")
    checks.float_dtype("features", features)
    if features.numel() == 0:
        raise ValueError(f"features must have every dimension >= 1, got shape {tuple(features.shape)}")
    return GRAM_MATRIX.call(features.flatten(2), impl=impl)
