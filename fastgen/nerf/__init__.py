"""NeRF acceleration with nerfacc's names, on the CPU as well as the GPU: rays, an occupancy grid
that skips empty space, and fused volume rendering (kernels in ``fastgen.ops.nerf``)."""
