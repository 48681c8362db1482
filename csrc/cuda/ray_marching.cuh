// Launchers for NeRF ray marching in ray_marching.cu. Torch-free, so the .cu builds with plain nvcc;
// csrc/cuda/bindings.cpp validates tensors, converts rays and intervals to float64, allocates the
// outputs and turns them into these arguments. The spec is fastgen/ops/nerf/reference_marching.py;
// the CPU kernel is csrc/cpu/ray_marching.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// t_mins, t_maxs, hits [n, m] of rays o, d [n, 3] against boxes [m, 6] (all contiguous; T is float or
// double), as ray_aabb_intersect_ref.
template <typename T>
cudaError_t ray_aabb_intersect_cuda(const T* rays_o, const T* rays_d, const T* aabbs, int64_t n, int64_t m,
                                    T near_plane, T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits,
                                    cudaStream_t stream);

// Cells per side of the blocks that a ray crosses in one jump when all their cells are empty.
constexpr int64_t kOccupancyBlock = 8;

// A multi-level occupancy grid: binaries [levels, res0, res1, res2] (contiguous, device memory);
// level l covers roi (min xyz, max xyz) scaled by 2^l around its center. block_occupied
// [levels, blocks0, blocks1, blocks2] (blocks = ceil(res / kOccupancyBlock)) is 1 where any cell
// of the block is occupied.
struct OccupancyGridView {
  const bool* binaries;
  const uint8_t* block_occupied;
  int64_t levels;
  int64_t res[3];
  int64_t blocks[3];
  double roi[6];
};

// Marching is count-then-fill. The count pass writes counts[i], the number of samples of ray i
// (rays o, d [n, 3] and intervals t0, t1 [n], float64). The caller turns counts into exclusive
// offsets; the fill pass writes ray i's samples from offsets[i] on: ray_indices, t_starts, t_ends
// (T is float or double). Positions use round-to-nearest double arithmetic without contraction,
// so both passes (and the CPU kernel) place the same samples.
cudaError_t occupancy_grid_march_count_cuda(const OccupancyGridView& grid, const double* rays_o,
                                            const double* rays_d, const double* t0, const double* t1, int64_t n,
                                            double step_size, double cone_angle, int64_t* counts,
                                            cudaStream_t stream);

template <typename T>
cudaError_t occupancy_grid_march_fill_cuda(const OccupancyGridView& grid, const double* rays_o, const double* rays_d,
                                           const double* t0, const double* t1, int64_t n, double step_size,
                                           double cone_angle, const int64_t* offsets, int64_t* ray_indices,
                                           T* t_starts, T* t_ends, cudaStream_t stream);

}  // namespace fastgen
