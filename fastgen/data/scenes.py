"""A procedural NeRF scene that needs no download: colored spheres and boxes on a ground slab, ray
traced in torch (exact intersections, Lambert shading with hard shadows from one directional
light, white background), seen from posed cameras at 64x64 by default.

Conventions follow NeRF's synthetic (Blender) scenes: the world is z-up; a pose is a
camera-to-world 4x4 matrix whose camera looks down its -z axis with +y up and +x right; cameras sit
on the upper hemisphere of radius 4 looking at the origin, and ``near``/``far`` = 2/6 bound every
object. Everything is deterministic: no random numbers are drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from fastgen.nerf.rays import pinhole_rays

# (center xyz, radius, rgb)
SPHERES = (
    ((0.35, 0.3, 0.0), 0.5, (0.9, 0.15, 0.1)),
    ((-0.45, 0.55, -0.2), 0.3, (0.15, 0.75, 0.2)),
    ((0.1, -0.75, -0.25), 0.25, (0.95, 0.8, 0.1)),
)
# (min corner xyz, max corner xyz, rgb); the first is the ground slab.
BOXES = (
    ((-1.2, -1.2, -0.6), (1.2, 1.2, -0.5), (0.55, 0.55, 0.6)),
    ((-0.95, -0.6, -0.5), (-0.25, 0.05, 0.35), (0.15, 0.3, 0.9)),
    ((0.55, -0.55, -0.5), (0.95, -0.15, -0.1), (0.8, 0.3, 0.8)),
)
# Tight bounds of all shapes, padded by 0.05 so an occupancy grid's outer cells contain the surfaces.
AABB = (-1.25, -1.25, -0.65, 1.25, 1.25, 0.55)
LIGHT_DIRECTION = (0.4, 0.3, 0.85)  # towards the light; normalized on use
AMBIENT = 0.3  # shaded = color * (AMBIENT + (1 - AMBIENT) * lit * max(0, n.l))
BACKGROUND = (1.0, 1.0, 1.0)
# Hits closer than this are ignored, so shadow rays leave their own surface.
_EPS = 1e-4


@dataclass(frozen=True)
class Scene:
    """Posed views of the procedural scene. Images are float32 [V, H, W, 3] in [0, 1]; poses are
    camera-to-world float32 [V, 4, 4]; ``focal`` is in pixels; ``aabb`` is
    (xmin, ymin, zmin, xmax, ymax, zmax) float32 [6]; ``background`` [3] is what rays that miss
    every shape see."""

    images: torch.Tensor
    poses: torch.Tensor
    test_images: torch.Tensor
    test_poses: torch.Tensor
    focal: float
    near: float
    far: float
    aabb: torch.Tensor
    background: torch.Tensor

    def to(self, device: torch.device | str) -> Scene:
        """The same scene with its tensors on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]


def camera_rays(poses: torch.Tensor, height: int, width: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centers of the scene's cameras (principal point at the image center):
    poses [V, 4, 4] -> origins and unit directions, each [V, height, width, 3]."""
    return pinhole_rays((focal, focal, width / 2, height / 2), poses, height, width)


def look_at_origin(positions: torch.Tensor) -> torch.Tensor:
    """Camera positions [V, 3] (not on the z axis) -> camera-to-world poses [V, 4, 4] looking at
    the origin with the world's +z up."""
    back = positions / positions.norm(dim=-1, keepdim=True)  # the camera's +z points away from the target
    up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype).expand_as(back)
    right = torch.linalg.cross(up, back)
    right = right / right.norm(dim=-1, keepdim=True)
    camera_up = torch.linalg.cross(back, right)
    poses = torch.eye(4, dtype=positions.dtype).repeat(len(positions), 1, 1)
    poses[:, :3, :3] = torch.stack([right, camera_up, back], dim=-1)
    poses[:, :3, 3] = positions
    return poses


def hemisphere_positions(n: int, radius: float, min_elevation: float, max_elevation: float,
                         azimuth_offset: float = 0.0) -> torch.Tensor:
    """n camera positions [n, 3] spread evenly over a band of the upper hemisphere (a golden-angle
    spiral, uniform in area); elevations in degrees."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    lo, hi = math.sin(math.radians(min_elevation)), math.sin(math.radians(max_elevation))
    z = lo + (hi - lo) * i / n
    azimuth = azimuth_offset + i * math.pi * (3 - math.sqrt(5))
    ring = torch.sqrt(1 - z * z)
    return (radius * torch.stack([ring * torch.cos(azimuth), ring * torch.sin(azimuth), z], -1)).float()


def _shape_tensors(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "centers": torch.tensor([s[0] for s in SPHERES], dtype=dtype),
        "radii": torch.tensor([s[1] for s in SPHERES], dtype=dtype),
        "lo": torch.tensor([b[0] for b in BOXES], dtype=dtype),
        "hi": torch.tensor([b[1] for b in BOXES], dtype=dtype),
        "colors": torch.tensor([s[2] for s in SPHERES] + [b[2] for b in BOXES], dtype=dtype),
    }


def _intersect(origins: torch.Tensor, dirs: torch.Tensor, shapes: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit of rays [N, 3] (unit directions) with every shape: distance [N] (inf on a miss),
    shape index [N] (spheres first, then boxes) and the outward unit normal [N, 3]."""
    # Spheres: |o + t d - c|^2 = r^2 with |d| = 1; only the entering root (cameras are outside).
    oc = origins[:, None] - shapes["centers"]
    b = (oc * dirs[:, None]).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + shapes["radii"] ** 2
    t_sphere = -b - disc.clamp_min(0).sqrt()
    t_sphere = torch.where((disc >= 0) & (t_sphere > _EPS), t_sphere, torch.inf)
    # Boxes: slabs; the entering distance is the largest per-axis entry.
    inv = 1 / torch.where(dirs == 0, torch.full_like(dirs, 1e-12), dirs)
    t1 = (shapes["lo"] - origins[:, None]) * inv[:, None]
    t2 = (shapes["hi"] - origins[:, None]) * inv[:, None]
    t_entry, entry_axis = torch.minimum(t1, t2).max(-1)
    t_exit = torch.maximum(t1, t2).min(-1).values
    t_box = torch.where((t_entry <= t_exit) & (t_entry > _EPS), t_entry, torch.inf)

    t, shape = torch.cat([t_sphere, t_box], -1).min(-1)
    points = origins + t.clamp_max(1e6)[:, None] * dirs
    n_spheres = len(shapes["radii"])
    is_sphere = shape < n_spheres
    sphere = shape.clamp_max(n_spheres - 1)
    sphere_normal = (points - shapes["centers"][sphere]) / shapes["radii"][sphere, None]
    box = (shape - n_spheres).clamp_min(0)
    axis = entry_axis.gather(1, box[:, None]).squeeze(1)
    box_normal = -torch.nn.functional.one_hot(axis, 3).to(dirs.dtype) * dirs.sign()
    return t, shape, torch.where(is_sphere[:, None], sphere_normal, box_normal)


def trace(origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Shaded colors [..., 3] of rays with origins and unit directions [..., 3]."""
    shape_of = origins.shape
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    shapes = _shape_tensors(dirs.dtype)
    t, shape, normal = _intersect(origins, dirs, shapes)
    hit = torch.isfinite(t)
    light = torch.tensor(LIGHT_DIRECTION, dtype=dirs.dtype)
    light = light / light.norm()
    points = origins + torch.where(hit, t, 0)[:, None] * dirs
    shadow_t, _, _ = _intersect(points + _EPS * normal, light.expand_as(points), shapes)
    lit = torch.isinf(shadow_t).to(dirs.dtype)
    lambert = AMBIENT + (1 - AMBIENT) * lit * (normal @ light).clamp_min(0)
    color = shapes["colors"][shape] * lambert[:, None]
    background = torch.tensor(BACKGROUND, dtype=dirs.dtype)
    return torch.where(hit[:, None], color, background).reshape(shape_of)


def render_views(poses: torch.Tensor, height: int, width: int, focal: float) -> torch.Tensor:
    """Ray-traced images [V, height, width, 3] in [0, 1] of the scene from poses [V, 4, 4]."""
    origins, dirs = camera_rays(poses, height, width, focal)
    return trace(origins, dirs)


def focal_from_fov(width: int, fov_degrees: float) -> float:
    """Focal length in pixels of a pinhole camera with horizontal field of view ``fov_degrees``."""
    return 0.5 * width / math.tan(0.5 * math.radians(fov_degrees))


def procedural_scene(n_train: int = 100, n_test: int = 8, size: int = 64, fov_degrees: float = 40.0,
                     radius: float = 4.0) -> Scene:
    """The scene seen by ``n_train`` training cameras (a spiral over elevations 10-70 degrees) and
    ``n_test`` held-out cameras (elevations 20-60 degrees, azimuths between the training ones'),
    all ``size`` x ``size`` pixels. The shapes lie within distance 1.8 of the origin, so
    near/far = radius -/+ 2."""
    for name, value in (("n_train", n_train), ("n_test", n_test), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not 0 < fov_degrees < 180:
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees!r}")
    if not radius > 2:
        raise ValueError(f"radius must be > 2 so the cameras are outside the scene, got {radius!r}")
    focal = focal_from_fov(size, fov_degrees)
    poses = look_at_origin(hemisphere_positions(n_train, radius, 10, 70))
    test_poses = look_at_origin(hemisphere_positions(n_test, radius, 20, 60, azimuth_offset=1.0))
    return Scene(images=render_views(poses, size, size, focal), poses=poses,
                 test_images=render_views(test_poses, size, size, focal), test_poses=test_poses,
                 focal=focal, near=radius - 2.0, far=radius + 2.0, aabb=torch.tensor(AABB),
                 background=torch.tensor(BACKGROUND))
