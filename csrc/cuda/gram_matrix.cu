// Gram-matrix kernels: shared-memory tiled products, 64 x 64 output tiles, 256 threads each
// computing 4 x 4 outputs (rows ty + 16 m, columns tx + 16 n, so that shared-memory reads and the
// row-major stores of a warp are contiguous). The spec is fastgen/ops/gram/reference.py.
//
// Forward: one block per (tile on or below the diagonal, sample), half the tiles of a general
// product; each tile is stored at (i, j) and mirrored at (j, i). Known limitation: the mirrored
// store walks a column of G (stride C), so it is not coalesced; staging the tile transposed through
// shared memory would fix it. Backward: dF = (dG + dG^T) F, with the symmetric A tile summed from
// dG at (i, k) and (k, i) while it is loaded into shared memory.
#include "gram_matrix.cuh"

#include <cuda_runtime.h>

namespace fastgen {
namespace {

constexpr int kTile = 64;     // output tile edge
constexpr int kStep = 16;     // reduction step staged in shared memory
constexpr int kThreads = 256;  // 16 x 16
constexpr int kPer = kTile / 16;  // outputs per thread along each edge
constexpr int kBatchGrid = 65535;  // gridDim.y / gridDim.z limit: larger batches loop

// (i, j), j <= i, of the t-th tile of the lower triangle, row by row: t = i (i + 1) / 2 + j.
__device__ void lower_tile(int64_t t, int64_t& i, int64_t& j) {
  i = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(t) + 1.0) - 1.0) * 0.5);
  if (i * (i + 1) / 2 > t) --i;  // the double square root can land one off
  if ((i + 1) * (i + 2) / 2 <= t) ++i;
  j = t - i * (i + 1) / 2;
}

// acc[m][n] += sum over the staged kStep of A[kk][ty + 16 m] * B[kk][tx + 16 n]: one thread's 4 x 4
// outputs of the tile product.
template <typename T, int kWidthA, int kWidthB>
__device__ __forceinline__ void accumulate_step(const T (&a_s)[kStep][kWidthA], const T (&b_s)[kStep][kWidthB],
                                                int tx, int ty, T (&acc)[kPer][kPer]) {
#pragma unroll
  for (int kk = 0; kk < kStep; ++kk) {
    T a[kPer], bv[kPer];
#pragma unroll
    for (int m = 0; m < kPer; ++m) a[m] = a_s[kk][ty + 16 * m];
#pragma unroll
    for (int n = 0; n < kPer; ++n) bv[n] = b_s[kk][tx + 16 * n];
#pragma unroll
    for (int m = 0; m < kPer; ++m)
#pragma unroll
      for (int n = 0; n < kPer; ++n) acc[m][n] += a[m] * bv[n];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gram_forward_kernel(const T* features, T* gram, int64_t B, int64_t C, int64_t N) {
  __shared__ T a_s[kStep][kTile + 1];
  __shared__ T b_s[kStep][kTile + 1];
  int64_t ti, tj;
  lower_tile(blockIdx.x, ti, tj);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = ti * kTile, col0 = tj * kTile;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const T* f = features + b * C * N;
    T acc[kPer][kPer] = {};
    for (int64_t k0 = 0; k0 < N; k0 += kStep) {
      // 64 rows x 16 columns of F per operand; consecutive threads read consecutive k of a row.
      for (int idx = threadIdx.x; idx < kTile * kStep; idx += kThreads) {
        const int r = idx / kStep, kk = idx % kStep;
        const int64_t k = k0 + kk;
        a_s[kk][r] = (row0 + r < C && k < N) ? f[(row0 + r) * N + k] : T(0);
        b_s[kk][r] = (col0 + r < C && k < N) ? f[(col0 + r) * N + k] : T(0);
      }
      __syncthreads();
      accumulate_step(a_s, b_s, tx, ty, acc);
      __syncthreads();
    }
    T* g = gram + b * C * C;
#pragma unroll
    for (int m = 0; m < kPer; ++m) {
      const int64_t r = row0 + ty + 16 * m;
#pragma unroll
      for (int n = 0; n < kPer; ++n) {
        const int64_t c = col0 + tx + 16 * n;
        if (r < C && c < C) {
          g[r * C + c] = acc[m][n];
          if (ti != tj) g[c * C + r] = acc[m][n];
        }
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gram_backward_kernel(const T* grad_gram, const T* features, T* grad_features, int64_t B, int64_t C,
                         int64_t N) {
  __shared__ T s_s[kStep][kTile + 1];  // (dG + dG^T)[row0 + r, k0 + kk] at [kk][r]
  __shared__ T f_s[kStep][kTile];      // F[k0 + kk, col0 + n] at [kk][n]
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTile, row0 = static_cast<int64_t>(blockIdx.y) * kTile;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const T* dg = grad_gram + b * C * C;
    const T* f = features + b * C * N;
    T acc[kPer][kPer] = {};
    for (int64_t k0 = 0; k0 < C; k0 += kStep) {
      // dG[row, k]: consecutive threads read consecutive k of a row ...
      for (int idx = threadIdx.x; idx < kTile * kStep; idx += kThreads) {
        const int r = idx / kStep, kk = idx % kStep;
        const int64_t row = row0 + r, k = k0 + kk;
        s_s[kk][r] = (row < C && k < C) ? dg[row * C + k] : T(0);
      }
      __syncthreads();
      // ... then dG[k, row]: consecutive threads read consecutive rows, added by the same thread layout.
      for (int idx = threadIdx.x; idx < kTile * kStep; idx += kThreads) {
        const int kk = idx / kTile, r = idx % kTile;
        const int64_t row = row0 + r, k = k0 + kk;
        if (row < C && k < C) s_s[kk][r] += dg[k * C + row];
        const int64_t col = col0 + r;
        f_s[kk][r] = (k < C && col < N) ? f[k * N + col] : T(0);
      }
      __syncthreads();
      accumulate_step(s_s, f_s, tx, ty, acc);
      __syncthreads();
    }
    T* df = grad_features + b * C * N;
#pragma unroll
    for (int m = 0; m < kPer; ++m) {
      const int64_t r = row0 + ty + 16 * m;
#pragma unroll
      for (int n = 0; n < kPer; ++n) {
        const int64_t c = col0 + tx + 16 * n;
        if (r < C && c < N) df[r * N + c] = acc[m][n];
      }
    }
  }
}

int64_t blocks(int64_t n) { return (n + kTile - 1) / kTile; }

unsigned batch_grid(int64_t b) { return static_cast<unsigned>(b < kBatchGrid ? b : kBatchGrid); }

}  // namespace

template <typename T>
cudaError_t gram_matrix_forward_cuda(const T* features, T* gram, int64_t B, int64_t C, int64_t N,
                                     cudaStream_t stream) {
  const int64_t tiles = blocks(C);
  const dim3 grid(static_cast<unsigned>(tiles * (tiles + 1) / 2), batch_grid(B));
  gram_forward_kernel<T><<<grid, kThreads, 0, stream>>>(features, gram, B, C, N);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gram_matrix_backward_cuda(const T* grad_gram, const T* features, T* grad_features, int64_t B,
                                      int64_t C, int64_t N, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(blocks(N)), static_cast<unsigned>(blocks(C)), batch_grid(B));
  gram_backward_kernel<T><<<grid, kThreads, 0, stream>>>(grad_gram, features, grad_features, B, C, N);
  return cudaGetLastError();
}

template cudaError_t gram_matrix_forward_cuda<float>(const float*, float*, int64_t, int64_t, int64_t,
                                                     cudaStream_t);
template cudaError_t gram_matrix_forward_cuda<double>(const double*, double*, int64_t, int64_t, int64_t,
                                                      cudaStream_t);
template cudaError_t gram_matrix_backward_cuda<float>(const float*, const float*, float*, int64_t, int64_t,
                                                      int64_t, cudaStream_t);
template cudaError_t gram_matrix_backward_cuda<double>(const double*, const double*, double*, int64_t,
                                                       int64_t, int64_t, cudaStream_t);

}  // namespace fastgen
