"""Plain-torch references (the specifications and test oracles) of the NeRF ops, in three sections.

Volume rendering (``fastgen::volume_render``, ``fastgen::volume_render_weights``)
-------------------------------------------------------------------------------
Volume rendering in plain torch: the specification and the oracle of ``fastgen::volume_render*``.

Samples of all rays are packed: sigmas [N], t_starts [N], t_ends [N] (rgbs [N, C]), ray r owning
samples [start_r, start_r + count_r) with packed_info[r] = (start_r, count_r), the starts being the
exclusive cumulative sum of the counts (every sample belongs to exactly one ray, in ray order). Per
sample, with tau_i = sigma_i * (t_end_i - t_start_i):

    alpha_i = 1 - exp(-tau_i)
    T_i     = exp(-sum_{j < i in the ray} tau_j)          (transmittance before the sample)
    w_i     = T_i * alpha_i

(nerfacc's ``render_weight_from_density``). The fused op composites with early ray termination:
a sample with T_i < early_stop_eps gets weight 0, so

    color   = sum_i w_i c_i,  opacity = sum_i w_i,  depth = sum_i w_i (t_start_i + t_end_i) / 2

leave out at most T (< eps) of the weight: the color differs from the full sum by at most
eps * max|c|. The references compute per ray on a zero-padded [R, max count] layout; their backward
formulas are derived below and tested against autograd of the forward references.

Ray marching (``fastgen::ray_aabb_intersect``, ``fastgen::occupancy_grid_march``)
-----------------------------------------------------------------------------
Plain-torch references (the specs) of the ray-marching ops: ``fastgen::ray_aabb_intersect`` and
``fastgen::occupancy_grid_march``. The kernels in csrc/ compute the same values with the same
operations in the same order (positions in float64), so the marcher's samples match these exactly.

Inverse-CDF sampling (``fastgen::sample_pdf``)
----------------------------------------------
Plain-torch reference (the spec) of ``fastgen::sample_pdf``: NeRF's hierarchical inverse-CDF sampling.

It is nerf-pytorch's ``sample_pdf(bins, weights, N_samples, det)`` with the random numbers passed in,
and one change of formulation: the CDF is normalized after the cumulative sum (``cumsum / cumsum[-1]``)
instead of dividing the pdf by its sum first. The two are equal in exact arithmetic; this way the last
CDF value is exactly 1 (x / x), so u = 1 lands on the last edge in every backend, and the float32 CDF
is the same bits on every CPU kernel (torch's CPU cumsum accumulates float32 in float64, rounding each
prefix to float32: the C++ kernel does the same).
"""
from __future__ import annotations

import math

import torch



# -- volume rendering ------------------------------------------------------------------------------

def _ray_layout(packed_info: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ray of every sample [N], its position in the ray [N], the longest ray's count)."""
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    rays = torch.repeat_interleave(torch.arange(packed_info.shape[0], device=packed_info.device), counts,
                                   output_size=n)
    positions = torch.arange(n, device=packed_info.device) - starts[rays]
    return rays, positions, int(counts.max()) if counts.numel() else 0


def _padded(values: torch.Tensor, rays: torch.Tensor, positions: torch.Tensor, n_rays: int,
            width: int) -> torch.Tensor:
    """Per-sample values [N] as [R, width], zero past each ray's samples."""
    return values.new_zeros(n_rays, width).index_put((rays, positions), values)


def _exclusive_sum_per_ray(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    rays, positions, width = _ray_layout(packed_info, values.shape[0])
    padded = _padded(values, rays, positions, packed_info.shape[0], width)
    return (padded.cumsum(1) - padded)[rays, positions]


def _reverse_exclusive_sum_per_ray(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    """sum_{k > i in the ray} values_k for every sample i."""
    rays, positions, width = _ray_layout(packed_info, values.shape[0])
    padded = _padded(values, rays, positions, packed_info.shape[0], width)
    return (padded.flip(1).cumsum(1).flip(1) - padded)[rays, positions]


def volume_render_weights_ref(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                              packed_info: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, trans, alphas), [N] each."""
    tau = sigmas * (t_ends - t_starts)
    alphas = 1 - torch.exp(-tau)
    trans = torch.exp(-_exclusive_sum_per_ray(tau, packed_info))
    return trans * alphas, trans, alphas


def volume_render_weights_backward_ref(grad_weights: torch.Tensor, grad_trans: torch.Tensor,
                                       grad_alphas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                                       packed_info: torch.Tensor, weights: torch.Tensor, trans: torch.Tensor,
                                       alphas: torch.Tensor) -> torch.Tensor:
    """d/dsigma_i, delta_i = t_end_i - t_start_i. T_k (k > i) scales by exp(-delta_i sigma_i), so
    dT_k = -delta_i T_k and dw_k = -delta_i w_k; dalpha_i = delta_i (1 - alpha_i) and dw_i = delta_i T_{i+1}:

        grad_sigma_i = delta_i (gw_i T_{i+1} + ga_i (1 - alpha_i) - sum_{k > i} (gw_k w_k + gT_k T_k))
    """
    survival = 1 - alphas
    later = _reverse_exclusive_sum_per_ray(grad_weights * weights + grad_trans * trans, packed_info)
    return (t_ends - t_starts) * (grad_weights * trans * survival + grad_alphas * survival - later)


def _composite_weights(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                       packed_info: torch.Tensor, early_stop_eps: float) -> torch.Tensor:
    weights, trans, _ = volume_render_weights_ref(sigmas, t_starts, t_ends, packed_info)
    return torch.where(trans >= early_stop_eps, weights, 0)


def volume_render_ref(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                      packed_info: torch.Tensor, early_stop_eps: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colors [R, C], opacities [R, 1], depths [R, 1])."""
    weights = _composite_weights(sigmas, t_starts, t_ends, packed_info, early_stop_eps)
    rays = _ray_layout(packed_info, sigmas.shape[0])[0]
    n_rays = packed_info.shape[0]
    colors = rgbs.new_zeros(n_rays, rgbs.shape[1]).index_add(0, rays, weights[:, None] * rgbs)
    opacities = weights.new_zeros(n_rays).index_add(0, rays, weights)
    depths = weights.new_zeros(n_rays).index_add(0, rays, weights * (t_starts + t_ends) / 2)
    return colors, opacities[:, None], depths[:, None]


def volume_render_backward_ref(grad_colors: torch.Tensor, grad_opacities: torch.Tensor,
                               grad_depths: torch.Tensor, sigmas: torch.Tensor, rgbs: torch.Tensor,
                               t_starts: torch.Tensor, t_ends: torch.Tensor, packed_info: torch.Tensor,
                               early_stop_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_sigmas [N], grad_rgbs [N, C]). The loss is sum_i w_i v_i with, per sample,
    v_i = gC . c_i + gO + gD mid_i; terminated samples are constants (weight 0). So grad_rgb_i = w_i gC and
    grad_sigma_i = delta_i (T_{i+1} v_i - sum_{k > i} w_k v_k) over the samples that are not terminated."""
    weights, trans, alphas = volume_render_weights_ref(sigmas, t_starts, t_ends, packed_info)
    active = trans >= early_stop_eps
    weights = torch.where(active, weights, 0)
    rays = _ray_layout(packed_info, sigmas.shape[0])[0]
    values = ((grad_colors[rays] * rgbs).sum(1) + grad_opacities[rays, 0]
              + grad_depths[rays, 0] * (t_starts + t_ends) / 2)
    later = _reverse_exclusive_sum_per_ray(weights * values, packed_info)
    grad_sigmas = torch.where(active, (t_ends - t_starts) * (trans * (1 - alphas) * values - later), 0)
    return grad_sigmas, weights[:, None] * grad_colors[rays]


# -- ray marching ----------------------------------------------------------------------------------

MAX_STEP = 1e10  # nerfacc's upper clamp of a cone step
# Candidate samples the dense reference holds at a time (float64 positions: ~100 MiB of temporaries).
_CANDIDATES_PER_CHUNK = 1 << 21


def ray_aabb_intersect_ref(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor, near_plane: float,
                           far_plane: float, miss_value: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test of rays [n, 3] against boxes [m, 6] (min xyz, max xyz): (t_mins, t_maxs, hits), each [n, m].

    Hit: the line's interval in the box is non-empty and not entirely behind the origin (t_exit > 0).
    Hit intervals are clamped into [near_plane, far_plane]; misses get miss_value. A zero direction
    component leaves its slab unbounded when the origin lies in it, and misses otherwise."""
    o, d = rays_o[:, None, :], rays_d[:, None, :]
    lo, hi = aabbs[None, :, :3], aabbs[None, :, 3:]
    t1, t2 = (lo - o) / d, (hi - o) / d
    inside = (o >= lo) & (o <= hi)
    inf = torch.tensor(math.inf, dtype=rays_o.dtype)
    zero = d == 0
    enter = torch.where(zero, torch.where(inside, -inf, inf), torch.minimum(t1, t2)).amax(-1)
    exit_ = torch.where(zero, torch.where(inside, inf, -inf), torch.maximum(t1, t2)).amin(-1)
    hits = (exit_ > enter) & (exit_ > 0)
    miss = torch.tensor(miss_value, dtype=rays_o.dtype)
    t_mins = torch.where(hits, enter.clamp(near_plane, far_plane), miss)
    t_maxs = torch.where(hits, exit_.clamp(near_plane, far_plane), miss)
    return t_mins, t_maxs, hits


def level_boxes(roi_aabb: list[float], levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, extent), float64 [levels, 3]: level l is the roi scaled by 2^l around its center."""
    roi = torch.tensor(roi_aabb, dtype=torch.float64)
    center, half = (roi[:3] + roi[3:]) * 0.5, (roi[3:] - roi[:3]) * 0.5
    scale = torch.tensor([2.0 ** l for l in range(levels)], dtype=torch.float64)[:, None]
    lo, hi = center - half * scale, center + half * scale
    return lo, hi - lo


def occupied_at(points: torch.Tensor, binaries: torch.Tensor, lo: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Whether float64 points [p, 3] lie in occupied cells: a point belongs to the finest level whose
    box holds it, and to the cell floor(c) there, c = (p - lo) * (res / extent) in [0, res] (the
    far faces belong to the last cells)."""
    res = torch.tensor(binaries.shape[1:], dtype=torch.float64)
    level = torch.full(points.shape[:1], -1, dtype=torch.int64)
    cell = torch.zeros(points.shape, dtype=torch.int64)
    for l in reversed(range(binaries.shape[0])):  # coarse to fine: the finest holding level wins
        c = (points - lo[l]) * (res / extent[l])
        inside = ((c >= 0) & (c <= res)).all(-1)
        here = torch.minimum(c.floor().clamp(min=0), res - 1).long()
        level = torch.where(inside, l, level)
        cell = torch.where(inside[:, None], here, cell)
    found = level >= 0
    return binaries[level.clamp(min=0), cell[:, 0], cell[:, 1], cell[:, 2]] & found


def _occupied_mid(o, d, ts, te, binaries, lo, extent):
    mid = (ts + te) * 0.5
    return occupied_at(o + mid[:, None] * d, binaries, lo, extent)


def occupancy_grid_march_ref(rays_o: torch.Tensor, rays_d: torch.Tensor, t_starts: torch.Tensor,
                             t_ends: torch.Tensor, binaries: torch.Tensor, roi_aabb: list[float], step_size: float,
                             cone_angle: float, max_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The samples of rays [n, 3] through an occupancy grid, packed ray by ray: (ray_indices, t_starts, t_ends).

    Ray i steps from t_starts[i]: t_k = t_starts[i] + k * step_size when cone_angle = 0, else
    t_k+1 = t_k + clamp(t_k * cone_angle, step_size, 1e10); [t_k, t_k+1] is a sample while
    t_k+1 <= t_ends[i] and kept when its midpoint lies in an occupied cell of ``binaries``
    [levels, rx, ry, rz] (see :func:`occupied_at`). Positions are computed in float64; the t's come
    back in the rays' dtype. Rays with a non-finite t_start or t_end take no samples. More than
    ``max_samples`` samples in all is an error."""
    lo, extent = level_boxes(roi_aabb, binaries.shape[0])
    o, d = rays_o.double(), rays_d.double()
    t0, t1 = t_starts.double(), t_ends.double()
    valid = torch.isfinite(t0) & torch.isfinite(t1) & (t1 > t0)
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    total = 0

    def keep(rays, ts, te):
        nonlocal total
        occupied = _occupied_mid(o[rays], d[rays], ts, te, binaries, lo, extent)
        pieces.append((rays[occupied], ts[occupied], te[occupied]))
        total += int(occupied.sum())
        if total > max_samples:
            raise RuntimeError(f"occupancy_grid_march: the rays take more than max_samples={max_samples} samples; "
                               "raise render_step_size, march fewer rays at a time, or raise max_samples")

    if cone_angle == 0:
        steps = torch.where(valid, ((t1 - t0) / step_size).floor() + 2, 0).long()  # a bound on each ray's samples
        width = max(1, int(steps.max())) if len(steps) else 1
        chunk = max(1, _CANDIDATES_PER_CHUNK // width)
        for begin in range(0, len(t0), chunk):
            rays = torch.arange(begin, min(begin + chunk, len(t0)))
            k = torch.arange(int(steps[rays].max()) if len(rays) else 0, dtype=torch.float64)
            ts = t0[rays, None] + k * step_size
            te = t0[rays, None] + (k + 1) * step_size
            inside = (te <= t1[rays, None]) & valid[rays, None]
            row, col = inside.nonzero(as_tuple=True)
            keep(rays[row], ts[row, col], te[row, col])
    else:
        rays, t = valid.nonzero()[:, 0], t0[valid]
        while len(rays):  # one step of every ray still inside its interval
            te = t + (t * cone_angle).clamp(step_size, MAX_STEP)
            inside = te <= t1[rays]
            rays, t, te = rays[inside], t[inside], te[inside]
            keep(rays, t, te)
            t = te
    ray_indices = torch.cat([p[0] for p in pieces]) if pieces else torch.empty(0, dtype=torch.int64)
    order = torch.sort(ray_indices, stable=True).indices  # ray by ray, each in order of t
    ts = torch.cat([p[1] for p in pieces]) if pieces else torch.empty(0, dtype=torch.float64)
    te = torch.cat([p[2] for p in pieces]) if pieces else torch.empty(0, dtype=torch.float64)
    return ray_indices[order], ts[order].to(rays_o.dtype), te[order].to(rays_o.dtype)


# -- inverse-CDF sampling -------------------------------------------------------------------------

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
    the ``eager`` provider of benchmarks/bench_nerf.py's sample_pdf groups, and a cross-check of the spec above."""
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
