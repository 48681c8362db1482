// The statistics of a VQ codebook's EMA update in one pass over z [N, D]:
// counts[k] = #{n : indices[n] = k} and sums[k] = sum of those rows z_n, accumulated in
// float for float and half inputs, in double for double.
//
// A scatter-add has no row order in its writes, so threads split the rows and each adds its
// rows into a private [K, D] partial (thread 0 into the output itself); the partials are
// summed at the end. The grain is K rows, so a chunk holds more than K / 2 of them: zeroing
// and reducing a partial (K * D elements) costs at most about twice filling it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "accumulate.h"

#include <algorithm>
#include <vector>

namespace fastgen {
namespace {

// Below ~64k elements per thread a thread wake-up costs more than its share of the pass.
constexpr int64_t kMinElementsPerThread = 65536;

// Adds rows [begin, end) of z into sums (one row of D per code) and counts their codes.
template <typename T, typename A>
void scatter_rows(const T* z, const int64_t* indices, int64_t begin, int64_t end, int64_t d, int64_t k, A* sums,
                  int64_t* counts) {
  for (int64_t n = begin; n < end; ++n) {
    const int64_t code = indices[n];
    TORCH_CHECK(code >= 0 && code < k, "vq_cluster_stats: indices must be in [0, ", k, "), got ", code, " at row ",
                n);
    ++counts[code];
    const T* row = z + n * d;
    A* sum = sums + code * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) sum[j] += static_cast<A>(row[j]);
  }
}

template <typename T, typename A = acc_t<T>>
void cluster_stats(const T* z, const int64_t* indices, int64_t n, int64_t d, int64_t k, A* sums, A* counts) {
  const int64_t threads = at::get_num_threads();
  // Slot 0 is the (zeroed) output; other threads allocate theirs on first use, since a small
  // input runs on fewer threads than there are.
  std::vector<std::vector<A>> partial_sums(threads);
  std::vector<std::vector<int64_t>> partial_counts(threads);
  const int64_t grain = std::max(k, kMinElementsPerThread / std::max<int64_t>(d, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    std::vector<int64_t>& thread_counts = partial_counts[tid];
    if (thread_counts.empty()) thread_counts.assign(k, 0);
    A* thread_sums = sums;
    if (tid != 0) {
      if (partial_sums[tid].empty()) partial_sums[tid].assign(k * d, A(0));
      thread_sums = partial_sums[tid].data();
    }
    scatter_rows(z, indices, begin, end, d, k, thread_sums, thread_counts.data());
  });
  at::parallel_for(0, k * d, kMinElementsPerThread, [&](int64_t begin, int64_t end) {
    for (const std::vector<A>& part : partial_sums) {
      if (part.empty()) continue;
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) sums[i] += part[i];
    }
  });
  for (const std::vector<int64_t>& part : partial_counts)
    for (int64_t code = 0; code < static_cast<int64_t>(part.size()); ++code) counts[code] += static_cast<A>(part[code]);
}

std::tuple<at::Tensor, at::Tensor> vq_cluster_stats(const at::Tensor& z, const at::Tensor& indices,
                                                    int64_t codebook_size) {
  TORCH_CHECK(z.dim() == 2, "vq_cluster_stats: z must be 2-D [N, D], got shape ", z.sizes());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), "vq_cluster_stats: z must be floating point, got ",
              z.scalar_type());
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.size(0) == z.size(0),
              "vq_cluster_stats: indices must be int64 of shape [", z.size(0), "], got ", indices.scalar_type(), " ",
              indices.sizes());
  TORCH_CHECK(z.device().is_cpu() && indices.device().is_cpu(), "vq_cluster_stats: CPU tensors expected");
  TORCH_CHECK(codebook_size >= 1, "vq_cluster_stats: codebook_size must be >= 1, got ", codebook_size);
  const int64_t n = z.size(0), d = z.size(1);
  const at::ScalarType acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor counts = at::zeros({codebook_size}, z.options().dtype(acc));
  at::Tensor sums = at::zeros({codebook_size, d}, z.options().dtype(acc));
  if (n == 0) return {counts, sums};
  const at::Tensor z_rows = z.contiguous();
  const at::Tensor codes = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "vq_cluster_stats", [&] {
    using A = acc_t<scalar_t>;
    cluster_stats<scalar_t>(z_rows.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(), n, d,
                            codebook_size, sums.data_ptr<A>(), counts.data_ptr<A>());
  });
  return {counts, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) { m.impl("vq_cluster_stats", &vq_cluster_stats); }

}  // namespace fastgen
