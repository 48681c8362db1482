"""Plain-torch reference (the spec) of ``fastgen::sample_pdf``: NeRF's hierarchical inverse-CDF sampling.

It is nerf-pytorch's ``sample_pdf(bins, weights, N_samples, det)`` with the random numbers passed in,
and one change of formulation: the CDF is normalized after the cumulative sum (``cumsum / cumsum[-1]``)
instead of dividing the pdf by its sum first. The two are equal in exact arithmetic; this way the last
CDF value is exactly 1 (x / x), so u = 1 lands on the last edge in every backend, and the float32 CDF
is the same bits on every CPU kernel (torch's CPU cumsum accumulates float32 in float64, rounding each
prefix to float32: the C++ kernel does the same).
"""
from __future__ import annotations

import torch

# nerf-pytorch's constants: added to every weight (so a ray of zero weights samples uniformly), and the
# CDF step below which an interval counts as empty (its denominator becomes 1).
WEIGHT_PADDING = 1e-5
MIN_CDF_STEP = 1e-5


def pdf_cdf_ref(weights: torch.Tensor) -> torch.Tensor:
    """The CDF [R, S + 1] of weights [R, S]: 0, then the normalized cumulative sum of weights + 1e-5."""
    cdf = torch.cumsum(weights + WEIGHT_PADDING, -1)
    cdf = cdf / cdf[..., -1:]
    return torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)


def deterministic_u(rays: int, n_samples: int, like: torch.Tensor) -> torch.Tensor:
    """nerf-pytorch's ``det=True`` positions: linspace(0, 1, n_samples) on every ray, [R, n_samples]."""
    return torch.linspace(0.0, 1.0, n_samples, dtype=like.dtype, device=like.device).expand(rays, n_samples)


def sample_pdf_ref(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor | None, n_samples: int) -> torch.Tensor:
    """Samples [R, n_samples] of the piecewise-constant pdf that ``weights`` [R, S] puts on the intervals
    between the sorted edges ``bins`` [R, S + 1]: the inverse CDF at ``u`` [R, n_samples] in [0, 1]
    (``None``: :func:`deterministic_u`). Float32 or float64, one dtype for all."""
    cdf = pdf_cdf_ref(weights)
    if u is None:
        u = deterministic_u(weights.shape[0], n_samples, weights)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)  # how many CDF values are <= u
    below = (inds - 1).clamp(min=0)
    above = inds.clamp(max=weights.shape[-1])
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    denom = cdf_above - cdf_below
    denom = torch.where(denom < MIN_CDF_STEP, torch.ones_like(denom), denom)
    t = (u - cdf_below) / denom
    return bins_below + t * (bins_above - bins_below)


def sample_pdf_nerf_pytorch(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, det: bool = True,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """The function as nerf-pytorch writes it (pdf / sum, then cumsum; stack + gather of [R, n, S + 1]):
    the ``eager`` provider of benchmarks/bench_nerf_pdf.py, and a cross-check of the spec above."""
    weights = weights + 1e-5
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)
    if det:
        u = torch.linspace(0.0, 1.0, steps=n_samples, dtype=weights.dtype, device=weights.device)
        u = u.expand(list(cdf.shape[:-1]) + [n_samples])
    else:
        u = torch.rand(list(cdf.shape[:-1]) + [n_samples], generator=generator, dtype=weights.dtype,
                       device=weights.device)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.max(torch.zeros_like(inds - 1), inds - 1)
    above = torch.min((cdf.shape[-1] - 1) * torch.ones_like(inds), inds)
    inds_g = torch.stack([below, above], -1)  # [R, n, 2]
    matched_shape = [inds_g.shape[0], inds_g.shape[1], cdf.shape[-1]]
    cdf_g = torch.gather(cdf.unsqueeze(1).expand(matched_shape), 2, inds_g)
    bins_g = torch.gather(bins.unsqueeze(1).expand(matched_shape), 2, inds_g)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    t = (u - cdf_g[..., 0]) / denom
    return bins_g[..., 0] + t * (bins_g[..., 1] - bins_g[..., 0])
