"""Ray-box intersection (``fastgen::ray_aabb_intersect``) and ray marching through a multi-level
occupancy grid (``fastgen::occupancy_grid_march``), with nerfacc's semantics. The user-facing API is
``fastgen.nerf.rays`` and ``fastgen.nerf.occupancy``; these are the ops and their argument checks."""
from __future__ import annotations

import math

import torch

from fastgen.ops import _checks as checks
from fastgen.ops._library import OpSpec, cpp_backend, cuda_backend, define, only_dtypes
from fastgen.ops.nerf.reference import occupancy_grid_march_ref, ray_aabb_intersect_ref

# The marcher's output is sized by a first counting pass; past this many samples in one call it
# raises instead of allocating (2^27 samples take 2 GiB as int64 + 2 x float32).
DEFAULT_MAX_SAMPLES = 1 << 27
MAX_LEVELS = 32  # occupancy-grid levels (level l spans 2^l times the roi)
# One ray may take at most this many steps (each is visited, if only to skip it): a bound on time.
MAX_STEPS_PER_RAY = 1 << 24

RAY_AABB_INTERSECT = define(OpSpec(
    name="ray_aabb_intersect",
    schema="(Tensor rays_o, Tensor rays_d, Tensor aabbs, float near_plane, float far_plane, float miss_value)"
           " -> (Tensor, Tensor, Tensor)",
    reference=ray_aabb_intersect_ref,
    fake=lambda rays_o, rays_d, aabbs, near_plane, far_plane, miss_value: (
        rays_o.new_empty(rays_o.shape[0], aabbs.shape[0]), rays_o.new_empty(rays_o.shape[0], aabbs.shape[0]),
        rays_o.new_empty(rays_o.shape[0], aabbs.shape[0], dtype=torch.bool)),
    backends=(cpp_backend("ray_aabb_intersect", only_dtypes(torch.float32, torch.float64)),
              cuda_backend("ray_aabb_intersect", only_dtypes(torch.float32, torch.float64))),
    no_grad_inputs=("rays_o", "rays_d", "aabbs"),
    no_grad_outputs=(0, 1, 2),
))


def _march_fake(rays_o, rays_d, t_starts, t_ends, binaries, roi_aabb, step_size, cone_angle, max_samples):
    n = torch.library.get_ctx().new_dynamic_size()
    return rays_o.new_empty(n, dtype=torch.int64), rays_o.new_empty(n), rays_o.new_empty(n)


OCCUPANCY_GRID_MARCH = define(OpSpec(
    name="occupancy_grid_march",
    schema="(Tensor rays_o, Tensor rays_d, Tensor t_starts, Tensor t_ends, Tensor binaries, float[] roi_aabb,"
           " float step_size, float cone_angle, int max_samples) -> (Tensor, Tensor, Tensor)",
    reference=occupancy_grid_march_ref,
    fake=_march_fake,
    backends=(cpp_backend("occupancy_grid_march"), cuda_backend("occupancy_grid_march")),
    no_grad_inputs=("rays_o", "rays_d", "t_starts", "t_ends", "binaries"),
    no_grad_outputs=(0, 1, 2),
))


def _check_finite(name: str, t: torch.Tensor) -> None:
    if torch.compiler.is_compiling() or not t.numel():
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_rays(rays_o: object, rays_d: object) -> None:
    """rays_o, rays_d: float32 / float64 [n, 3] on one device, finite."""
    for name, t in (("rays_o", rays_o), ("rays_d", rays_d)):
        checks.tensor(name, t)
        if t.dim() != 2 or t.shape[1] != 3:
            raise ValueError(f"{name} must be [n, 3], got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    checks.like("rays_d", rays_d, "rays_o", rays_o)
    if rays_o.shape[0] != rays_d.shape[0]:
        raise ValueError(f"rays_o and rays_d must hold the same number of rays, got {rays_o.shape[0]} and "
                         f"{rays_d.shape[0]}")
    _check_finite("rays_o", rays_o)
    _check_finite("rays_d", rays_d)


def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor,
                       near_plane: float = -math.inf, far_plane: float = math.inf, miss_value: float = math.inf, *,
                       impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays [n, 3] enter and leave boxes [m, 6] (min xyz, max xyz), as nerfacc's
    ``ray_aabb_intersect``: (t_mins [n, m], t_maxs [n, m], hits [n, m] bool).

    Directions are used as given (not normalized): t is in units of |d|, points are o + t d. A ray
    hits a box when its line's interval in the box is non-empty and not wholly behind the origin
    (t_max > 0); a ray starting inside gets a negative t_min unless near_plane clips it. Hit intervals
    are clamped into [near_plane, far_plane]; misses get ``miss_value`` in both. A zero direction
    component is fine (the slab holds the whole line or none of it); a zero direction hits the boxes
    that contain its origin (t in (-inf, inf), then clamped). NaN / Inf in rays or boxes raise
    ValueError. No gradient."""
    check_rays(rays_o, rays_d)
    checks.tensor("aabbs", aabbs)
    if aabbs.dim() != 2 or aabbs.shape[1] != 6:
        raise ValueError(f"aabbs must be [m, 6] (min xyz, max xyz), got shape {tuple(aabbs.shape)}")
    checks.like("aabbs", aabbs, "rays_o", rays_o)
    _check_finite("aabbs", aabbs)
    if not near_plane <= far_plane:
        raise ValueError(f"near_plane must be <= far_plane, got {near_plane} and {far_plane}")
    return RAY_AABB_INTERSECT.call(rays_o, rays_d, aabbs, float(near_plane), float(far_plane), float(miss_value),
                                   impl=impl)


def check_march(rays_o: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, binaries: object,
                roi_aabb: list[float], step_size: object, cone_angle: object, max_samples: object) -> None:
    n = rays_o.shape[0]
    for name, t in (("t_starts", t_starts), ("t_ends", t_ends)):
        checks.tensor(name, t)
        if t.shape != (n,) or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor of shape [{n}], got {t.dtype} {tuple(t.shape)}")
    checks.tensor("binaries", binaries)
    if binaries.dim() != 4 or binaries.dtype != torch.bool or not 1 <= binaries.shape[0] <= MAX_LEVELS:
        raise ValueError(f"binaries must be bool [levels, rx, ry, rz] with 1 <= levels <= {MAX_LEVELS}, got "
                         f"{binaries.dtype} {tuple(binaries.shape)}")
    if len(roi_aabb) != 6 or not all(math.isfinite(v) for v in roi_aabb) or not all(
            roi_aabb[a] < roi_aabb[a + 3] for a in range(3)):
        raise ValueError(f"roi_aabb must be 6 finite values, min xyz < max xyz, got {roi_aabb}")
    checks.positive_float("render_step_size", step_size)
    if isinstance(cone_angle, bool) or not isinstance(cone_angle, (int, float)) or not 0 <= cone_angle < math.inf:
        raise ValueError(f"cone_angle must be a float >= 0, got {cone_angle!r}")
    checks.positive_int("max_samples", max_samples)
    if torch.compiler.is_compiling() or not n:
        return
    valid = torch.isfinite(t_starts) & torch.isfinite(t_ends) & (t_ends > t_starts)
    if not bool(valid.any()):
        return
    steps = float(((t_ends - t_starts)[valid].double() / step_size).max())
    if steps > MAX_STEPS_PER_RAY:
        raise ValueError(f"render_step_size={step_size} is too small: a ray would take {steps:.3g} steps, more than "
                         f"{MAX_STEPS_PER_RAY}")
    reach = float(torch.maximum(t_starts[valid].abs(), t_ends[valid].abs()).max())
    if step_size <= reach * 2.0 ** -40:  # t + step must move t
        raise ValueError(f"render_step_size={step_size} is too small for t up to {reach:.3g}")


def occupancy_grid_march(rays_o: torch.Tensor, rays_d: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                         binaries: torch.Tensor, roi_aabb: list[float], step_size: float, cone_angle: float = 0.0,
                         max_samples: int = DEFAULT_MAX_SAMPLES, *,
                         impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The samples of rays [n, 3] through the occupied cells of ``binaries`` [levels, rx, ry, rz]
    (level l covers ``roi_aabb`` scaled by 2^l around its center), packed ray by ray:
    (ray_indices int64 [N], t_starts [N], t_ends [N]) in the rays' dtype.

    Ray i steps from ``t_starts[i]`` by step_size (or by t * cone_angle where larger, at most 1e10),
    and [t_k, t_k+1] is a sample while t_k+1 <= t_ends[i] and its midpoint lies in an occupied cell
    (see :func:`fastgen.ops.nerf.reference.occupancy_grid_march_ref`, the spec). Rays
    whose interval is empty or non-finite take none. Directions are used as given (t is in units of
    |d|); a zero direction raises ValueError. The kernels skip empty cells in one jump and
    emit exactly the reference's samples. More than ``max_samples`` samples is a RuntimeError,
    raised before anything that size is allocated."""
    check_rays(rays_o, rays_d)
    if rays_o.shape[0] and not torch.compiler.is_compiling():
        zero = (rays_d == 0).all(1)
        if bool(zero.any()):
            raise ValueError(f"rays_d has zero directions (ray {int(zero.nonzero()[0, 0])} and "
                             f"{int(zero.sum()) - 1} more): a ray to march needs a direction")
    roi_aabb = [float(v) for v in roi_aabb]
    check_march(rays_o, t_starts, t_ends, binaries, roi_aabb, step_size, cone_angle, max_samples)
    for name, t in (("t_starts", t_starts), ("t_ends", t_ends), ("binaries", binaries)):
        if t.device != rays_o.device:
            raise ValueError(f"{name} must be on the device of rays_o ({rays_o.device}), got {t.device}")
    return OCCUPANCY_GRID_MARCH.call(rays_o, rays_d, t_starts, t_ends, binaries, roi_aabb, float(step_size),
                                     float(cone_angle), int(max_samples), impl=impl)
