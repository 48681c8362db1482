// VQ nearest-codebook search: a tiled "GEMM + argmin" that never builds the N x K distance matrix.
// The spec is fastgen/ops/vq/reference.py.
//
// Each thread block takes kRowsPerBlock (64) rows of z and walks the whole codebook in tiles of
// kCodesPerTile (64) codes. For a tile, D is consumed in chunks of kChunk (16): the z chunk
// [64 x 16] and the codebook chunk [16 x 64] (transposed) are staged in shared memory, and each of
// the 16 x 16 threads accumulates a 4 x 4 micro-tile of dot products z_i . e_j in registers. The
// tile's code norms |e_j|^2 are summed from the same staged chunks by the first 64 threads. Then
//
//   score(i, j) = |e_j|^2 - 2 z_i . e_j        (the argmin of |z_i - e_j|^2; |z_i|^2 is constant)
//
// and every row's (score, code) pairs are reduced to their minimum in the order "lower score, then
// lower code": first over a thread's 4 codes, then over the 16 threads that share the row (a
// warp-shuffle butterfly, which leaves the same pair in all 16 lanes), then into the running best
// that each thread keeps in registers across tiles. Comparing pairs this way gives torch.argmin's
// tie rule (the lowest index) whatever the order of the tiles and lanes. Finally one warp per row
// re-reads z_i and its chosen code from global memory (L2) and sums (z_i - e_idx)^2, so the
// distance is exact up to rounding and never negative, unlike the score.
//
// Roofline ESTIMATE (not a measurement; this kernel has not been run on a GPU): the search is
// 2 N K D flops; N = 65536, K = 8192, D = 64 is 68.7 GFLOP, about 1.0 ms at an H100 SXM's ~67
// TFLOP/s FP32 (non-tensor) peak. Per chunk column each thread issues 8 shared loads (4 of them
// broadcasts) for 16 FMAs, so shared-memory issue rather than FMA throughput bounds it, at roughly
// half of that peak: about 2 ms expected for this shape. Memory traffic is small next to that
// (z and the codebook are re-read from L2, once per codebook tile and once per row block).
// float64 runs at the FP64 peak (~34 TFLOP/s on an H100 SXM) with the same structure.
//
// Known limitations: parallelism is over row blocks only, so n below ~64 x (number of SMs) rows
// leaves SMs idle (splitting the codebook across blocks would need a second reduction pass);
// no tensor cores (TF32 would lose the precision that near-ties need); loads are scalar, since
// rows of any d are not 16-byte aligned.
#include "vq.cuh"

#include <cmath>

#include <cuda_runtime.h>

namespace fastgen {
namespace {

constexpr int kThreadsX = 16;  // threads along the codes of a tile
constexpr int kThreadsY = 16;  // threads along the rows of a block
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kWarps = kThreads / 32;
constexpr int kMicroRows = 4;   // rows per thread: ty + kThreadsY * r
constexpr int kMicroCodes = 4;  // codes per thread: tx + kThreadsX * c
constexpr int kRowsPerBlock = kThreadsY * kMicroRows;
constexpr int kCodesPerTile = kThreadsX * kMicroCodes;
constexpr int kChunk = 16;  // elements of D staged per step
static_assert(kThreads % 32 == 0 && 32 % kThreadsX == 0,
              "the threads sharing a row must sit in one warp, at consecutive lanes");
static_assert(kCodesPerTile <= kThreads, "one thread sums each code's norm");

// (score, code) pairs ordered by score, then by code: the minimum is torch.argmin's choice.
template <typename T>
struct Candidate {
  T score;
  int64_t code;
};

template <typename T>
__device__ bool precedes(const Candidate<T>& a, const Candidate<T>& b) {
  return a.score < b.score || (a.score == b.score && a.code < b.code);
}

// The minimum over the kThreadsX consecutive lanes that share a row, in all of them.
template <typename T>
__device__ Candidate<T> row_min(Candidate<T> c) {
#pragma unroll
  for (int offset = kThreadsX / 2; offset > 0; offset /= 2) {
    const Candidate<T> other{__shfl_xor_sync(0xffffffffu, c.score, offset),
                             static_cast<int64_t>(__shfl_xor_sync(
                                 0xffffffffu, static_cast<long long>(c.code), offset))};
    if (precedes(other, c)) c = other;
  }
  return c;
}

template <typename T>
__device__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    vq_nearest_l2_kernel(const T* __restrict__ z, const T* __restrict__ codebook, int64_t n,
                         int64_t k, int64_t d, int64_t* __restrict__ indices,
                         T* __restrict__ distances) {
  __shared__ T z_chunk[kRowsPerBlock][kChunk];
  // Transposed, so a thread's codes tx + 16 c sit at consecutive addresses across the 16 lanes;
  // the +1 column spreads the transposing stores over the banks.
  __shared__ T code_chunk[kChunk][kCodesPerTile + 1];
  __shared__ T code_norms[kCodesPerTile];
  __shared__ int64_t chosen[kRowsPerBlock];

  const int tid = threadIdx.x, tx = tid % kThreadsX, ty = tid / kThreadsX;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;

  // The running best of rows ty + 16 r. Code 0 at +inf: any finite score beats it, and when every
  // score is +inf (overflow) the lowest code, 0, is argmin's choice too.
  Candidate<T> best[kMicroRows];
#pragma unroll
  for (int r = 0; r < kMicroRows; ++r) best[r] = {static_cast<T>(INFINITY), 0};

  for (int64_t k0 = 0; k0 < k; k0 += kCodesPerTile) {
    T dots[kMicroRows][kMicroCodes] = {};
    T norm = 0;  // |e_{k0 + tid}|^2, for tid < kCodesPerTile
    for (int64_t d0 = 0; d0 < d; d0 += kChunk) {
      __syncthreads();  // the previous chunk's readers are done with the staging buffers
      for (int i = tid; i < kRowsPerBlock * kChunk; i += kThreads) {
        const int r = i / kChunk, c = i % kChunk;
        const int64_t row = row0 + r, col = d0 + c;
        z_chunk[r][c] = (row < n && col < d) ? z[row * d + col] : T(0);
      }
      for (int i = tid; i < kCodesPerTile * kChunk; i += kThreads) {
        const int j = i / kChunk, c = i % kChunk;
        const int64_t code = k0 + j, col = d0 + c;
        code_chunk[c][j] = (code < k && col < d) ? codebook[code * d + col] : T(0);
      }
      __syncthreads();
      if (tid < kCodesPerTile) {
#pragma unroll
        for (int c = 0; c < kChunk; ++c) norm += code_chunk[c][tid] * code_chunk[c][tid];
      }
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        T zr[kMicroRows], er[kMicroCodes];
#pragma unroll
        for (int r = 0; r < kMicroRows; ++r) zr[r] = z_chunk[ty + kThreadsY * r][c];
#pragma unroll
        for (int j = 0; j < kMicroCodes; ++j) er[j] = code_chunk[c][tx + kThreadsX * j];
#pragma unroll
        for (int r = 0; r < kMicroRows; ++r) {
#pragma unroll
          for (int j = 0; j < kMicroCodes; ++j) dots[r][j] += zr[r] * er[j];
        }
      }
    }
    __syncthreads();  // every thread has read the previous tile's norms
    if (tid < kCodesPerTile) code_norms[tid] = norm;
    __syncthreads();

    T norms[kMicroCodes];
#pragma unroll
    for (int j = 0; j < kMicroCodes; ++j) norms[j] = code_norms[tx + kThreadsX * j];
#pragma unroll
    for (int r = 0; r < kMicroRows; ++r) {
      // Codes past k score +inf with a code above every real one: they never beat best[r].
      Candidate<T> tile_best{static_cast<T>(INFINITY), k0 + tx};
#pragma unroll
      for (int j = 0; j < kMicroCodes; ++j) {
        const int64_t code = k0 + tx + kThreadsX * j;
        const Candidate<T> c{code < k ? norms[j] - 2 * dots[r][j] : static_cast<T>(INFINITY), code};
        if (precedes(c, tile_best)) tile_best = c;
      }
      tile_best = row_min(tile_best);
      if (precedes(tile_best, best[r])) best[r] = tile_best;
    }
  }

  if (tx == 0) {
#pragma unroll
    for (int r = 0; r < kMicroRows; ++r) chosen[ty + kThreadsY * r] = best[r].code;
  }
  __syncthreads();

  // The distance from the difference: one warp per row, lanes along D.
  const int lane = tid % 32, warp = tid / 32;
  for (int r = warp; r < kRowsPerBlock; r += kWarps) {
    const int64_t row = row0 + r;
    if (row >= n) break;  // rows only grow with r
    const int64_t code = chosen[r];
    const T* zi = z + row * d;
    const T* e = codebook + code * d;
    T sum = 0;
    for (int64_t c = lane; c < d; c += 32) {
      const T diff = zi[c] - e[c];
      sum += diff * diff;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      indices[row] = code;
      distances[row] = sum;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t vq_nearest_l2_cuda(const T* z, const T* codebook, int64_t n, int64_t k, int64_t d,
                               int64_t* indices, T* distances, cudaStream_t stream) {
  if (n < 0 || k < 1 || d < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaGetLastError();  // a zero-sized grid is a launch error
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;  // gridDim.x's limit
  vq_nearest_l2_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      z, codebook, n, k, d, indices, distances);
  return cudaGetLastError();
}

template cudaError_t vq_nearest_l2_cuda<float>(const float*, const float*, int64_t, int64_t,
                                               int64_t, int64_t*, float*, cudaStream_t);
template cudaError_t vq_nearest_l2_cuda<double>(const double*, const double*, int64_t, int64_t,
                                                int64_t, int64_t*, double*, cudaStream_t);

}  // namespace fastgen
