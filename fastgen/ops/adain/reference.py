"""AdaIN in plain differentiable torch: the specification and the test oracle.

AdaIN(x, y) = std_y * (x - mean(x)) / sqrt(var(x) + eps) + mean_y, with mean and
(biased) variance per sample and channel over H x W. Half-precision inputs are
computed in float32 and rounded once at the end, as the kernels do.

Outputs take the memory layout of the input they mirror (``torch.empty_like``):
that is the contract every backend and the fake kernels follow.
"""
from __future__ import annotations

import torch

from fastgen.ops._library import to_accumulation_dtype as _acc


def _like(template: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(template).copy_(value)


def _plane_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/sqrt(var + eps) per (n, c) plane, keeping [N, C, 1, 1] dims."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(2, 3), keepdim=True)
    return mean, torch.rsqrt(var + eps)


def adain_ref(content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor,
              eps: float) -> torch.Tensor:
    x = _acc(content)
    mean, rstd = _plane_stats(x, eps)
    out = (x - mean) * rstd * _acc(style_std)[..., None, None] + _acc(style_mean)[..., None, None]
    return _like(content, out)


def style_stats_ref(style: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sqrt(var + eps) of a style feature map, [N, C] each, in the accumulation dtype."""
    s = _acc(style)
    mean = s.mean(dim=(2, 3))
    std = torch.sqrt((s - mean[..., None, None]).square().mean(dim=(2, 3)) + eps)
    return mean, std


def adain_from_style_ref(content: torch.Tensor, style: torch.Tensor, eps: float) -> torch.Tensor:
    mean, std = style_stats_ref(style, eps)
    return adain_ref(content, mean, std, eps)


def _adain_grads(grad_out: torch.Tensor, content: torch.Tensor, style_std: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for content, style mean and style std in the accumulation dtype.

    With xhat = (x - mean) * rstd over M = H*W elements:
    d mean_y = sum(g), d std_y = sum(g * xhat),
    dx = std_y * rstd * (g - d mean_y / M - xhat * d std_y / M).
    """
    g, x = _acc(grad_out), _acc(content)
    m = x.shape[2] * x.shape[3]
    mean, rstd = _plane_stats(x, eps)
    xhat = (x - mean) * rstd
    grad_mean = g.sum(dim=(2, 3))
    grad_std = (g * xhat).sum(dim=(2, 3))
    scale = _acc(style_std)[..., None, None] * rstd
    grad_x = scale * (g - grad_mean[..., None, None] / m - xhat * grad_std[..., None, None] / m)
    return grad_x, grad_mean, grad_std


def adain_backward_ref(grad_out: torch.Tensor, content: torch.Tensor, style_mean: torch.Tensor,
                       style_std: torch.Tensor, eps: float):
    grad_x, grad_mean, grad_std = _adain_grads(grad_out, content, style_std, eps)
    return (_like(content, grad_x), grad_mean.to(style_mean.dtype).contiguous(),
            grad_std.to(style_std.dtype).contiguous())


def adain_from_style_backward_ref(grad_out: torch.Tensor, content: torch.Tensor,
                                  style: torch.Tensor, eps: float):
    """d style = (d mean_y + d std_y * (s - mean_s) / std_s) / M_s, per plane."""
    mean_s, std_s = style_stats_ref(style, eps)
    grad_x, grad_mean, grad_std = _adain_grads(grad_out, content, std_s, eps)
    s = _acc(style)
    m_s = s.shape[2] * s.shape[3]
    centered = s - mean_s[..., None, None]
    grad_s = (grad_mean[..., None, None] + grad_std[..., None, None] * centered / std_s[..., None, None]) / m_s
    return _like(content, grad_x), _like(style, grad_s)
