"""Rays: camera rays of a pinhole camera, and where rays enter and leave boxes (nerfacc's
``ray_aabb_intersect``; the kernels are ``fastgen::ray_aabb_intersect``)."""
from __future__ import annotations

from typing import Sequence

import torch

from fastgen.ops.nerf.marching import ray_aabb_intersect

__all__ = ["pinhole_rays", "ray_aabb_intersect"]


def _intrinsics(K: torch.Tensor | Sequence[float], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(fx, fy, cx, cy), each [...] (one per camera, or scalars)."""
    if isinstance(K, torch.Tensor):
        if K.shape[-2:] != (3, 3):
            raise ValueError(f"K must be [3, 3] or [B, 3, 3], or (fx, fy, cx, cy), got shape {tuple(K.shape)}")
        K = K.to(like)
        return K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    if len(K) != 4:
        raise ValueError(f"K must be a [3, 3] tensor or (fx, fy, cx, cy), got {len(K)} values")
    return tuple(torch.as_tensor(float(v), dtype=like.dtype, device=like.device) for v in K)


def pinhole_rays(K: torch.Tensor | Sequence[float], c2w: torch.Tensor, height: int, width: int, *,
                 pixel_offset: float = 0.5, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One ray per pixel of a pinhole camera: (origins, directions), each [H, W, 3] for a single pose
    c2w [4, 4] (or [3, 4]) and [B, H, W, 3] for poses [B, 4, 4].

    Camera convention: OpenGL, as NeRF's synthetic (Blender) scenes and nerf-pytorch: in camera
    space x points right, y up, and the camera looks down -z. Pixel (row v, column u), row 0 at the
    top of the image, goes through camera-space direction ((u + pixel_offset - cx) / fx,
    -(v + pixel_offset - cy) / fy, -1); ``pixel_offset=0.5`` aims at pixel centers (0 gives
    nerf-pytorch's corner rays). ``c2w`` maps camera to world coordinates: directions are
    rotated by its 3x3 block, origins are its translation. K is the intrinsic matrix [3, 3] (or
    [B, 3, 3], one per pose), or (fx, fy, cx, cy) in pixels. Directions are unit length unless
    ``normalize=False`` (then their camera-space z is -1). Computed in c2w's floating dtype."""
    if not isinstance(c2w, torch.Tensor):
        raise TypeError(f"c2w must be a torch.Tensor, got {type(c2w).__name__}")
    if c2w.dim() not in (2, 3) or c2w.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"c2w must be [4, 4], [3, 4], [B, 4, 4] or [B, 3, 4], got shape {tuple(c2w.shape)}")
    if not c2w.is_floating_point():
        raise TypeError(f"c2w must be floating point, got {c2w.dtype}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    fx, fy, cx, cy = _intrinsics(K, c2w)
    if not bool((fx != 0).all() and (fy != 0).all()):
        raise ValueError("the focal lengths fx, fy must be non-zero")
    batched = c2w.dim() == 3
    if fx.dim() and not batched:
        raise ValueError("a batch of intrinsics K [B, 3, 3] needs a batch of poses c2w [B, 4, 4]")
    poses = c2w if batched else c2w[None]
    shape = (-1, 1, 1) if fx.dim() else ()
    fx, fy, cx, cy = (v.reshape(shape) for v in (fx, fy, cx, cy))
    v, u = torch.meshgrid(torch.arange(height, dtype=c2w.dtype, device=c2w.device),
                          torch.arange(width, dtype=c2w.dtype, device=c2w.device), indexing="ij")
    x = (u + pixel_offset - cx) / fx
    y = -(v + pixel_offset - cy) / fy
    x, y = torch.broadcast_tensors(x, y)
    camera = torch.stack([x, y, -torch.ones_like(x)], -1)  # [H, W, 3] or [B, H, W, 3]
    if camera.dim() == 3:
        camera = camera.expand(poses.shape[0], -1, -1, -1)
    directions = torch.einsum("bij,bhwj->bhwi", poses[:, :3, :3], camera)
    if normalize:
        directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = poses[:, None, None, :3, 3].expand_as(directions)
    return (origins, directions) if batched else (origins[0], directions[0])
