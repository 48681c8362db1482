// (A + A^T) / 2 of a batch of square matrices [..., n, n] together with what the check of "A is
// symmetric" needs, stats [..., 2] = (max |A - A^T|, max |(A + A^T) / 2|), in one pass over A.
//
// The transposed read is what makes this slow in ATen (A + A.mT walks A down its columns: a cache
// miss an element, ~40 ms a pass at 2048 x 2048 float64, and the check is another pass). Here A is
// split into kTile x kTile tiles, and each tile below the diagonal is read together with its mirror
// above it, both staying in L1 while the output tile and its mirror are written.
// Threads take equal ranges of the tile pairs, numbered row by row through the lower triangle of tiles.
//
// A NaN or Inf in a matrix makes both its maxima NaN (a NaN must not pass the check as "no difference").
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "output_cache.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace fastgen {
namespace {

constexpr int64_t kTile = 32;  // a tile is 8 KiB in float64: the tile, its mirror and the copy fit L1

// Maxima over a tile pair; `poison` is sum(0 * x) over the inputs: NaN when any is NaN or Inf.
template <typename T>
struct TileMaxima {
  T difference = 0;
  T largest = 0;
  T poison = 0;
  void add(const TileMaxima& other) {
    difference = std::max(difference, other.difference);
    largest = std::max(largest, other.largest);
    poison += other.poison;
  }
};

// Tile (ti, tj), tj <= ti, of one matrix and its mirror (tj, ti). The mirror is read and written
// along its rows through a transposed copy in `mirror` (row strides of n elements would map a whole
// column of the tile onto a few L1 sets).
template <typename T>
TileMaxima<T> symmetrize_tile_pair(const T* a, T* out, int64_t n, int64_t ti, int64_t tj) {
  const int64_t i0 = ti * kTile, rows = std::min(n, i0 + kTile) - i0;
  const int64_t j0 = tj * kTile, cols = std::min(n, j0 + kTile) - j0;
  const bool diagonal = ti == tj;
  T mirror[kTile * kTile];  // mirror[r * kTile + c] = a[j0 + c, i0 + r]: the upper tile, transposed
  for (int64_t c = 0; c < cols; ++c) {
    const T* upper_row = a + (j0 + c) * n + i0;
    for (int64_t r = 0; r < rows; ++r) mirror[r * kTile + c] = upper_row[r];
  }
  TileMaxima<T> m;
  for (int64_t r = 0; r < rows; ++r) {
    const T* lower_row = a + (i0 + r) * n + j0;
    T* out_row = out + (i0 + r) * n + j0;
    T* mirror_row = mirror + r * kTile;
    const int64_t c_end = diagonal ? r + 1 : cols;  // a diagonal tile: its own lower triangle
    T difference = m.difference, largest = m.largest, poison = m.poison;
#pragma omp simd reduction(max : difference, largest) reduction(+ : poison)
    for (int64_t c = 0; c < c_end; ++c) {
      const T lower = lower_row[c], upper = mirror_row[c];
      const T mean = (lower + upper) / 2;
      difference = std::max(difference, std::abs(lower - upper));
      largest = std::max(largest, std::abs(mean));
      poison += lower * 0 + upper * 0;
      out_row[c] = mean;
      mirror_row[c] = mean;
    }
    m.difference = difference, m.largest = largest, m.poison = poison;
  }
  for (int64_t c = 0; c < cols; ++c) {  // back through the transpose into the upper tile
    T* upper_out = out + (j0 + c) * n + i0;
    for (int64_t r = diagonal ? c : 0; r < rows; ++r) upper_out[r] = mirror[r * kTile + c];
  }
  return m;
}

std::tuple<at::Tensor, at::Tensor> symmetrize_checked(const at::Tensor& a_in) {
  TORCH_CHECK(a_in.dim() >= 2 && a_in.size(-1) == a_in.size(-2),
              "symmetrize_checked: a must be [..., n, n], got ", a_in.sizes());
  TORCH_CHECK(a_in.scalar_type() == at::kFloat || a_in.scalar_type() == at::kDouble,
              "symmetrize_checked: a must be float32 or float64, got ", a_in.scalar_type());
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(-1);
  const int64_t batch = n == 0 ? 0 : a.numel() / (n * n);
  at::Tensor out = empty_like_cached(a);  // FID computes two of these a call: no page faults after the first
  std::vector<int64_t> stats_shape(a.sizes().begin(), a.sizes().end() - 2);
  stats_shape.push_back(2);
  at::Tensor stats = at::zeros(stats_shape, a.options());
  if (batch == 0 || n == 0) return {out, stats};
  const int64_t tiles = (n + kTile - 1) / kTile;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "symmetrize_checked", [&] {
    const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    scalar_t* stats_ptr = stats.data_ptr<scalar_t>();
    // Work items: (matrix, tile pair); per-item maxima are combined afterwards, so threads share nothing.
    const int64_t pairs = tiles * (tiles + 1) / 2;
    std::vector<TileMaxima<scalar_t>> pair_maxima(batch * pairs);
    at::parallel_for(0, batch * pairs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / pairs, pair = item % pairs;
        // pair = ti (ti + 1) / 2 + tj with 0 <= tj <= ti
        int64_t ti = static_cast<int64_t>((std::sqrt(8.0 * static_cast<double>(pair) + 1.0) - 1.0) / 2.0);
        while (ti * (ti + 1) / 2 > pair) --ti;
        while ((ti + 1) * (ti + 2) / 2 <= pair) ++ti;
        const int64_t tj = pair - ti * (ti + 1) / 2;
        pair_maxima[item] = symmetrize_tile_pair(a_ptr + b * n * n, out_ptr + b * n * n, n, ti, tj);
      }
    });
    for (int64_t b = 0; b < batch; ++b) {
      TileMaxima<scalar_t> m;
      for (int64_t pair = 0; pair < pairs; ++pair) m.add(pair_maxima[b * pairs + pair]);
      stats_ptr[2 * b] = m.difference + m.poison;
      stats_ptr[2 * b + 1] = m.largest + m.poison;
    }
  });
  return {out, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) { m.impl("symmetrize_checked", &symmetrize_checked); }

}  // namespace fastgen
