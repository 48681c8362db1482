"""An occupancy grid that skips empty space, as nerfacc's ``OccupancyGridEstimator``: a multi-level
grid of occupancy values and binary masks, trained alongside the radiance field, and ray marching
through its occupied cells (the kernels are ``fastgen::occupancy_grid_march``)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from fastgen.ops.nerf.marching import (
    DEFAULT_MAX_SAMPLES,
    MAX_LEVELS,
    check_rays,
    occupancy_grid_march,
    ray_aabb_intersect,
)

__all__ = ["OccupancyGrid", "transmittance_from_log"]

# Per-sample log transmittance is floored here: exp(-700) is already 0 for any early_stop_eps, and a
# finite floor keeps the per-ray differences of the running sum finite.
_LOG_FLOOR = -700.0


def transmittance_from_log(log_trans: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
    """Per-sample transmittance before each sample, exp(sum of log_trans over the ray's earlier
    samples), for packed samples (ray by ray, in order). Computed in float64."""
    log_trans = log_trans.double().clamp(min=_LOG_FLOOR)
    exclusive = torch.cumsum(log_trans, 0) - log_trans
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    ray_start = exclusive[first][torch.cumsum(first, 0) - 1]
    return torch.exp(exclusive - ray_start)


class OccupancyGrid(nn.Module):
    """Occupancy grid over ``roi_aabb`` (min xyz, max xyz) with ``resolution`` cells per axis (an int or
    three) and ``levels`` levels: level l covers the roi scaled by 2^l around its center, and a point
    belongs to the finest level holding it. Buffers: ``aabbs`` [levels, 6], ``occs`` [levels * cells]
    (running occupancy values) and ``binaries`` [levels, rx, ry, rz] (bool). A new grid is all empty,
    as nerfacc's: call :meth:`update_every_n_steps` (its warm-up evaluates every cell) before sampling."""

    def __init__(self, roi_aabb: Sequence[float] | torch.Tensor, resolution: int | Sequence[int] = 128,
                 levels: int = 1) -> None:
        super().__init__()
        roi = [float(v) for v in (roi_aabb.tolist() if isinstance(roi_aabb, torch.Tensor) else roi_aabb)]
        if len(roi) != 6 or not all(map(math.isfinite, roi)) or not all(roi[a] < roi[a + 3] for a in range(3)):
            raise ValueError(f"roi_aabb must be 6 finite values (min xyz, max xyz) with min < max, got {roi}")
        res = (resolution,) * 3 if isinstance(resolution, int) else tuple(resolution)
        if len(res) != 3 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in res):
            raise ValueError(f"resolution must be an int >= 1 or three of them, got {resolution!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels must be an int in [1, {MAX_LEVELS}], got {levels!r}")
        self.roi = roi
        self.resolution = res
        self.levels = levels
        self.cells_per_level = res[0] * res[1] * res[2]
        center = [(roi[a] + roi[a + 3]) * 0.5 for a in range(3)]
        half = [(roi[a + 3] - roi[a]) * 0.5 for a in range(3)]
        aabbs = [[center[a] - half[a] * 2.0 ** l for a in range(3)] + [center[a] + half[a] * 2.0 ** l for a in range(3)]
                 for l in range(levels)]
        self.register_buffer("aabbs", torch.tensor(aabbs, dtype=torch.float32))
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_level))
        self.register_buffer("binaries", torch.zeros(levels, *res, dtype=torch.bool))

    @torch.no_grad()
    def sampling(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
                 sigma_fn: Callable[..., torch.Tensor] | None = None,
                 alpha_fn: Callable[..., torch.Tensor] | None = None, near_plane: float = 0.0,
                 far_plane: float = 1e10, t_min: torch.Tensor | None = None, t_max: torch.Tensor | None = None,
                 render_step_size: float = 1e-3, early_stop_eps: float = 1e-4, alpha_thre: float = 0.0,
                 stratified: bool = False, cone_angle: float = 0.0, *, generator: torch.Generator | None = None,
                 max_samples: int = DEFAULT_MAX_SAMPLES,
                 impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples along rays [n, 3] through the occupied cells: (ray_indices int64 [N], t_starts [N],
        t_ends [N]), packed ray by ray in order of t, in the rays' dtype. Runs without gradient.

        Each ray marches [max(near_plane, t_enter, t_min), min(far_plane, t_exit, t_max)] of the
        coarsest level's box with steps of ``render_step_size``, or t * ``cone_angle`` where that is
        larger (at most 1e10), keeping the steps [t, t + dt] inside the interval whose midpoint lies
        in an occupied cell. Directions are used as given: t is in units of |rays_d| (pass unit
        directions for steps in world units; a zero direction raises ValueError). ``stratified``
        shifts each ray's first step by a uniform fraction of a step, drawn from ``generator`` (or
        the global RNG).

        With ``sigma_fn(t_starts, t_ends, ray_indices) -> sigmas [N]`` or ``alpha_fn(...) ->
        alphas [N]`` (not both), samples are then dropped where alpha < ``alpha_thre`` or where the
        ray's transmittance before them is below ``early_stop_eps``. NaN / Inf rays, a non-positive
        step and mismatched shapes raise ValueError; no rays give empty outputs; more than
        ``max_samples`` samples raise RuntimeError before they are allocated."""
        check_rays(rays_o, rays_d)
        if sigma_fn is not None and alpha_fn is not None:
            raise ValueError("pass sigma_fn or alpha_fn, not both")
        if not near_plane <= far_plane:
            raise ValueError(f"near_plane must be <= far_plane, got {near_plane} and {far_plane}")
        n = rays_o.shape[0]
        outer = self.aabbs[-1:].to(rays_o)
        starts, ends, hits = ray_aabb_intersect(rays_o, rays_d, outer, near_plane, far_plane, impl=impl)
        starts = torch.where(hits[:, 0], starts[:, 0], 0.0).double()
        ends = torch.where(hits[:, 0], ends[:, 0], 0.0).double()
        for name, bound in (("t_min", t_min), ("t_max", t_max)):
            if bound is not None and (not isinstance(bound, torch.Tensor) or bound.shape != (n,)):
                raise ValueError(f"{name} must be a tensor of shape [{n}], got {getattr(bound, 'shape', bound)!r}")
        if t_min is not None:
            starts = torch.maximum(starts, t_min.double())
        if t_max is not None:
            ends = torch.minimum(ends, t_max.double())
        if stratified:
            starts = starts + render_step_size * torch.rand(n, dtype=torch.float64, device=rays_o.device,
                                                            generator=generator)
        ray_indices, t_starts, t_ends = occupancy_grid_march(
            rays_o, rays_d, starts, ends, self.binaries, self.roi, render_step_size, cone_angle, max_samples,
            impl=impl)
        field = sigma_fn if sigma_fn is not None else alpha_fn
        if field is None or not len(ray_indices) or (alpha_thre <= 0 and early_stop_eps <= 0):
            return ray_indices, t_starts, t_ends
        values = field(t_starts, t_ends, ray_indices)
        if not isinstance(values, torch.Tensor) or values.numel() != len(ray_indices):
            raise ValueError(f"{'sigma_fn' if sigma_fn is not None else 'alpha_fn'} must return one value per "
                             f"sample ({len(ray_indices)}), got {getattr(values, 'shape', type(values).__name__)}")
        values = values.reshape(-1).double()
        if sigma_fn is not None:
            log_trans = -values * (t_ends - t_starts).double()
            alphas = -torch.expm1(log_trans)
        else:
            alphas = values
            log_trans = torch.log1p(-alphas)
        keep = transmittance_from_log(log_trans, ray_indices) >= early_stop_eps
        if alpha_thre > 0:
            keep &= alphas >= alpha_thre
        return ray_indices[keep], t_starts[keep], t_ends[keep]

    @torch.no_grad()
    def update_every_n_steps(self, step: int, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
                             occ_thre: float = 1e-2, ema_decay: float = 0.95, warmup_steps: int = 256, n: int = 16,
                             *, generator: torch.Generator | None = None) -> None:
        """nerfacc's schedule: on every n-th step (in training mode only), re-evaluate cells with
        ``occ_eval_fn(x [p, 3] world points) -> occupancy [p]`` (e.g. density * step size) at a
        uniformly jittered point in each: every cell during the first ``warmup_steps`` steps, after
        that a random quarter of each level's cells plus (at most as many) of its occupied ones. A
        cell's value becomes max(value * ema_decay, new value); the binary mask is value >
        min(occ_thre, mean of the values >= 0). Random draws use ``generator`` or the global RNG."""
        if not self.training:
            raise RuntimeError("update_every_n_steps updates the grid during training only: call module.train()")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if step % n == 0:
            self._update(step, occ_eval_fn, occ_thre, ema_decay, warmup_steps, generator)

    def _update(self, step, occ_eval_fn, occ_thre, ema_decay, warmup_steps, generator) -> None:
        device, cells = self.occs.device, self.cells_per_level
        res = torch.tensor(self.resolution, device=device)
        for level in range(self.levels):
            if step < warmup_steps:
                idx = torch.arange(cells, device=device)
            else:
                quarter = cells // 4
                uniform = torch.randint(cells, (quarter,), device=device, generator=generator)
                occupied = self.binaries[level].flatten().nonzero()[:, 0]
                if len(occupied) > quarter:
                    occupied = occupied[torch.randint(len(occupied), (quarter,), device=device, generator=generator)]
                idx = torch.cat([uniform, occupied])
            coords = torch.stack([idx // (res[1] * res[2]), idx // res[2] % res[1], idx % res[2]], -1)
            jitter = torch.rand(len(idx), 3, device=device, generator=generator)
            box = self.aabbs[level]
            x = box[:3] + (coords + jitter) / res * (box[3:] - box[:3])
            occ = occ_eval_fn(x)
            if not isinstance(occ, torch.Tensor) or occ.numel() != len(idx):
                raise ValueError(f"occ_eval_fn must return one value per point ({len(idx)}), got "
                                 f"{getattr(occ, 'shape', type(occ).__name__)}")
            ids = level * cells + idx
            unique = ids.unique()
            self.occs[unique] *= ema_decay
            self.occs.scatter_reduce_(0, ids, occ.reshape(-1).to(self.occs.dtype), reduce="amax")
        valid = self.occs[self.occs >= 0]
        threshold = min(occ_thre, float(valid.mean())) if len(valid) else occ_thre
        self.binaries.copy_((self.occs > threshold).view(self.binaries.shape))
