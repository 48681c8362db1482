"""Fused AdaIN: ``fastgen::adain`` and ``fastgen::adain_from_style`` with their backward ops."""
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
from fastgen.ops.adain.reference import (
    adain_backward_ref,
    adain_from_style_backward_ref,
    adain_from_style_ref,
    adain_ref,
)

_TRITON = "fastgen.ops.adain.triton"
_cuda_dtypes = only_dtypes(torch.float32, torch.float64)


def _backends(kernel: str) -> tuple:
    return (cpp_backend(kernel), triton_backend(_TRITON, kernel),
            cuda_backend(kernel, _cuda_dtypes))


_SCHEMA_ADAIN = "(Tensor content, Tensor style_mean, Tensor style_std, float eps)"
_SCHEMA_FROM_STYLE = "(Tensor content, Tensor style, float eps)"

ADAIN = define(OpSpec(
    name="adain",
    schema=_SCHEMA_ADAIN + " -> Tensor",
    reference=adain_ref,
    fake=lambda content, style_mean, style_std, eps: torch.empty_like(content),
    backends=_backends("adain_fwd"),
    backward=OpSpec(
        name="adain_backward",
        schema="(Tensor grad_out, " + _SCHEMA_ADAIN[1:] + " -> (Tensor, Tensor, Tensor)",
        reference=adain_backward_ref,
        fake=lambda grad_out, content, style_mean, style_std, eps: (
            torch.empty_like(content),
            style_mean.new_empty(style_mean.shape),
            style_std.new_empty(style_std.shape)),
        backends=_backends("adain_bwd"),
    ),
))

ADAIN_FROM_STYLE = define(OpSpec(
    name="adain_from_style",
    schema=_SCHEMA_FROM_STYLE + " -> Tensor",
    reference=adain_from_style_ref,
    fake=lambda content, style, eps: torch.empty_like(content),
    backends=_backends("adain_from_style_fwd"),
    backward=OpSpec(
        name="adain_from_style_backward",
        schema="(Tensor grad_out, " + _SCHEMA_FROM_STYLE[1:] + " -> (Tensor, Tensor)",
        reference=adain_from_style_backward_ref,
        fake=lambda grad_out, content, style, eps: (torch.empty_like(content), torch.empty_like(style)),
        backends=_backends("adain_from_style_bwd"),
    ),
))


def _check_feature_map(name: str, t: object) -> torch.Tensor:
    checks.tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D [N, C, H, W] tensor, got shape {tuple(t.shape)}")
    checks.float_dtype(name, t)
    if t.numel() == 0:
        raise ValueError(f"{name} must have N, C, H, W >= 1, got shape {tuple(t.shape)}")
    return t


def _check_eps(eps: object) -> float:
    return checks.positive_float("eps", eps, " (it keeps zero-variance planes finite)")


def _style_vector(name: str, t: object, content: torch.Tensor) -> torch.Tensor:
    checks.tensor(name, t)
    n, c = content.shape[:2]
    if tuple(t.shape) not in ((n, c), (n, c, 1, 1)):
        raise ValueError(f"{name} must have shape [N, C] = [{n}, {c}] (or [N, C, 1, 1]) "
                         f"to match content, got {tuple(t.shape)}")
    checks.like(name, t, "content", content)
    return t.reshape(n, c)


def adain(content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor,
          eps: float = 1e-5, *, impl: str = "auto") -> torch.Tensor:
    """``style_std * (content - mean) / sqrt(var + eps) + style_mean`` per sample and channel.

    content: [N, C, H, W]; style_mean, style_std: [N, C] (or [N, C, 1, 1]), same dtype and device.
    Statistics of content use the biased variance over H x W, as ``F.instance_norm`` does.
    ``impl`` forces a backend ("ref", "cpu", "triton", "cuda"); "auto" picks the fastest that fits.
    """
    _check_feature_map("content", content)
    style_mean = _style_vector("style_mean", style_mean, content)
    style_std = _style_vector("style_std", style_std, content)
    return ADAIN.call(content, style_mean, style_std, _check_eps(eps), impl=impl)


def adain_from_style(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5, *,
                     impl: str = "auto") -> torch.Tensor:
    """AdaIN with the mean and ``sqrt(var + eps)`` of a style feature map (style transfer).

    content: [N, C, H, W]; style: [N, C, Hs, Ws] (any spatial size), same dtype and device.
    Gradients flow to both content and style.
    """
    _check_feature_map("content", content)
    _check_feature_map("style", style)
    if style.shape[:2] != content.shape[:2]:
        raise ValueError(f"style must have the N and C of content {tuple(content.shape[:2])}, "
                         f"got {tuple(style.shape[:2])}")
    checks.like("style", style, "content", content)
    return ADAIN_FROM_STYLE.call(content, style, _check_eps(eps), impl=impl)
