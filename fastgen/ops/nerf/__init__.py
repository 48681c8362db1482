"""NeRF kernels as ``fastgen::`` ops: ray marching through an occupancy grid, volume rendering, and
hierarchical (inverse-CDF) sampling. The user-facing API, with nerfacc's names, is ``fastgen.nerf``."""
from fastgen.ops.nerf.marching import occupancy_grid_march, ray_aabb_intersect
from fastgen.ops.nerf.pdf import sample_pdf

__all__ = ["occupancy_grid_march", "ray_aabb_intersect", "sample_pdf"]
