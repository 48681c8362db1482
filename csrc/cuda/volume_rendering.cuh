// Launchers for NeRF volume rendering on packed rays (volume_rendering.cu). Torch-free, so the .cu
// builds with plain nvcc; csrc/cuda/bindings.cpp validates tensors, allocates the outputs and passes
// raw pointers. The spec is fastgen/ops/nerf/reference_rendering.py.
//
// Layout: ray r owns samples [packed_info[2r], packed_info[2r] + packed_info[2r + 1]) of the [N]
// arrays (rgbs and grad_rgbs [N, channels], row-major); the rays tile [0, N) in order and every
// pointer is contiguous. T is float or double (also the compute type). Everything goes on `stream`
// with no host synchronization; n_rays = 0 launches nothing. Returns cudaErrorInvalidValue for a
// negative size (or channels < 1), else the launch error or cudaSuccess. Inputs are not checked for
// NaN sigmas or t_end < t_start (the Python layer does that).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// weights, trans, alphas [N]: alpha_i = 1 - exp(-sigma_i delta_i), T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i.
template <typename T>
cudaError_t volume_render_weights_cuda(const T* sigmas, const T* t_starts, const T* t_ends,
                                       const int64_t* packed_info, int64_t n_rays, T* weights, T* trans,
                                       T* alphas, cudaStream_t stream);

// grad_sigmas [N] from the gradients of the three outputs and the saved outputs.
template <typename T>
cudaError_t volume_render_weights_backward_cuda(const T* grad_weights, const T* grad_trans,
                                                const T* grad_alphas, const T* t_starts, const T* t_ends,
                                                const int64_t* packed_info, int64_t n_rays, const T* weights,
                                                const T* trans, const T* alphas, T* grad_sigmas,
                                                cudaStream_t stream);

// colors [R, channels], opacities [R], depths [R]: the weighted sums over the samples with
// T_i >= early_stop_eps (a ray stops at its first sample below it).
template <typename T>
cudaError_t volume_render_cuda(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends,
                               const int64_t* packed_info, int64_t n_rays, int64_t channels, T early_stop_eps,
                               T* colors, T* opacities, T* depths, cudaStream_t stream);

// grad_sigmas [N], grad_rgbs [N, channels] from grad_colors [R, channels], grad_opacities [R],
// grad_depths [R]; zero for the samples past a ray's stop.
template <typename T>
cudaError_t volume_render_backward_cuda(const T* grad_colors, const T* grad_opacities, const T* grad_depths,
                                        const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends,
                                        const int64_t* packed_info, int64_t n_rays, int64_t channels,
                                        T early_stop_eps, T* grad_sigmas, T* grad_rgbs, cudaStream_t stream);

}  // namespace fastgen
