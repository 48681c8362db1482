"""NeRF kernels as ``fastgen::`` ops: ray marching through an occupancy grid, volume rendering, and
hierarchical (inverse-CDF) sampling. The user-facing API, with nerfacc's names, is ``fastgen.nerf``."""
