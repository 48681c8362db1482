"""NeRF acceleration with nerfacc's names, on the CPU as well as the GPU: rays, an occupancy grid
that skips empty space, and fused volume rendering (kernels in ``fastgen.ops.nerf``)."""
from fastgen.nerf.occupancy import OccupancyGrid
from fastgen.nerf.rays import pinhole_rays, ray_aabb_intersect
from fastgen.nerf.rendering import (
    accumulate_along_rays,
    packed_info_from_ray_indices,
    render_from_density,
    render_transmittance_from_density,
    render_weight_from_alpha,
    render_weight_from_density,
    rendering,
)
from fastgen.ops.nerf.pdf import sample_pdf

__all__ = ["OccupancyGrid", "accumulate_along_rays", "packed_info_from_ray_indices", "pinhole_rays",
           "ray_aabb_intersect", "render_from_density", "render_transmittance_from_density",
           "render_weight_from_alpha", "render_weight_from_density", "rendering", "sample_pdf"]
