// NeRF hierarchical sampling (the spec is fastgen/ops/nerf/reference_pdf.py): one thread per ray.
//
// A thread writes its ray's CDF to the workspace (float32 prefixes accumulated in double and
// rounded, then divided by the last, as the reference and the CPU kernel), then locates every u by
// a branch-free binary search over it (searchsorted, right=True) and interpolates between the edges.
// The workspace rows are the thread's own, read back from L1/L2. Compile-checked only (no GPU here):
// not run or timed. Known limitation: the per-thread CDF rows make strided, uncoalesced accesses;
// a warp per ray (a warp scan for the CDF) would coalesce them.
#include "sample_pdf.cuh"

#include <cuda_runtime.h>

namespace fastgen {
namespace {

constexpr int kThreads = 128;

// Products rounded on their own: nvcc would otherwise contract b0 + t * d into an FMA, which the
// reference does not compute.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__global__ void sample_pdf_kernel(const T* __restrict__ bins, const T* __restrict__ weights, const T* __restrict__ u,
                                  int64_t u_row_stride, int64_t rays, int64_t s, int64_t n, T* __restrict__ cdf_rows,
                                  T* __restrict__ out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  const T* w = weights + r * s;
  const T* b = bins + r * (s + 1);
  const T* ur = u + r * u_row_stride;
  T* cdf = cdf_rows + r * (s + 1);
  T* o = out + r * n;
  double acc = 0;
  cdf[0] = 0;
  for (int64_t k = 0; k < s; ++k) {
    acc += static_cast<double>(w[k] + static_cast<T>(1e-5));
    cdf[k + 1] = static_cast<T>(acc);
  }
  const T total = cdf[s];
  for (int64_t k = 1; k <= s; ++k) cdf[k] = cdf[k] / total;
  const int64_t size = s + 1;
  int64_t top = 1;
  while (top * 2 <= size) top *= 2;
  for (int64_t j = 0; j < n; ++j) {
    const T x = ur[j];
    int64_t count = 0;  // how many CDF values are <= x
    for (int64_t step = top; step > 0; step /= 2) {
      const int64_t next = count + step;
      if (next <= size && cdf[next - 1] <= x) count = next;
    }
    const int64_t below = count > 0 ? count - 1 : 0, above = count < s ? count : s;
    const T c0 = cdf[below], b0 = b[below];
    T denom = cdf[above] - c0;
    denom = denom < static_cast<T>(1e-5) ? T(1) : denom;
    o[j] = b0 + mul_rn((x - c0) / denom, b[above] - b0);
  }
}

}  // namespace

template <typename T>
cudaError_t sample_pdf_cuda(const T* bins, const T* weights, const T* u, int64_t u_row_stride, int64_t rays,
                            int64_t s, int64_t n, T* cdf_workspace, T* out, cudaStream_t stream) {
  if (s < 1 || n < 1 || rays < 0 || u_row_stride < 0) return cudaErrorInvalidValue;
  if (rays == 0) return cudaSuccess;
  const int64_t blocks = (rays + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  sample_pdf_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(bins, weights, u, u_row_stride, rays,
                                                                               s, n, cdf_workspace, out);
  return cudaGetLastError();
}

template cudaError_t sample_pdf_cuda<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                            int64_t, float*, float*, cudaStream_t);
template cudaError_t sample_pdf_cuda<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                             int64_t, double*, double*, cudaStream_t);

}  // namespace fastgen
