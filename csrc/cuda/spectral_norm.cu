// Spectral-norm power iteration: the algorithm of the CPU kernel (csrc/cpu/spectral_norm.cpp),
// one pass over W per iteration and none for sigma, spread over thread blocks. The spec is
// fastgen/ops/spectral_norm/reference.py. Each iteration is three launches:
//
//   rows_kernel      each block takes groups of kRows rows. t_i = W_i . v goes to u_out and, while
//                    the group is still in L1/L2, t_i * W_i is added to the block's partial of
//                    r = W^T t. Each block also sums its t_i^2.
//   columns_kernel   r_j = the sum of the blocks' partials; s = r / max(|t|, eps), which is W^T u,
//                    goes to v_out, u_out is scaled from t to u = t / max(|t|, eps), and each
//                    block sums its s_j^2.
//   finalize_kernel  one block: v = s / max(|s|, eps) and sigma = u^T W v = s^T v
//                    = |s|^2 / max(|s|, eps).
//
// Every sum runs in an order fixed by the shape, so results are bitwise reproducible; atomicAdd
// into r would save columns_kernel's read of the partials but let the order, and so the bits,
// vary from run to run. T is float or double and is also the accumulation type (half types never
// reach this backend).
//
// Known limitations: the parallelism is over rows, so a weight with few rows fills few SMs
// (m = 256 gives 64 blocks); splitting a row across blocks would need a second pass over W or a
// grid-wide sync for each dot product. And a group's second read comes from L1/L2 only while the
// groups in flight fit there, about kMaxRowBlocks * kRows * n * sizeof(T) bytes (n up to ~10^4
// floats on an H100); longer rows are read from DRAM twice.
#include "spectral_norm.cuh"

#include <cuda_runtime.h>

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
static_assert(kThreads % 32 == 0 && kWarps <= 32, "block_sum reduces the warp partials in one warp");

// Rows per step of rows_kernel: v is read, and the block reduced, once for kRows dot products.
constexpr int kRows = 4;
// 256 blocks keep an H100's or A100's SMs streaming W (about two blocks each) while bounding the
// partials that columns_kernel sums, and the rows in flight that the second reads must find in
// cache.
constexpr int kMaxRowBlocks = 256;
static_assert(kMaxRowBlocks <= kThreads, "columns_kernel loads one row_sq value per thread");
// A block accumulates its partial of r in shared memory when it fits in this much, else in its
// row of the partials in global memory. 32 KiB leaves most of L1 for the second reads of rows.
constexpr int64_t kAccSmemBytes = 32 * 1024;
// Columns per columns_kernel block, one per lane: each warp reads 32 adjacent partials.
constexpr int kColumns = 32;

template <typename T>
__host__ __device__ constexpr bool acc_in_smem(int64_t n) {
  return n <= kAccSmemBytes / static_cast<int64_t>(sizeof(T));
}

template <typename T>
__device__ T warp_sum(T x) {
  // A butterfly leaves the same bits in every lane (each step adds the same two operands in
  // either lane), so all threads agree exactly on t_i and the norms.
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Sums each of the K values over the block, leaving the sums in x in every thread. scratch is
// kWarps * K elements of shared memory; the first barrier keeps this call from overwriting what
// the previous call's warps are still reading.
template <int K, typename T>
__device__ void block_sum(T (&x)[K], T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) x[k] = warp_sum(x[k]);
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[warp * K + k] = x[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) x[k] = warp_sum(lane < kWarps ? scratch[lane * K + k] : T(0));
}

template <typename T>
__device__ T block_sum(T x, T* scratch) {
  T sums[1] = {x};
  block_sum(sums, scratch);
  return sums[0];
}

// 1 / max(norm, eps); a NaN norm stays NaN, as in torch's clamp_min.
template <typename T>
__device__ T inv_clamped(T norm, T eps) {
  return T(1) / (norm < eps ? eps : norm);
}

// t = W v into t, this block's partial of r = W^T t into its row of partials ([gridDim.x, n]),
// and the block's sum of t_i^2 into row_sq[blockIdx.x]. __restrict__ on w and v lets the
// compiler batch the loads of W across the stores to acc.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const T* __restrict__ w, const T* __restrict__ v, T* t, T* partials, T* row_sq,
                int64_t m, int64_t n) {
  __shared__ T scratch[kWarps * kRows];
  extern __shared__ __align__(16) unsigned char acc_smem[];
  T* const partial = partials + blockIdx.x * n;
  // Thread k alone reads and writes columns k, k + kThreads, ... of acc, so acc needs no barrier.
  T* const acc = acc_in_smem<T>(n) ? reinterpret_cast<T*>(acc_smem) : partial;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) acc[j] = 0;

  T sq = 0;
  for (int64_t i0 = blockIdx.x * int64_t{kRows}; i0 < m; i0 += gridDim.x * int64_t{kRows}) {
    const int64_t rows = m - i0 < kRows ? m - i0 : kRows;
    const T* const group = w + i0 * n;
    // r < rows is the same in every thread, and testing it inside the unrolled loops keeps dot[]
    // indexed by constants, so in registers.
    T dot[kRows] = {};
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const T vj = v[j];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < rows) dot[r] += group[r * n + j] * vj;
      }
    }
    block_sum(dot, scratch);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      sq += dot[r] * dot[r];  // 0 for the rows past m
      if (r < rows && threadIdx.x == 0) t[i0 + r] = dot[r];
    }
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      T sum = acc[j];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < rows) sum += dot[r] * group[r * n + j];
      }
      acc[j] = sum;
    }
  }

  if (acc != partial) {
    for (int64_t j = threadIdx.x; j < n; j += kThreads) partial[j] = acc[j];
  }
  if (threadIdx.x == 0) row_sq[blockIdx.x] = sq;
}

// Block c owns columns [c * kColumns, (c + 1) * kColumns): warp k sums partial rows k, k + kWarps,
// ... of them, then warp 0 adds the kWarps sums. Also scales t into u, grid-stride.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    columns_kernel(const T* partials, const T* row_sq, int row_blocks, T* t, T* s, T* col_sq,
                   int64_t m, int64_t n, T eps) {
  __shared__ T scratch[kWarps];
  __shared__ T column_sums[kWarps][kColumns];
  // Every block computes the same |t| from the same values in the same order.
  const T t_sq = block_sum(static_cast<int>(threadIdx.x) < row_blocks ? row_sq[threadIdx.x] : T(0),
                           scratch);
  const T t_scale = inv_clamped(sqrt(t_sq), eps);

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j = blockIdx.x * int64_t{kColumns} + lane;
  T r = 0;
  if (j < n) {
    for (int b = warp; b < row_blocks; b += kWarps) r += partials[b * n + j];
  }
  column_sums[warp][lane] = r;
  __syncthreads();

  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < m;
       i += gridDim.x * int64_t{kThreads}) {
    t[i] *= t_scale;
  }
  if (warp == 0) {
    T r_j = 0;
    for (int k = 0; k < kWarps; ++k) r_j += column_sums[k][lane];
    const T sj = r_j * t_scale;  // 0 past n
    if (j < n) s[j] = sj;
    const T sq = warp_sum(sj * sj);
    if (lane == 0) col_sq[blockIdx.x] = sq;
  }
}

// One block: v = s / max(|s|, eps) in place, and sigma.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const T* col_sq, int64_t col_blocks, T* v, T* sigma, int64_t n, T eps) {
  __shared__ T scratch[kWarps];
  T sq = 0;
  for (int64_t c = threadIdx.x; c < col_blocks; c += kThreads) sq += col_sq[c];
  const T s_norm = sqrt(block_sum(sq, scratch));
  const T s_scale = inv_clamped(s_norm, eps);
  for (int64_t j = threadIdx.x; j < n; j += kThreads) v[j] *= s_scale;
  if (threadIdx.x == 0) *sigma = s_norm * s_norm * s_scale;
}

int row_blocks(int64_t m) {
  const int64_t groups = (m + kRows - 1) / kRows;
  return static_cast<int>(groups < kMaxRowBlocks ? groups : kMaxRowBlocks);
}

// Within gridDim.x's 2^31 - 1 for any n below 2^36, far more than one row of W in GPU memory.
int64_t column_blocks(int64_t n) { return (n + kColumns - 1) / kColumns; }

}  // namespace

// The partials [row_blocks, n], then row_sq [row_blocks], then col_sq [column_blocks].
int64_t spectral_norm_workspace_size(int64_t m, int64_t n) {
  const int64_t blocks = row_blocks(m);
  return blocks * n + blocks + column_blocks(n);
}

template <typename T>
cudaError_t spectral_norm_step_cuda(const T* weight, const T* v, T* sigma, T* u_out, T* v_out,
                                    T* workspace, int64_t m, int64_t n,
                                    int64_t n_power_iterations, double eps, cudaStream_t stream) {
  const int rows = row_blocks(m);
  const int64_t columns = column_blocks(n);
  T* const partials = workspace;
  T* const row_sq = partials + rows * n;
  T* const col_sq = row_sq + rows;
  const size_t acc_bytes = acc_in_smem<T>(n) ? static_cast<size_t>(n) * sizeof(T) : 0;
  const T eps_t = static_cast<T>(eps);
  for (int64_t it = 0; it < n_power_iterations; ++it) {
    // The first step starts from the caller's v, the later ones from the previous step's v_out.
    rows_kernel<T><<<rows, kThreads, acc_bytes, stream>>>(weight, it == 0 ? v : v_out, u_out,
                                                          partials, row_sq, m, n);
    columns_kernel<T><<<static_cast<unsigned>(columns), kThreads, 0, stream>>>(
        partials, row_sq, rows, u_out, v_out, col_sq, m, n, eps_t);
    finalize_kernel<T><<<1, kThreads, 0, stream>>>(col_sq, columns, v_out, sigma, n, eps_t);
    // Stop at the first failed launch rather than queue n_power_iterations more of them.
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

#define FASTGEN_INSTANTIATE_SPECTRAL_NORM(T)                                                      \
  template cudaError_t spectral_norm_step_cuda<T>(const T*, const T*, T*, T*, T*, T*, int64_t,    \
                                                  int64_t, int64_t, double, cudaStream_t);

FASTGEN_INSTANTIATE_SPECTRAL_NORM(float)
FASTGEN_INSTANTIATE_SPECTRAL_NORM(double)

}  // namespace fastgen
