"""Plain-torch references (the specs) of the ray-marching ops: ``fastgen::ray_aabb_intersect`` and
``fastgen::occupancy_grid_march``. The kernels in csrc/ compute the same values with the same
operations in the same order (positions in float64), so the marcher's samples match these exactly."""
from __future__ import annotations

import math

import torch

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
