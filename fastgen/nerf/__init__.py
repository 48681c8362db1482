"""NeRF acceleration with nerfacc's names, on the CPU as well as the GPU: rays, an occupancy grid
that skips empty space, and fused volume rendering (kernels in ``fastgen.ops.nerf``)."""
from fastgen.nerf.occupancy import OccupancyGrid
from fastgen.nerf.rays import pinhole_rays, ray_aabb_intersect
from fastgen.ops.nerf.pdf import sample_pdf

__all__ = ["OccupancyGrid", "pinhole_rays", "ray_aabb_intersect", "sample_pdf"]
