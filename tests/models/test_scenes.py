"""The procedural NeRF scene: determinism, shapes, camera conventions, and rays that hit known shapes."""
from __future__ import annotations

import math

import pytest
import torch

from fastgen.data import procedural_scene, render_views
from fastgen.data.scenes import AABB, AMBIENT, BACKGROUND, BOXES, LIGHT_DIRECTION, SPHERES, camera_rays, trace


@pytest.fixture(scope="module")
def scene():
    return procedural_scene(n_train=6, n_test=3, size=16)


def test_scene_is_deterministic(scene):
    again = procedural_scene(n_train=6, n_test=3, size=16)
    for name in ("images", "poses", "test_images", "test_poses", "aabb", "background"):
        assert torch.equal(getattr(scene, name), getattr(again, name)), name
    assert (scene.focal, scene.near, scene.far) == (again.focal, again.near, again.far)


def test_shapes_dtypes_and_ranges(scene):
    assert scene.images.shape == (6, 16, 16, 3) and scene.test_images.shape == (3, 16, 16, 3)
    assert scene.poses.shape == (6, 4, 4) and scene.test_poses.shape == (3, 4, 4)
    assert (scene.height, scene.width) == (16, 16)
    for t in (scene.images, scene.test_images, scene.poses, scene.aabb):
        assert t.dtype == torch.float32
    assert scene.images.min() >= 0 and scene.images.max() <= 1
    # Every view shows both shapes (not background) and background.
    is_background = (scene.images == torch.tensor(BACKGROUND)).all(-1)
    assert is_background.flatten(1).any(1).all() and (~is_background).flatten(1).any(1).all()
    assert scene.focal == pytest.approx(8 / math.tan(math.radians(20)))
    assert scene.aabb.tolist() == pytest.approx(AABB)


def test_poses_look_at_the_origin_from_the_upper_hemisphere(scene):
    poses = torch.cat([scene.poses, scene.test_poses])
    rotation, position = poses[:, :3, :3], poses[:, :3, 3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(9, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(9))
    assert torch.equal(poses[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(9, 4))
    torch.testing.assert_close(position.norm(dim=-1), torch.full((9,), 4.0))
    assert (position[:, 2] > 0).all()
    # The camera looks down its -z axis, at the origin; its +x axis (right) is horizontal.
    torch.testing.assert_close(-rotation[:, :, 2], -position / 4)
    torch.testing.assert_close(rotation[:, 2, 0], torch.zeros(9), atol=1e-6, rtol=0)


def test_near_far_and_aabb_contain_every_shape(scene):
    lo, hi = scene.aabb[:3], scene.aabb[3:]
    for center, radius, _ in SPHERES:
        c = torch.tensor(center)
        assert (c - radius >= lo).all() and (c + radius <= hi).all()
    for box_lo, box_hi, _ in BOXES:
        assert (torch.tensor(box_lo) >= lo).all() and (torch.tensor(box_hi) <= hi).all()
    corners = torch.cartesian_prod(*[torch.tensor([lo[i], hi[i]]) for i in range(3)])
    distances = torch.cdist(scene.poses[:, :3, 3], corners)
    assert distances.min() >= scene.near and distances.max() <= scene.far


def testcamera_rays_go_through_pixel_centers():
    poses = procedural_scene(n_train=2, n_test=1, size=4).poses
    origins, dirs = camera_rays(poses, 4, 6, focal=3.0)
    assert origins.shape == dirs.shape == (2, 4, 6, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(2, 4, 6))
    assert torch.equal(origins, poses[:, None, None, :3, 3].expand(2, 4, 6, 3))
    # Pixel (row 0, column 0) of camera 0: camera-frame direction (-2.5 / 3, 1.5 / 3, -1).
    expected = poses[0, :3, :3] @ torch.tensor([-2.5 / 3, 1.5 / 3, -1.0])
    torch.testing.assert_close(dirs[0, 0, 0], expected / expected.norm())
    # The four central pixels straddle the optical axis, which points at the origin.
    center = dirs[:, 1:3, 2:4].mean(dim=(1, 2))
    torch.testing.assert_close(center / center.norm(dim=-1, keepdim=True), -poses[:, :3, 3] / 4)


def _shaded(color: tuple[float, float, float], normal: tuple[float, float, float], lit: bool = True) -> torch.Tensor:
    light = torch.tensor(LIGHT_DIRECTION)
    cosine = max(0.0, float(torch.tensor(normal) @ light / light.norm())) if lit else 0.0
    return torch.tensor(color) * (AMBIENT + (1 - AMBIENT) * cosine)


def test_rays_hit_known_shapes_with_their_shaded_colors():
    red_center, red_radius, red = SPHERES[0]
    blue_lo, _, blue = BOXES[1]
    origins = torch.tensor([
        [red_center[0], red_center[1], 3.0],  # straight down onto the top of the red sphere
        [-3.0, -0.3, 0.0],  # along +x onto the blue box's -x face, which faces away from the light
        [0.9, 0.9, 3.0],  # straight down onto a lit corner of the ground slab
        [3.0, 3.0, 3.0],  # away from everything
    ])
    dirs = torch.tensor([[0.0, 0, -1], [1.0, 0, 0], [0.0, 0, -1], [0.0, 0, 1]])
    colors = trace(origins, dirs)
    torch.testing.assert_close(colors[0], _shaded(red, (0.0, 0.0, 1.0)))
    torch.testing.assert_close(colors[1], _shaded(blue, (-1.0, 0.0, 0.0)))
    torch.testing.assert_close(colors[1], AMBIENT * torch.tensor(blue))
    assert blue_lo[0] == -0.95 and red_center[2] + red_radius == 0.5
    torch.testing.assert_close(colors[3], torch.tensor(BACKGROUND))
    torch.testing.assert_close(colors[2], _shaded(BOXES[0][2], (0.0, 0.0, 1.0)))


def test_shadows_darken_the_ground_behind_a_sphere():
    """A ray down onto the ground where the red sphere blocks the light sees ambient light only."""
    center, _, _ = SPHERES[0]
    light = torch.tensor(LIGHT_DIRECTION)
    # The point of the ground slab's top (z = -0.5) whose path to the light passes through the sphere's center.
    point = torch.tensor(center) - (center[2] + 0.5) / light[2] * light
    # Seen from the side away from the light, low enough to pass under the sphere.
    towards_camera = torch.tensor([-light[0], -light[1], 0.3])
    towards_camera = towards_camera / towards_camera.norm()
    shadowed = trace((point + 0.2 * towards_camera)[None], -towards_camera[None])[0]
    torch.testing.assert_close(shadowed, AMBIENT * torch.tensor(BOXES[0][2]))


def test_render_views_matches_tracing_thecamera_rays(scene):
    torch.testing.assert_close(render_views(scene.poses[:2], 16, 16, scene.focal), scene.images[:2])
    torch.testing.assert_close(trace(*camera_rays(scene.test_poses, 16, 16, scene.focal)), scene.test_images)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 0}, "size must be an int >= 1"),
    ({"n_train": 2.5}, "n_train must be an int >= 1"),
    ({"fov_degrees": 180}, "fov_degrees must be in"),
    ({"radius": 1.0}, "radius must be > 2"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        procedural_scene(**kwargs)


def test_to_moves_every_tensor(scene):
    moved = scene.to(torch.float64)  # what .to(device) does, checkable without a GPU
    for name in ("images", "poses", "test_images", "test_poses", "aabb", "background"):
        assert getattr(moved, name).dtype == torch.float64
        torch.testing.assert_close(getattr(moved, name).float(), getattr(scene, name))
    assert (moved.focal, moved.near, moved.far) == (scene.focal, scene.near, scene.far)
