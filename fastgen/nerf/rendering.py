"""Volume rendering with nerfacc's (v0.5) names and semantics, on fused kernels (``fastgen.ops.nerf.rendering``).

Two layouts, as in nerfacc:

* packed: [N] samples of all rays concatenated in ray order, with ``ray_indices`` [N] (sorted,
  int64 or int32) and ``n_rays``, or ``packed_info`` [R, 2] int64 rows (start, count);
* batched: [..., S] tensors (S samples per ray, any leading ray dims) and no indices.

Per sample, tau_i = sigma_i (t_end_i - t_start_i), alpha_i = 1 - exp(-tau_i), T_i = exp(-sum_{j<i} tau_j)
and w_i = T_i alpha_i. ``rendering`` composites with early ray termination: samples with
T_i < early_stop_eps get weight 0 (their rgbs are never read by the C++ kernel), which changes the
color by at most early_stop_eps * max|c|, the opacity by at most early_stop_eps and the depth by at
most early_stop_eps * max t_end; early_stop_eps = 0 renders every sample.

Gradients flow to sigmas and rgbs (alphas for ``render_weight_from_alpha``), not to t_starts/t_ends.
float16 and bfloat16 are computed in float32 and the results rounded to the input dtype.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from fastgen.ops import _checks as checks
from fastgen.ops.nerf.rendering import VOLUME_RENDER, VOLUME_RENDER_WEIGHTS, check_packed_inputs

DEFAULT_EARLY_STOP_EPS = 1e-4
_HALF = (torch.float16, torch.bfloat16)


def packed_info_from_ray_indices(ray_indices: torch.Tensor, n_rays: int | None = None) -> torch.Tensor:
    """packed_info [n_rays, 2] (start, count) of sorted ray_indices [N]; n_rays defaults to max + 1."""
    checks.tensor("ray_indices", ray_indices)
    if ray_indices.dtype not in (torch.int64, torch.int32) or ray_indices.dim() != 1:
        raise ValueError(f"ray_indices must be a 1-D int64 (or int32) tensor [N], got {ray_indices.dtype} "
                         f"{tuple(ray_indices.shape)}")
    ray_indices = ray_indices.long()
    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1 if ray_indices.numel() else 0
    elif isinstance(n_rays, bool) or not isinstance(n_rays, int) or n_rays < 0:
        raise ValueError(f"n_rays must be an int >= 0, got {n_rays!r}")
    if ray_indices.numel() and not torch.compiler.is_compiling():
        if bool((ray_indices[1:] < ray_indices[:-1]).any()):
            raise ValueError("ray_indices must be sorted (the samples of each ray together, rays in order)")
        low, high = int(ray_indices[0]), int(ray_indices[-1])
        if low < 0 or high >= n_rays:
            raise ValueError(f"ray_indices must be in [0, n_rays = {n_rays}), got values in [{low}, {high}]")
    bounds = torch.searchsorted(ray_indices, torch.arange(n_rays + 1, device=ray_indices.device))
    return torch.stack([bounds[:-1], bounds.diff()], 1)


@functools.lru_cache(maxsize=16)
def _cached_batched_packed_info(n_rays: int, n_samples: int, device: torch.device) -> torch.Tensor:
    return _make_batched_packed_info(n_rays, n_samples, device)


def _make_batched_packed_info(n_rays: int, n_samples: int, device: torch.device) -> torch.Tensor:
    starts = torch.arange(n_rays, device=device) * n_samples
    return torch.stack([starts, torch.full_like(starts, n_samples)], 1)


def _batched_packed_info(n_rays: int, n_samples: int, device: torch.device) -> torch.Tensor:
    """Every ray S samples. Kept between eager calls: on a busy 2-core CPU each small op can cost
    milliseconds (a descheduled intra-op thread), several times the fused kernel at small sizes."""
    if torch.compiler.is_compiling():
        return _make_batched_packed_info(n_rays, n_samples, device)
    return _cached_batched_packed_info(n_rays, n_samples, device)


def _same_shape(name: str, t: object, like: torch.Tensor, like_name: str = "t_starts") -> None:
    checks.tensor(name, t)
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(t.shape)}")


def _layout(t_starts: torch.Tensor, packed_info: torch.Tensor | None, ray_indices: torch.Tensor | None,
            n_rays: int | None) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """(packed_info, the batched leading shape, or None for the packed layout)."""
    if packed_info is not None and ray_indices is not None:
        raise ValueError("give packed_info or ray_indices, not both")
    if packed_info is None and ray_indices is None:
        if t_starts.dim() < 1:
            raise ValueError("t_starts must be [..., S] in the batched layout, got a 0-d tensor")
        lead = tuple(t_starts.shape[:-1])
        return _batched_packed_info(math.prod(lead), t_starts.shape[-1], t_starts.device), lead
    if t_starts.dim() != 1:
        raise ValueError(f"with ray_indices or packed_info (packed layout) t_starts must be 1-D [N], got shape "
                         f"{tuple(t_starts.shape)}")
    if ray_indices is not None:
        if ray_indices.shape != t_starts.shape:
            raise ValueError(f"ray_indices must have one entry per sample {tuple(t_starts.shape)}, got "
                             f"{tuple(ray_indices.shape)}")
        if ray_indices.device != t_starts.device:
            raise ValueError(f"ray_indices must be on the device of t_starts ({t_starts.device}), got "
                             f"{ray_indices.device}")
        return packed_info_from_ray_indices(ray_indices, n_rays), None
    return packed_info, None


def _compute(t: torch.Tensor) -> torch.Tensor:
    """Flat, in the dtype the kernels compute in."""
    return t.reshape(-1).float() if t.dtype in _HALF else t.reshape(-1)


def render_weight_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                               packed_info: torch.Tensor | None = None, ray_indices: torch.Tensor | None = None,
                               n_rays: int | None = None, prefix_trans: torch.Tensor | None = None,
                               *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, transmittance, alphas), each shaped like sigmas; differentiable w.r.t. sigmas.
    ``prefix_trans`` (sigmas' shape) multiplies the transmittance (and so the weights) of every sample."""
    checks.tensor("sigmas", sigmas)
    checks.float_dtype("sigmas", sigmas)
    _same_shape("t_starts", t_starts, sigmas, "sigmas")
    _same_shape("t_ends", t_ends, sigmas, "sigmas")
    info, _ = _layout(sigmas, packed_info, ray_indices, n_rays)
    flat = [_compute(t) for t in (sigmas, t_starts, t_ends)]
    check_packed_inputs(*flat, info, check_tiling=packed_info is not None)  # else built here
    weights, trans, alphas = (t.view(sigmas.shape).to(sigmas.dtype)
                              for t in VOLUME_RENDER_WEIGHTS.call(*flat, info, impl=impl))
    if prefix_trans is not None:
        _same_shape("prefix_trans", prefix_trans, sigmas, "sigmas")
        trans = trans * prefix_trans
        weights = trans * alphas
    return weights, trans, alphas


def render_transmittance_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                                      packed_info: torch.Tensor | None = None,
                                      ray_indices: torch.Tensor | None = None, n_rays: int | None = None,
                                      prefix_trans: torch.Tensor | None = None, *,
                                      impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(transmittance, alphas), as render_weight_from_density."""
    return render_weight_from_density(t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans,
                                      impl=impl)[1:]


def render_weight_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor | None = None,
                             ray_indices: torch.Tensor | None = None, n_rays: int | None = None,
                             prefix_trans: torch.Tensor | None = None, *,
                             impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, transmittance) from opacities alphas in [0, 1]: T_i = prod_{j<i} (1 - alpha_j).
    Computed as densities -log(1 - alpha) over unit intervals, so gradients need alphas < 1."""
    checks.tensor("alphas", alphas)
    checks.float_dtype("alphas", alphas)
    sigmas = -torch.log1p(-alphas)
    zeros = torch.zeros_like(alphas)
    weights, trans, _ = render_weight_from_density(zeros, zeros + 1, sigmas, packed_info, ray_indices, n_rays,
                                                   prefix_trans, impl=impl)
    return weights, trans


def accumulate_along_rays(weights: torch.Tensor, values: torch.Tensor | None = None,
                          ray_indices: torch.Tensor | None = None, n_rays: int | None = None) -> torch.Tensor:
    """sum_i w_i values_i per ray: [n_rays, C] (packed: weights [N], values [N, C], ray_indices [N]) or
    [..., C] (batched: weights [..., S], values [..., S, C]). values None gives the opacity (C = 1)."""
    checks.tensor("weights", weights)
    if values is None:
        values = weights.new_ones(*weights.shape, 1)
    checks.tensor("values", values)
    if values.shape[:-1] != weights.shape:
        raise ValueError(f"values must be weights' shape {tuple(weights.shape)} plus channels, got "
                         f"{tuple(values.shape)}")
    weighted = weights[..., None] * values
    if ray_indices is None:
        return weighted.sum(-2)
    if weights.dim() != 1:
        raise ValueError(f"with ray_indices weights must be 1-D [N], got shape {tuple(weights.shape)}")
    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1 if ray_indices.numel() else 0
    return weighted.new_zeros(n_rays, values.shape[-1]).index_add(0, ray_indices.long(), weighted)


def _check_eps(early_stop_eps: object) -> float:
    if isinstance(early_stop_eps, bool) or not isinstance(early_stop_eps, (int, float)) \
            or not 0 <= early_stop_eps <= 1:
        raise ValueError(f"early_stop_eps must be a float in [0, 1], got {early_stop_eps!r}")
    return float(early_stop_eps)


def _composite(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, rgbs: torch.Tensor,
               info: torch.Tensor, lead: tuple[int, ...] | None, early_stop_eps: float, impl: str,
               check_tiling: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = [_compute(t) for t in (sigmas, t_starts, t_ends)]
    flat_rgbs = rgbs.reshape(-1, rgbs.shape[-1])
    flat_rgbs = flat_rgbs.float() if flat_rgbs.dtype in _HALF else flat_rgbs
    check_packed_inputs(*flat, info, flat_rgbs, check_tiling)
    colors, opacities, depths = VOLUME_RENDER.call(flat[0], flat_rgbs, flat[1], flat[2], info, early_stop_eps,
                                                   impl=impl)
    shape = lead if lead is not None else (info.shape[0],)
    return tuple(t.view(*shape, t.shape[-1]).to(sigmas.dtype) for t in (colors, opacities, depths))


def render_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, rgbs: torch.Tensor,
                        packed_info: torch.Tensor | None = None, ray_indices: torch.Tensor | None = None,
                        n_rays: int | None = None, render_bkgd: torch.Tensor | None = None,
                        early_stop_eps: float = DEFAULT_EARLY_STOP_EPS, *,
                        impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colors [R, C], opacities [R, 1], depths [R, 1]) (batched: [..., C], [..., 1]) in one fused pass per
    ray, with early ray termination; differentiable w.r.t. sigmas and rgbs (sigmas' shape plus channels)."""
    checks.tensor("sigmas", sigmas)
    checks.float_dtype("sigmas", sigmas)
    _same_shape("t_starts", t_starts, sigmas, "sigmas")
    _same_shape("t_ends", t_ends, sigmas, "sigmas")
    checks.tensor("rgbs", rgbs)
    if rgbs.shape[:-1] != sigmas.shape:
        raise ValueError(f"rgbs must be sigmas' shape {tuple(sigmas.shape)} plus channels, got {tuple(rgbs.shape)}")
    early_stop_eps = _check_eps(early_stop_eps)
    info, lead = _layout(sigmas, packed_info, ray_indices, n_rays)
    colors, opacities, depths = _composite(t_starts, t_ends, sigmas, rgbs, info, lead, early_stop_eps, impl,
                                           check_tiling=packed_info is not None)
    if render_bkgd is not None:
        colors = colors + render_bkgd * (1 - opacities)
    return colors, opacities, depths


def rendering(t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor | None = None,
              n_rays: int | None = None, rgb_sigma_fn: Callable | None = None, rgb_alpha_fn: Callable | None = None,
              render_bkgd: torch.Tensor | None = None, early_stop_eps: float = DEFAULT_EARLY_STOP_EPS, *,
              return_extras: bool = True, impl: str = "auto"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """nerfacc's ``rendering``: (colors, opacities, depths, extras).

    ``rgb_sigma_fn(t_starts, t_ends, ray_indices) -> (rgbs [..., C], sigmas)`` (sigmas shaped like t_starts)
    is composited by the fused kernel; ``rgb_alpha_fn`` (returning alphas instead) goes through
    ``render_weight_from_alpha`` and ``accumulate_along_rays``. ``extras`` holds the per-sample
    "weights" (0 where terminated, so they sum to the opacity), "trans", "alphas" and the network's
    "rgbs" and "sigmas" (or "alphas"); ``return_extras=False`` leaves it empty and skips computing them.
    """
    if (rgb_sigma_fn is None) == (rgb_alpha_fn is None):
        raise ValueError("give exactly one of rgb_sigma_fn and rgb_alpha_fn")
    checks.tensor("t_starts", t_starts)
    _same_shape("t_ends", t_ends, t_starts)
    early_stop_eps = _check_eps(early_stop_eps)
    info, lead = _layout(t_starts, None, ray_indices, n_rays)
    fn = rgb_sigma_fn if rgb_sigma_fn is not None else rgb_alpha_fn
    rgbs, densities = fn(t_starts, t_ends, ray_indices)
    _same_shape("rgb_sigma_fn's sigmas" if rgb_sigma_fn is not None else "rgb_alpha_fn's alphas", densities,
                t_starts)
    checks.tensor("rgbs", rgbs)
    if rgbs.shape[:-1] != t_starts.shape:
        raise ValueError(f"rgbs must be t_starts' shape {tuple(t_starts.shape)} plus channels, got "
                         f"{tuple(rgbs.shape)}")
    extras: dict[str, torch.Tensor] = {}
    if rgb_sigma_fn is not None:
        checks.float_dtype("sigmas", densities)
        colors, opacities, depths = _composite(t_starts, t_ends, densities, rgbs, info, lead, early_stop_eps, impl)
        if return_extras:
            weights, trans, alphas = render_weight_from_density(
                t_starts, t_ends, densities, packed_info=info if lead is None else None, impl=impl)
            extras = {"weights": torch.where(trans >= early_stop_eps, weights, 0), "trans": trans,
                      "alphas": alphas, "sigmas": densities, "rgbs": rgbs}
    else:
        weights, trans = render_weight_from_alpha(densities, packed_info=info if lead is None else None, impl=impl)
        weights = torch.where(trans >= early_stop_eps, weights, 0)
        indices = ray_indices if lead is None else None
        colors = accumulate_along_rays(weights, rgbs, indices, info.shape[0])
        opacities = accumulate_along_rays(weights, None, indices, info.shape[0])
        depths = accumulate_along_rays(weights, ((t_starts + t_ends) / 2)[..., None], indices, info.shape[0])
        if return_extras:
            extras = {"weights": weights, "trans": trans, "alphas": densities, "rgbs": rgbs}
    if render_bkgd is not None:
        colors = colors + render_bkgd * (1 - opacities)
    return colors, opacities, depths, extras
