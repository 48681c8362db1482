"""NeRF kernels as ``fastgen::`` ops: ray marching through an occupancy grid, volume rendering, and
hierarchical (inverse-CDF) sampling. The user-facing API, with nerfacc's names, is ``fastgen.nerf``."""
from fastgen.ops.nerf.marching import occupancy_grid_march, ray_aabb_intersect
from fastgen.ops.nerf.pdf import sample_pdf
from fastgen.ops.nerf.rendering import VOLUME_RENDER, VOLUME_RENDER_WEIGHTS

__all__ = ["VOLUME_RENDER", "VOLUME_RENDER_WEIGHTS", "occupancy_grid_march", "ray_aabb_intersect", "sample_pdf"]
