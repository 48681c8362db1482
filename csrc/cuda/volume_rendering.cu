// NeRF volume rendering on packed rays: one thread per ray walks its samples in order (the
// sequential transmittance product is the whole dependency), as nerfacc's CUDA kernels do. The
// spec is fastgen/ops/nerf/reference_rendering.py; the layout and contracts are in the .cuh.
//
// * Forward: T_{i+1} = T_i exp(-sigma_i delta_i), the same product as the C++ kernel; the fused
//   kernel stops at the first sample with T_i < early_stop_eps, so the rgbs after it are never read.
// * Fused backward: a first pass repeats the forward's product to find that stop K and the sum of
//   tau over [0, K); a second walks [0, K) in reverse with P_{i+1} = P_i + tau_i recovered as
//   (sum so far from the end) subtracted from the total, in log space (a division by
//   exp(-tau_i) would blow up on opaque samples), and the suffix sum of w_k v_k:
//     grad_sigma_i = delta_i (T_{i+1} v_i - sum_{k > i} w_k v_k),  grad_rgb_i = w_i g_color,
//   with v_i = g_color . c_i + g_opacity + g_depth mid_i. No per-sample scratch.
// * Weights backward: one reverse walk over the saved outputs with the suffix sum of
//   gw_k w_k + gT_k T_k.
//
// Known limitations (this has been compiled for sm_80 / sm_90, never run or timed on a GPU): a
// thread per ray leaves lanes idle on rays of unequal length and reads samples with a stride of one
// per lane (uncoalesced when rays are long); nerfacc's kernels share both. RGB (3 channels) keeps the
// color in registers; other channel counts accumulate in the output row in global memory.
#include "volume_rendering.cuh"

#include <cuda_runtime.h>

namespace fastgen {
namespace {

constexpr int kThreads = 256;

__device__ inline void ray_range(const int64_t* packed_info, int64_t ray, int64_t& start, int64_t& count) {
  start = packed_info[2 * ray];
  count = packed_info[2 * ray + 1];
}

template <typename T>
__global__ void weights_forward_kernel(const T* sigmas, const T* t_starts, const T* t_ends,
                                       const int64_t* packed_info, int64_t n_rays, T* weights, T* trans,
                                       T* alphas) {
  const int64_t ray = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ray >= n_rays) return;
  int64_t start, count;
  ray_range(packed_info, ray, start, count);
  T transmittance = 1;
  for (int64_t i = start; i < start + count; ++i) {
    const T survival = exp(-sigmas[i] * (t_ends[i] - t_starts[i]));
    trans[i] = transmittance;
    alphas[i] = T(1) - survival;
    weights[i] = transmittance * (T(1) - survival);
    transmittance *= survival;
  }
}

template <typename T>
__global__ void weights_backward_kernel(const T* grad_weights, const T* grad_trans, const T* grad_alphas,
                                        const T* t_starts, const T* t_ends, const int64_t* packed_info,
                                        int64_t n_rays, const T* weights, const T* trans, const T* alphas,
                                        T* grad_sigmas) {
  const int64_t ray = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ray >= n_rays) return;
  int64_t start, count;
  ray_range(packed_info, ray, start, count);
  T later = 0;
  for (int64_t i = start + count - 1; i >= start; --i) {
    const T survival = T(1) - alphas[i];
    grad_sigmas[i] = (t_ends[i] - t_starts[i]) *
                     (grad_weights[i] * trans[i] * survival + grad_alphas[i] * survival - later);
    later += grad_weights[i] * weights[i] + grad_trans[i] * trans[i];
  }
}

// kChannels > 0: a compile-time channel count kept in registers; 0: `channels`, summed in `colors`.
template <typename T, int kChannels>
__global__ void render_forward_kernel(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends,
                                      const int64_t* packed_info, int64_t n_rays, int64_t channels, T eps,
                                      T* colors, T* opacities, T* depths) {
  const int64_t ray = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ray >= n_rays) return;
  int64_t start, count;
  ray_range(packed_info, ray, start, count);
  const int64_t c = kChannels > 0 ? kChannels : channels;
  T* color_out = colors + ray * c;
  T color[kChannels > 0 ? kChannels : 1] = {};
  if (kChannels == 0)
    for (int64_t k = 0; k < c; ++k) color_out[k] = T(0);
  T transmittance = 1, opacity = 0, depth = 0;
  for (int64_t i = start; i < start + count && transmittance >= eps; ++i) {
    const T survival = exp(-sigmas[i] * (t_ends[i] - t_starts[i]));
    const T w = transmittance * (T(1) - survival);
    const T* rgb = rgbs + i * c;
    if (kChannels > 0) {
#pragma unroll
      for (int k = 0; k < (kChannels > 0 ? kChannels : 1); ++k) color[k] += w * rgb[k];
    } else {
      for (int64_t k = 0; k < c; ++k) color_out[k] += w * rgb[k];
    }
    opacity += w;
    depth += w * (t_starts[i] + t_ends[i]) * T(0.5);
    transmittance *= survival;
  }
  if (kChannels > 0)
    for (int k = 0; k < (kChannels > 0 ? kChannels : 1); ++k) color_out[k] = color[k];
  opacities[ray] = opacity;
  depths[ray] = depth;
}

template <typename T>
__global__ void render_backward_kernel(const T* grad_colors, const T* grad_opacities, const T* grad_depths,
                                       const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends,
                                       const int64_t* packed_info, int64_t n_rays, int64_t channels, T eps,
                                       T* grad_sigmas, T* grad_rgbs) {
  const int64_t ray = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ray >= n_rays) return;
  int64_t start, count;
  ray_range(packed_info, ray, start, count);
  // Pass 1: the forward's stop K (as an index past the last composited sample) and the tau before it.
  T transmittance = 1, total = 0;
  int64_t stop = start;
  for (; stop < start + count && transmittance >= eps; ++stop) {
    const T tau = sigmas[stop] * (t_ends[stop] - t_starts[stop]);
    transmittance *= exp(-tau);
    total += tau;
  }
  const T* g = grad_colors + ray * channels;
  const T g_opacity = grad_opacities[ray], g_depth = grad_depths[ray];
  for (int64_t i = stop; i < start + count; ++i) {
    grad_sigmas[i] = T(0);
    for (int64_t k = 0; k < channels; ++k) grad_rgbs[i * channels + k] = T(0);
  }
  // Pass 2, from the last composited sample back.
  T after_tau = 0, later = 0;  // tau and w v of the samples after i
  for (int64_t i = stop - 1; i >= start; --i) {
    const T delta = t_ends[i] - t_starts[i];
    const T tau = sigmas[i] * delta;
    const T through = total - after_tau;  // P_{i+1}
    const T trans_next = exp(-through);
    const T w = exp(-(through - tau)) * (T(1) - exp(-tau));
    const T* rgb = rgbs + i * channels;
    T v = g_opacity + g_depth * (t_starts[i] + t_ends[i]) * T(0.5);
    for (int64_t k = 0; k < channels; ++k) {
      v += g[k] * rgb[k];
      grad_rgbs[i * channels + k] = w * g[k];
    }
    grad_sigmas[i] = delta * (trans_next * v - later);
    later += w * v;
    after_tau += tau;
  }
}

dim3 grid_for(int64_t n_rays) { return dim3(static_cast<unsigned>((n_rays + kThreads - 1) / kThreads)); }

}  // namespace

template <typename T>
cudaError_t volume_render_weights_cuda(const T* sigmas, const T* t_starts, const T* t_ends,
                                       const int64_t* packed_info, int64_t n_rays, T* weights, T* trans,
                                       T* alphas, cudaStream_t stream) {
  if (n_rays < 0) return cudaErrorInvalidValue;
  if (n_rays == 0) return cudaSuccess;
  weights_forward_kernel<T><<<grid_for(n_rays), kThreads, 0, stream>>>(sigmas, t_starts, t_ends, packed_info,
                                                                        n_rays, weights, trans, alphas);
  return cudaGetLastError();
}

template <typename T>
cudaError_t volume_render_weights_backward_cuda(const T* grad_weights, const T* grad_trans,
                                                const T* grad_alphas, const T* t_starts, const T* t_ends,
                                                const int64_t* packed_info, int64_t n_rays, const T* weights,
                                                const T* trans, const T* alphas, T* grad_sigmas,
                                                cudaStream_t stream) {
  if (n_rays < 0) return cudaErrorInvalidValue;
  if (n_rays == 0) return cudaSuccess;
  weights_backward_kernel<T><<<grid_for(n_rays), kThreads, 0, stream>>>(
      grad_weights, grad_trans, grad_alphas, t_starts, t_ends, packed_info, n_rays, weights, trans, alphas,
      grad_sigmas);
  return cudaGetLastError();
}

template <typename T>
cudaError_t volume_render_cuda(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends,
                               const int64_t* packed_info, int64_t n_rays, int64_t channels, T early_stop_eps,
                               T* colors, T* opacities, T* depths, cudaStream_t stream) {
  if (n_rays < 0 || channels < 1) return cudaErrorInvalidValue;
  if (n_rays == 0) return cudaSuccess;
  if (channels == 3) {
    render_forward_kernel<T, 3><<<grid_for(n_rays), kThreads, 0, stream>>>(
        sigmas, rgbs, t_starts, t_ends, packed_info, n_rays, channels, early_stop_eps, colors, opacities, depths);
  } else {
    render_forward_kernel<T, 0><<<grid_for(n_rays), kThreads, 0, stream>>>(
        sigmas, rgbs, t_starts, t_ends, packed_info, n_rays, channels, early_stop_eps, colors, opacities, depths);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t volume_render_backward_cuda(const T* grad_colors, const T* grad_opacities, const T* grad_depths,
                                        const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends,
                                        const int64_t* packed_info, int64_t n_rays, int64_t channels,
                                        T early_stop_eps, T* grad_sigmas, T* grad_rgbs, cudaStream_t stream) {
  if (n_rays < 0 || channels < 1) return cudaErrorInvalidValue;
  if (n_rays == 0) return cudaSuccess;
  render_backward_kernel<T><<<grid_for(n_rays), kThreads, 0, stream>>>(
      grad_colors, grad_opacities, grad_depths, sigmas, rgbs, t_starts, t_ends, packed_info, n_rays, channels,
      early_stop_eps, grad_sigmas, grad_rgbs);
  return cudaGetLastError();
}

#define FASTGEN_INSTANTIATE(T)                                                                                \
  template cudaError_t volume_render_weights_cuda<T>(const T*, const T*, const T*, const int64_t*, int64_t, T*, \
                                                     T*, T*, cudaStream_t);                                    \
  template cudaError_t volume_render_weights_backward_cuda<T>(const T*, const T*, const T*, const T*, const T*, \
                                                              const int64_t*, int64_t, const T*, const T*,      \
                                                              const T*, T*, cudaStream_t);                      \
  template cudaError_t volume_render_cuda<T>(const T*, const T*, const T*, const T*, const int64_t*, int64_t,   \
                                             int64_t, T, T*, T*, T*, cudaStream_t);                             \
  template cudaError_t volume_render_backward_cuda<T>(const T*, const T*, const T*, const T*, const T*,         \
                                                      const T*, const T*, const int64_t*, int64_t, int64_t, T,  \
                                                      T*, T*, cudaStream_t);
FASTGEN_INSTANTIATE(float)
FASTGEN_INSTANTIATE(double)
#undef FASTGEN_INSTANTIATE

}  // namespace fastgen
