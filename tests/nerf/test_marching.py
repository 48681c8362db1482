"""Rays, ray-box intersection and occupancy-grid marching: every backend against the plain-torch spec."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastgen.nerf.occupancy import OccupancyGrid
from fastgen.nerf.rays import pinhole_rays, ray_aabb_intersect
from fastgen.ops.nerf.marching import OCCUPANCY_GRID_MARCH, RAY_AABB_INTERSECT, occupancy_grid_march
from fastgen.ops.nerf.reference import level_boxes, occupied_at
from fastgen.testing import backends_for

INTERSECT_BACKENDS = [b for b in backends_for(RAY_AABB_INTERSECT) if b != "ref"]
MARCH_BACKENDS = [b for b in backends_for(OCCUPANCY_GRID_MARCH) if b != "ref"]
ROI = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def random_rays(n, dtype=torch.float32, seed=0, spread=2.5):
    """Origins around the roi (some inside), unit directions (half aimed into the roi); a tenth with a
    zero component, a few axis-parallel (two zeros)."""
    gen = torch.Generator().manual_seed(seed)
    o = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    d = F.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=1)
    aimed = n // 2  # the second half looks at points in the roi
    d[aimed:] = F.normalize(torch.rand(n - aimed, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.8 - o[aimed:], dim=1)
    d[: n // 10, 1] = 0
    d[n // 10: n // 10 + 4, :2] = 0
    d = F.normalize(d, dim=1)
    return o.to(dtype), d.to(dtype)


def intervals(o, d, levels=1, near=0.0, far=1e10):
    box = torch.tensor([level_boxes(ROI, levels)[0][-1].tolist() + (level_boxes(ROI, levels)[0][-1]
                                                                    + level_boxes(ROI, levels)[1][-1]).tolist()])
    t0, t1, hit = ray_aabb_intersect(o, d, box.to(o.dtype), near, far, impl="ref")
    return torch.where(hit[:, 0], t0[:, 0], 0).double(), torch.where(hit[:, 0], t1[:, 0], 0).double()


def random_binaries(levels, res, p=0.3, seed=1):
    return torch.rand(levels, *res, generator=torch.Generator().manual_seed(seed)) < p


# ---------------------------------------------------------------- ray_aabb_intersect

@pytest.mark.parametrize("backend", INTERSECT_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("planes", ((-math.inf, math.inf), (0.0, 2.0), (0.5, 1e10)), ids=str)
def test_intersect_matches_reference(backend, dtype, planes):
    o, d = random_rays(257, dtype)
    aabbs = torch.tensor([ROI, [0, 0, 0, 0.5, 0.7, 2], [-3, -0.1, -2, -2, 0.1, 2]], dtype=dtype)
    expected = ray_aabb_intersect(o, d, aabbs, *planes, impl="ref")
    got = ray_aabb_intersect(o, d, aabbs, *planes, impl=backend)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert 0 < int(expected[2].sum()) < expected[2].numel()  # hits and misses


@pytest.mark.parametrize("impl", ["ref", *INTERSECT_BACKENDS])
def test_intersect_cases(impl):
    o = torch.tensor([[-3.0, 0, 0], [0, 0, 0], [-3, 5, 0], [3, 0, 0], [0, 1, 0.5], [-3, 0, 0], [0.2, 0.3, 0.4]])
    d = torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]])
    t0, t1, hit = ray_aabb_intersect(o, d, torch.tensor([ROI]), impl=impl)
    assert hit[:, 0].tolist() == [True, True, False, False, True, True, True]
    # through; from inside (negative entry); beside; behind; along a face (d_y = 0 on y = 1);
    # a direction of length 2 (t in units of |d|); a zero direction inside the box
    assert t0[:, 0].tolist()[:2] == [2.0, -1.0] and t1[:, 0].tolist()[:2] == [4.0, 1.0]
    assert math.isinf(t0[2, 0]) and math.isinf(t1[3, 0])
    assert (t0[4, 0].item(), t1[4, 0].item()) == (-1.0, 1.0)
    assert (t0[5, 0].item(), t1[5, 0].item()) == (1.0, 2.0)
    assert (t0[6, 0].item(), t1[6, 0].item()) == (-math.inf, math.inf)
    c0, c1, _ = ray_aabb_intersect(o, d, torch.tensor([ROI]), 0.0, 3.0, miss_value=-1.0, impl=impl)
    assert c0[:, 0].tolist() == [2.0, 0.0, -1.0, -1.0, 0.0, 1.0, 0.0]
    assert c1[:, 0].tolist() == [3.0, 1.0, -1.0, -1.0, 1.0, 2.0, 3.0]


# ---------------------------------------------------------------- the marcher

def march_all(o, d, t0, t1, binaries, step, cone, backends):
    return {b: occupancy_grid_march(o, d, t0, t1, binaries, ROI, step, cone, impl=b) for b in backends}


@pytest.mark.parametrize("backend", MARCH_BACKENDS)
@pytest.mark.parametrize("levels,res", [(1, (16, 16, 16)), (2, (12, 16, 8)), (3, (10, 7, 13))], ids=str)
@pytest.mark.parametrize("cone", (0.0, 0.02), ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_march_matches_reference(backend, levels, res, cone, dtype):
    o, d = random_rays(300, dtype, seed=levels)
    t0, t1 = intervals(o, d, levels, near=0.3, far=3.5)
    binaries = random_binaries(levels, res, p=0.2, seed=levels)
    out = march_all(o, d, t0, t1, binaries, 0.013, cone, ["ref", backend])
    (ri, ts, te), (ri_b, ts_b, te_b) = out["ref"], out[backend]
    assert len(ri) > 1000 and ts.dtype == dtype and ri.dtype == torch.int64
    assert torch.equal(ri, ri_b) and torch.equal(ts, ts_b) and torch.equal(te, te_b)


@pytest.mark.parametrize("backend", MARCH_BACKENDS)
@pytest.mark.parametrize("levels,res", [(1, (32, 32, 32)), (2, (40, 24, 36)), (3, (32, 32, 32))], ids=str)
@pytest.mark.parametrize("cone", (0.0, 0.02), ids=str)
def test_march_matches_reference_sparse(backend, levels, res, cone):
    """A sphere and sparse specks: most 8^3 blocks are empty and crossed in one jump."""
    o, d = random_rays(300, torch.float32, seed=levels + 10)
    t0, t1 = intervals(o, d, levels)
    lo, ext = level_boxes(ROI, levels)
    centers = torch.stack(torch.meshgrid(*[torch.arange(r) + 0.5 for r in res], indexing="ij"), -1).double()
    sphere = torch.stack([(lo[l] + centers / torch.tensor(res) * ext[l]).norm(dim=-1) < 0.4 for l in range(levels)])
    binaries = sphere | random_binaries(levels, res, p=0.001, seed=levels)
    out = march_all(o, d, t0, t1, binaries, 0.007, cone, ["ref", backend])
    assert len(out["ref"][0]) > 300
    assert all(torch.equal(a, b) for a, b in zip(out["ref"], out[backend]))


@pytest.mark.parametrize("impl", ["ref", *MARCH_BACKENDS])
@pytest.mark.parametrize("levels", (1, 2))
def test_march_samples_are_in_occupied_cells(impl, levels):
    o, d = random_rays(200, torch.float64, seed=5)
    t0, t1 = intervals(o, d, levels, near=0.1)
    binaries = random_binaries(levels, (16, 16, 16), p=0.25, seed=7)
    ri, ts, te = occupancy_grid_march(o, d, t0, t1, binaries, ROI, 0.01, 0.0, impl=impl)
    mid = (ts + te) / 2
    assert bool(occupied_at(o[ri] + mid[:, None] * d[ri], binaries, *level_boxes(ROI, levels)).all())
    assert bool((ts >= t0[ri] - 1e-12).all() and (te <= t1[ri]).all())
    assert bool((ri[1:] >= ri[:-1]).all())
    same_ray = ri[1:] == ri[:-1]
    assert bool((ts[1:][same_ray] >= te[:-1][same_ray] - 1e-12).all())  # ordered, non-overlapping


@pytest.mark.parametrize("impl", ["ref", *MARCH_BACKENDS])
def test_empty_and_full_grid(impl):
    o, d = random_rays(100, torch.float64, seed=3)
    t0, t1 = intervals(o, d)
    empty = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    assert len(occupancy_grid_march(o, d, t0, t1, empty, ROI, 0.01, 0.0, impl=impl)[0]) == 0
    step = 0.01
    ri, ts, te = occupancy_grid_march(o, d, t0, t1, ~empty, ROI, step, 0.0, impl=impl)
    counts = torch.bincount(ri, minlength=100)
    hit = t1 > t0
    # Uniform steps from each ray's entry: every whole step that fits.
    expected = torch.where(hit, ((t1 - t0) / step).floor(), 0).long()
    assert (counts - expected).abs().max() <= 1 and bool((counts[~hit] == 0).all())
    k = (torch.arange(len(ri)) - torch.cumsum(counts, 0)[ri] + counts[ri]).double()
    assert torch.equal(ts, t0[ri] + k * step) and torch.equal(te, t0[ri] + (k + 1) * step)
    assert bool((t1[ri][te == te.max()] - te.max() < step).all())


@pytest.mark.parametrize("backend", MARCH_BACKENDS)
def test_march_deterministic_across_threads(backend):
    o, d = random_rays(2000, torch.float32, seed=11)
    t0, t1 = intervals(o, d, 2)
    binaries = random_binaries(2, (32, 32, 32), p=0.1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = occupancy_grid_march(o, d, t0, t1, binaries, ROI, 0.005, 0.01, impl=backend)
        torch.set_num_threads(2)
        two = occupancy_grid_march(o, d, t0, t1, binaries, ROI, 0.005, 0.01, impl=backend)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("impl", ["ref", *MARCH_BACKENDS])
def test_march_edge_inputs(impl):
    binaries = random_binaries(1, (8, 8, 8))
    empty = torch.empty(0, 3)
    ri, ts, te = occupancy_grid_march(empty, empty, torch.empty(0), torch.empty(0), binaries, ROI, 0.1, impl=impl)
    assert ri.shape == ts.shape == te.shape == (0,)
    assert [t.shape for t in ray_aabb_intersect(empty, empty, torch.tensor([ROI]), impl=impl)] == [(0, 1)] * 3
    grid = OccupancyGrid(ROI, 8)
    grid.binaries.fill_(True)
    assert [t.shape for t in grid.sampling(empty, empty, sigma_fn=lambda *a: a[0], impl=impl)] == [(0,)] * 3
    o, d = random_rays(50, seed=2)
    t0, t1 = intervals(o, d)
    t0[:5] = math.inf  # misses and empty intervals take no samples
    t1[5:10] = t0[5:10]
    ri = occupancy_grid_march(o, d, t0, t1, ~binaries, ROI, 0.1, impl=impl)[0]
    assert not bool((ri < 10).any())
    with pytest.raises(RuntimeError, match="max_samples"):
        occupancy_grid_march(o, d, t0, t1, ~binaries, ROI, 0.01, max_samples=10, impl=impl)


@pytest.mark.parametrize("impl", ["ref", *MARCH_BACKENDS])
def test_opcheck(impl):
    o, d = random_rays(12, seed=4)
    aabbs = torch.tensor([ROI, [0, 0, 0, 0.5, 0.7, 2]])
    torch.library.opcheck(RAY_AABB_INTERSECT.op, (o, d, aabbs, 0.0, 10.0, math.inf, impl))
    t0, t1 = intervals(o, d)
    torch.library.opcheck(OCCUPANCY_GRID_MARCH.op,
                          (o, d, t0, t1, random_binaries(2, (4, 4, 4), p=0.5), ROI, 0.1, 0.0, 100000, impl))


def test_bad_inputs():
    o, d = random_rays(10)
    box = torch.tensor([ROI])
    t0, t1 = intervals(o, d)
    binaries = random_binaries(1, (8, 8, 8))
    nan = o.clone()
    nan[3, 1] = math.nan
    with pytest.raises(ValueError, match="rays_o contains NaN"):
        ray_aabb_intersect(nan, d, box)
    with pytest.raises(ValueError, match="rays_d contains NaN"):
        occupancy_grid_march(o, nan, t0, t1, binaries, ROI, 0.1)
    with pytest.raises(ValueError, match="same number of rays"):
        ray_aabb_intersect(o, d[:5], box)
    with pytest.raises(ValueError, match=r"aabbs must be \[m, 6\]"):
        ray_aabb_intersect(o, d, box[:, :3])
    with pytest.raises(ValueError, match=r"rays_o must be \[n, 3\]"):
        ray_aabb_intersect(o[:, :2], d, box)
    with pytest.raises(TypeError, match="aabbs must have the dtype"):
        ray_aabb_intersect(o, d, box.double())
    with pytest.raises(ValueError, match=r"t_starts must be a float tensor of shape \[10\]"):
        occupancy_grid_march(o, d, t0[:4], t1, binaries, ROI, 0.1)
    for step in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="render_step_size must be a positive float"):
            occupancy_grid_march(o, d, t0, t1, binaries, ROI, step)
    with pytest.raises(ValueError, match="too small"):
        occupancy_grid_march(o, d, t0, t1, binaries, ROI, 1e-9)
    zero = d.clone()
    zero[4] = 0
    with pytest.raises(ValueError, match=r"rays_d has zero directions \(ray 4 and 0 more\)"):
        OccupancyGrid(ROI, 8).sampling(o, zero)
    with pytest.raises(ValueError, match="cone_angle"):
        occupancy_grid_march(o, d, t0, t1, binaries, ROI, 0.1, -1.0)
    with pytest.raises(ValueError, match="binaries must be bool"):
        occupancy_grid_march(o, d, t0, t1, binaries.float(), ROI, 0.1)
    grid = OccupancyGrid(ROI, 8)
    with pytest.raises(ValueError, match="not both"):
        grid.sampling(o, d, sigma_fn=lambda *a: a[0], alpha_fn=lambda *a: a[0])
    with pytest.raises(ValueError, match="render_step_size"):
        grid.sampling(o, d, render_step_size=0.0)
    with pytest.raises(ValueError, match="roi_aabb"):
        OccupancyGrid([1, 1, 1, 0, 0, 0])
    grid.eval()
    with pytest.raises(RuntimeError, match="training"):
        grid.update_every_n_steps(0, lambda x: x[:, 0])


# ---------------------------------------------------------------- OccupancyGrid

def sphere_occupancy(x):
    return (x.norm(dim=-1) < 0.5).float()


def assert_marks_sphere(grid):
    lo, ext = level_boxes(ROI, grid.levels)
    for level in range(grid.levels):
        centers = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
        centers = lo[level] + (centers + 0.5) / 16 * ext[level]
        radius = centers.norm(dim=-1)
        half_diagonal = math.sqrt(3) / 2 * float(ext[level, 0]) / 16
        marked = grid.binaries[level].flatten()
        assert bool(marked[radius < 0.5 - half_diagonal].all())  # wholly inside the sphere
        assert not bool(marked[radius > 0.5 + half_diagonal].any())  # wholly outside


def test_update_marks_a_sphere():
    grid = OccupancyGrid(ROI, 16, levels=2)
    gen = torch.Generator().manual_seed(0)
    grid.update_every_n_steps(0, sphere_occupancy, warmup_steps=4, generator=gen)
    assert_marks_sphere(grid)
    before = grid.binaries.clone()
    grid.update_every_n_steps(3, lambda x: torch.ones(len(x)), n=2, warmup_steps=0, generator=gen)  # not a 2nd step
    assert torch.equal(grid.binaries, before)
    grid.update_every_n_steps(8, sphere_occupancy, n=2, warmup_steps=4, generator=gen)  # a quarter + occupied
    assert not bool((before & ~grid.binaries).any())  # a sphere that stays put stays marked
    assert_marks_sphere(grid)
    occs = grid.occs.clone()
    grid.update_every_n_steps(10, lambda x: torch.zeros(len(x)), n=2, warmup_steps=4, generator=gen)
    assert bool((grid.occs <= occs).all()) and bool((grid.occs >= occs * 0.95 - 1e-7).all())  # ema decay


@pytest.mark.parametrize("backend", MARCH_BACKENDS)
def test_sampling_matches_reference(backend):
    grid = OccupancyGrid(ROI, (16, 12, 20), levels=2)
    grid.binaries.copy_(random_binaries(2, (16, 12, 20), p=0.3, seed=9))
    o, d = random_rays(150, seed=8)
    t_min, t_max = torch.full((150,), 0.5), torch.full((150,), 3.0)
    kwargs = dict(near_plane=0.2, far_plane=4.0, t_min=t_min, t_max=t_max, render_step_size=0.02, cone_angle=0.01)
    ref = grid.sampling(o, d, impl="ref", **kwargs)
    got = grid.sampling(o, d, impl=backend, **kwargs)
    assert len(ref[0]) > 500 and all(torch.equal(a, b) for a, b in zip(ref, got))
    assert float(got[1].min()) >= 0.5 and float(got[2].max()) <= 3.0
    # Stratified: one jitter per ray from the generator, within a step of the unjittered start.
    a = grid.sampling(o, d, stratified=True, generator=torch.Generator().manual_seed(1), impl=backend, **kwargs)
    b = grid.sampling(o, d, stratified=True, generator=torch.Generator().manual_seed(1), impl=backend, **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[1][:10], got[1][:10])


def test_sampling_sigma_fn_filtering():
    grid = OccupancyGrid(ROI, 8)
    grid.binaries.fill_(True)
    o, d = random_rays(60, seed=12)
    unfiltered = grid.sampling(o, d, render_step_size=0.05)

    def sigma_fn(t_starts, t_ends, ray_indices):
        return 3.0 * (1 + torch.sin(5 * t_starts + ray_indices))

    for eps, thre in ((1e-2, 0.0), (0.0, 0.12), (1e-3, 0.1)):
        ri, ts, te = grid.sampling(o, d, sigma_fn=sigma_fn, render_step_size=0.05, early_stop_eps=eps,
                                   alpha_thre=thre)
        keep = []
        for ray in range(60):  # per-ray exclusive transmittance, with a cumprod
            sel = unfiltered[0] == ray
            alpha = 1 - torch.exp(-sigma_fn(unfiltered[1][sel], unfiltered[2][sel], unfiltered[0][sel]).double()
                                  * (unfiltered[2][sel] - unfiltered[1][sel]).double())
            trans = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - alpha]), 0)[:-1]
            keep.append((trans >= eps) & (alpha >= thre if thre > 0 else True))
        keep = torch.cat(keep)
        assert torch.equal(ri, unfiltered[0][keep]) and torch.equal(ts, unfiltered[1][keep])
        assert 0 < len(ri) < len(unfiltered[0])
    alpha_kept = grid.sampling(o, d, alpha_fn=lambda ts, te, ri: torch.full_like(ts, 0.5), render_step_size=0.05,
                               early_stop_eps=0.1)[0]
    assert int(torch.bincount(alpha_kept).max()) == 4  # 1, 1/2, 1/4, 1/8 >= 0.1 > 1/16


# ---------------------------------------------------------------- pinhole_rays

def test_pinhole_rays():
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    origins, dirs = pinhole_rays((10.0, 10.0, 2.5, 1.5), c2w, 3, 5)
    assert origins.shape == dirs.shape == (3, 5, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(3, 5))
    assert torch.allclose(dirs[1, 2], torch.tensor([0.0, 0.0, -1.0]))  # the center pixel looks down -z
    assert dirs[0, 0, 0] < 0 and dirs[0, 0, 1] > 0  # top-left: left (x < 0) and up (y > 0)
    assert torch.equal(origins, torch.tensor([1.0, 2.0, 3.0]).expand(3, 5, 3))
    # A batch of poses rotates the directions: a camera turned 90 degrees about y looks down -x.
    turn = torch.tensor([[0.0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]])
    K = torch.tensor([[10.0, 0, 2.5], [0, 10, 1.5], [0, 0, 1]])
    o2, d2 = pinhole_rays(K.expand(2, 3, 3), torch.stack([c2w, turn]), 3, 5, normalize=False)
    assert d2.shape == (2, 3, 5, 3) and torch.allclose(d2[1, 1, 2], torch.tensor([-1.0, 0, 0]))
    assert torch.allclose(d2[0, ..., 2], -torch.ones(3, 5))
    with pytest.raises(ValueError, match="c2w must be"):
        pinhole_rays(K, torch.eye(3), 3, 5)
    with pytest.raises(ValueError, match="height"):
        pinhole_rays(K, c2w, 0, 5)
