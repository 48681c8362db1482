// AdaIN kernels: one thread block per (n, c) plane, block reductions through warp shuffles and
// shared memory. The spec is fastgen/ops/adain/reference.py. The scalar type is float or double
// and is also the accumulation type (half types never reach this backend).
//
// Known limitation: a plane is read as base + i * hw_stride, which is unit-stride and coalesced for
// NCHW but strides by C for channels_last, so those loads are uncoalesced. A channels_last kernel
// would instead tile over C, letting a warp read neighbouring channels of one pixel.
#include "adain.cuh"

#include <cuda_runtime.h>

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
static_assert(kThreads % 32 == 0 && kWarps <= 32, "block_sum reduces the warp partials in one warp");

// Element i of this block's plane (blockIdx.x = n * C + c).
template <typename T>
struct Plane {
  T* base;
  int64_t stride;
  __device__ T& operator[](int64_t i) const { return base[i * stride]; }
};

template <typename T>
__device__ Plane<T> this_plane(Planes<T> t, int64_t C) {
  const int64_t n = blockIdx.x / C, c = blockIdx.x % C;
  return {t.data + n * t.n_stride + c * t.c_stride, t.hw_stride};
}

template <typename T>
__device__ T warp_sum(T v) {
  // A butterfly leaves the same bits in every lane (each step adds the same two operands), so all
  // threads of a block agree exactly on the statistics.
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, returned to every thread. The first barrier keeps this call from
// overwriting partials that the previous call's warps are still reading.
template <typename T>
__device__ T block_sum(T v, T* partials) {
  const int lane = threadIdx.x % 32;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partials[threadIdx.x / 32] = v;
  __syncthreads();
  // Every warp reduces all partials itself, so no broadcast through shared memory is needed.
  return warp_sum(lane < kWarps ? partials[lane] : T(0));
}

template <typename T>
struct Stats {
  T mean, var;
};

// Mean and biased variance of a plane. The variance is a centered second pass: E[x^2] - E[x]^2
// cancels catastrophically when |mean| >> std.
template <typename T>
__device__ Stats<T> plane_stats(Plane<const T> x, int64_t M, T* partials) {
  T sum = 0;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) sum += x[i];
  const T mean = block_sum(sum, partials) / M;
  T sq = 0;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) {
    const T d = x[i] - mean;
    sq += d * d;
  }
  return {mean, block_sum(sq, partials) / M};
}

// out = (x - mean(x)) * rstd(x) * std_y + mean_y over one plane.
template <typename T>
__device__ void normalize_plane(Plane<const T> x, Plane<T> out, int64_t M, T mean_y, T std_y,
                                T eps, T* partials) {
  const Stats<T> st = plane_stats(x, M, partials);
  const T scale = T(1) / sqrt(st.var + eps) * std_y;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) out[i] = (x[i] - st.mean) * scale + mean_y;
}

template <typename T>
struct StyleGrads {
  T d_mean, d_std;
};

// With xhat = (x - mean) * rstd: d mean_y = sum(g) and d std_y = sum(g * xhat), returned, and
// dx = std_y * rstd * (g - d mean_y / M - xhat * d std_y / M), written.
template <typename T>
__device__ StyleGrads<T> backward_plane(Plane<const T> g, Plane<const T> x, Plane<T> dx, int64_t M,
                                        T std_y, T eps, T* partials) {
  const Stats<T> st = plane_stats(x, M, partials);
  const T rstd = T(1) / sqrt(st.var + eps);
  T sum_g = 0, sum_gx = 0;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) {
    const T gi = g[i];
    sum_g += gi;
    sum_gx += gi * ((x[i] - st.mean) * rstd);
  }
  const StyleGrads<T> grads{block_sum(sum_g, partials), block_sum(sum_gx, partials)};
  const T scale = std_y * rstd, g_mean = grads.d_mean / M, g_std = grads.d_std / M;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) {
    dx[i] = scale * (g[i] - g_mean - (x[i] - st.mean) * rstd * g_std);
  }
  return grads;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adain_forward_kernel(Planes<const T> content, const T* style_mean, const T* style_std,
                         Planes<T> out, int64_t C, int64_t HW, T eps) {
  __shared__ T partials[kWarps];
  normalize_plane(this_plane(content, C), this_plane(out, C), HW, style_mean[blockIdx.x],
                  style_std[blockIdx.x], eps, partials);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adain_backward_kernel(Planes<const T> grad_out, Planes<const T> content, const T* style_std,
                          Planes<T> grad_content, T* grad_style_mean, T* grad_style_std,
                          int64_t C, int64_t HW, T eps) {
  __shared__ T partials[kWarps];
  const StyleGrads<T> grads =
      backward_plane(this_plane(grad_out, C), this_plane(content, C), this_plane(grad_content, C),
                     HW, style_std[blockIdx.x], eps, partials);
  if (threadIdx.x == 0) {
    grad_style_mean[blockIdx.x] = grads.d_mean;
    grad_style_std[blockIdx.x] = grads.d_std;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adain_from_style_forward_kernel(Planes<const T> content, Planes<const T> style, Planes<T> out,
                                    int64_t C, int64_t HW, int64_t style_HW, T eps) {
  __shared__ T partials[kWarps];
  const Stats<T> s = plane_stats(this_plane(style, C), style_HW, partials);
  normalize_plane(this_plane(content, C), this_plane(out, C), HW, s.mean, sqrt(s.var + eps), eps,
                  partials);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adain_from_style_backward_kernel(Planes<const T> grad_out, Planes<const T> content,
                                     Planes<const T> style, Planes<T> grad_content,
                                     Planes<T> grad_style, int64_t C, int64_t HW, int64_t style_HW,
                                     T eps) {
  __shared__ T partials[kWarps];
  const Plane<const T> s = this_plane(style, C);
  const Stats<T> st = plane_stats(s, style_HW, partials);
  const T std_s = sqrt(st.var + eps);
  const StyleGrads<T> grads = backward_plane(this_plane(grad_out, C), this_plane(content, C),
                                             this_plane(grad_content, C), HW, std_s, eps, partials);
  // Through mean_s = mean(s) and std_s = sqrt(var(s) + eps):
  // d s = (d mean_y + d std_y * (s - mean_s) / std_s) / M_s.
  const Plane<T> ds = this_plane(grad_style, C);
  const T d_mean = grads.d_mean / style_HW, d_centered = grads.d_std / (std_s * style_HW);
  for (int64_t i = threadIdx.x; i < style_HW; i += kThreads) {
    ds[i] = d_mean + d_centered * (s[i] - st.mean);
  }
}

// One block per (n, c) plane; bindings.cpp keeps N * C within gridDim.x's limit. A zero-sized grid
// is a launch error, so the launchers skip the launch when this is 0.
unsigned num_planes(int64_t N, int64_t C) { return static_cast<unsigned>(N * C); }

}  // namespace

template <typename T>
cudaError_t adain_forward_cuda(Planes<const T> content, const T* style_mean, const T* style_std,
                               Planes<T> out, int64_t N, int64_t C, int64_t HW, double eps,
                               cudaStream_t stream) {
  if (const unsigned planes = num_planes(N, C)) {
    adain_forward_kernel<T><<<planes, kThreads, 0, stream>>>(content, style_mean, style_std, out, C,
                                                            HW, static_cast<T>(eps));
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t adain_backward_cuda(Planes<const T> grad_out, Planes<const T> content,
                                const T* style_std, Planes<T> grad_content, T* grad_style_mean,
                                T* grad_style_std, int64_t N, int64_t C, int64_t HW, double eps,
                                cudaStream_t stream) {
  if (const unsigned planes = num_planes(N, C)) {
    adain_backward_kernel<T><<<planes, kThreads, 0, stream>>>(grad_out, content, style_std,
                                                             grad_content, grad_style_mean,
                                                             grad_style_std, C, HW,
                                                             static_cast<T>(eps));
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t adain_from_style_forward_cuda(Planes<const T> content, Planes<const T> style,
                                          Planes<T> out, int64_t N, int64_t C, int64_t HW,
                                          int64_t style_HW, double eps, cudaStream_t stream) {
  if (const unsigned planes = num_planes(N, C)) {
    adain_from_style_forward_kernel<T><<<planes, kThreads, 0, stream>>>(
        content, style, out, C, HW, style_HW, static_cast<T>(eps));
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t adain_from_style_backward_cuda(Planes<const T> grad_out, Planes<const T> content,
                                           Planes<const T> style, Planes<T> grad_content,
                                           Planes<T> grad_style, int64_t N, int64_t C, int64_t HW,
                                           int64_t style_HW, double eps, cudaStream_t stream) {
  if (const unsigned planes = num_planes(N, C)) {
    adain_from_style_backward_kernel<T><<<planes, kThreads, 0, stream>>>(
        grad_out, content, style, grad_content, grad_style, C, HW, style_HW, static_cast<T>(eps));
  }
  return cudaGetLastError();
}

#define FASTGEN_INSTANTIATE_ADAIN(T)                                                              \
  template cudaError_t adain_forward_cuda<T>(Planes<const T>, const T*, const T*, Planes<T>,      \
                                             int64_t, int64_t, int64_t, double, cudaStream_t);    \
  template cudaError_t adain_backward_cuda<T>(Planes<const T>, Planes<const T>, const T*,         \
                                              Planes<T>, T*, T*, int64_t, int64_t, int64_t,       \
                                              double, cudaStream_t);                              \
  template cudaError_t adain_from_style_forward_cuda<T>(Planes<const T>, Planes<const T>,         \
                                                        Planes<T>, int64_t, int64_t, int64_t,     \
                                                        int64_t, double, cudaStream_t);           \
  template cudaError_t adain_from_style_backward_cuda<T>(                                         \
      Planes<const T>, Planes<const T>, Planes<const T>, Planes<T>, Planes<T>, int64_t, int64_t,  \
      int64_t, int64_t, double, cudaStream_t);

FASTGEN_INSTANTIATE_ADAIN(float)
FASTGEN_INSTANTIATE_ADAIN(double)

}  // namespace fastgen
