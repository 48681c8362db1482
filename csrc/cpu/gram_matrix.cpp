// Gram matrices G = F F^T of a batch of [C, N] feature matrices on the CPU, and their backward.
//
// G is symmetric, so only its lower triangle is computed (a symmetric rank-k update, half the
// multiply-adds of a general matrix product) and then mirrored. The product is a register-tiled
// GEMM over P x P tiles (I, J) with J <= I, P = one SIMD vector of lanes (16 floats with AVX512):
// the rows of F are packed, one K-chunk at a time, into panels of P rows stored k-major
// ([panel][k][P]). For each k, a register block adds column k of panel I (one broadcast per row)
// times the vectors of panels J into vector accumulators: P/2 rows x 2 tiles below the diagonal,
// P rows x 1 tile on it. The same packed panels serve as both operands, so F is packed once per
// chunk, and the next chunk of each row is prefetched while this one is computed. A chunk of every
// panel (C x 256 values) stays in L2 while the triangle of tiles passes over it.
//
// Measured against the alternative of ATen products on the panels of the triangle (at::mm of each
// row panel of F against the rows above it, MKL sgemm): on [8, 256, 4096] float32, one thread, that
// was 1.4-1.5x faster than bmm at best (8 panels; each narrow product re-packs its operands), this
// kernel 1.6-1.75x.
//
// Threads take whole (sample, range of tile rows) tasks from a shared counter: one sample's rows
// when there are at least as many samples as threads, else each sample's triangle is split into
// ranges of tile rows of equal work (each range packs the panels it reads).
//
// The backward, dF = (dG + dG^T) F, is one general matrix product (a symmetric matrix times F has no
// structure to exploit), so it is ATen's bmm after the symmetrization.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace fastgen {
namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
// Columns of F per packed chunk: P x kKChunk values (16 KiB for float with AVX512) of the A panel
// stay in L1 next to the streamed B panel.
constexpr int64_t kKChunk = 256;

// One SIMD vector of T (GCC/Clang vector extension: the compiler picks the instructions).
template <typename T>
struct Simd {
  static constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
};

// panels[p * kc + k] holds F[p * P + i, k0 + k] in lane i (zero past the last row).
template <typename T>
void pack_panels(const T* f, int64_t c, int64_t n, int64_t k0, int64_t kc, int64_t n_panels,
                 typename Simd<T>::Vec* panels) {
  constexpr int P = Simd<T>::kLanes;
  for (int64_t p = 0; p < n_panels; ++p) {
    T* dst = reinterpret_cast<T*>(panels + p * kc);
    for (int i = 0; i < P; ++i) {
      const int64_t row = p * P + i;
      if (row < c) {
        const T* src = f + row * n + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * P + i] = src[k];
        // The row's next chunk arrives while this chunk's tiles are computed.
        for (int64_t k = kc; k < std::min(2 * kc, n - k0); k += 64 / static_cast<int64_t>(sizeof(T)))
          __builtin_prefetch(src + k);
      } else {
        for (int64_t k = 0; k < kc; ++k) dst[k * P + i] = T(0);
      }
    }
  }
}

// A register block of R rows x NV vectors of G: acc[i * NV + v] += sum over k of a[k * P + i] * b[v][k],
// where a points at row 0 of the block inside an A panel and b[v] = b + v * kc are consecutive B panels.
// Two shapes: P rows x 1 vector (a diagonal tile) and P/2 rows x 2 vectors (two tiles below the
// diagonal: per k, 2 vector loads and P/2 broadcasts feed P multiply-adds, not P + 1 loads).
template <typename T, int R, int NV>
inline void block_kernel(const T* a, const typename Simd<T>::Vec* b, int64_t kc, typename Simd<T>::Vec* acc) {
  using Vec = typename Simd<T>::Vec;
  constexpr int P = Simd<T>::kLanes;
  Vec c[R * NV];
#pragma GCC unroll 16
  for (int i = 0; i < R * NV; ++i) c[i] = acc[i];
  for (int64_t k = 0; k < kc; ++k) {
    Vec bk[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bk[v] = b[v * kc + k];
    const T* ak = a + k * P;
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[i * NV + v] += ak[i] * bk[v];
  }
#pragma GCC unroll 16
  for (int i = 0; i < R * NV; ++i) acc[i] = c[i];
}

// Rows [r0, r0 + R) x columns [c0, c0 + NV * P) of g (c x c) to or from acc, clipped to c; a full
// block moves whole vectors (a fixed-size memcpy is one unaligned load or store).
template <typename T, int R, int NV>
void load_block(const T* g, int64_t c, int64_t r0, int64_t c0, bool zero, typename Simd<T>::Vec* acc) {
  using Vec = typename Simd<T>::Vec;
  constexpr int P = Simd<T>::kLanes;
  const int64_t rows = std::min<int64_t>(R, c - r0);
  if (!zero && rows == R && c0 + NV * P <= c) {
    for (int i = 0; i < R; ++i)
      for (int v = 0; v < NV; ++v)
        std::memcpy(static_cast<void*>(acc + i * NV + v), g + (r0 + i) * c + c0 + v * P, sizeof(Vec));
    return;
  }
  for (int i = 0; i < R * NV; ++i) acc[i] = Vec{};
  if (zero) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = std::clamp<int64_t>(c - c0 - v * P, 0, P);
      std::memcpy(static_cast<void*>(acc + i * NV + v), g + (r0 + i) * c + c0 + v * P, sizeof(T) * cols);
    }
}

template <typename T, int R, int NV>
void store_block(T* g, int64_t c, int64_t r0, int64_t c0, const typename Simd<T>::Vec* acc) {
  using Vec = typename Simd<T>::Vec;
  constexpr int P = Simd<T>::kLanes;
  const int64_t rows = std::min<int64_t>(R, c - r0);
  const bool full = c0 + NV * P <= c;
  for (int64_t i = 0; i < rows; ++i)
    for (int v = 0; v < NV; ++v) {
      T* dst = g + (r0 + i) * c + c0 + v * P;
      if (full) {
        std::memcpy(dst, static_cast<const void*>(acc + i * NV + v), sizeof(Vec));
      } else {
        const int64_t cols = std::clamp<int64_t>(c - c0 - v * P, 0, P);
        std::memcpy(dst, static_cast<const void*>(acc + i * NV + v), sizeof(T) * cols);
      }
    }
}

// One register block of g = f f^T at rows r0.., columns of panels tj.., over the current chunk.
template <typename T, int R, int NV>
void update_block(T* g, int64_t c, const typename Simd<T>::Vec* panels, int64_t kc, int64_t r0, int64_t tj,
                  bool first_chunk) {
  using Vec = typename Simd<T>::Vec;
  constexpr int P = Simd<T>::kLanes;
  if (r0 >= c) return;  // the padding rows of the last panel
  Vec acc[R * NV];
  load_block<T, R, NV>(g, c, r0, tj * P, first_chunk, acc);
  const T* a = reinterpret_cast<const T*>(panels + (r0 / P) * kc) + r0 % P;
  block_kernel<T, R, NV>(a, panels + tj * kc, kc, acc);
  store_block<T, R, NV>(g, c, r0, tj * P, acc);
}

// Copies the computed lower tiles of rows [r0, r1) of tiles onto their mirror images above the diagonal.
template <typename T>
void mirror_rows(T* g, int64_t c, int64_t r0, int64_t r1) {
  constexpr int P = Simd<T>::kLanes;
  for (int64_t ti = r0; ti < r1; ++ti) {
    const int64_t i_end = std::min<int64_t>(c, (ti + 1) * P);
    for (int64_t tj = 0; tj < ti; ++tj)
      for (int64_t i = ti * P; i < i_end; ++i)
        for (int64_t j = tj * P; j < (tj + 1) * P; ++j) g[j * c + i] = g[i * c + j];
  }
}

// Lower triangle of rows [r0, r1) of tiles of g = f f^T (f: [c, n] contiguous), mirrored.
template <typename T>
void gram_rows(const T* f, T* g, int64_t c, int64_t n, int64_t r0, int64_t r1,
               typename Simd<T>::Vec* panels) {
  constexpr int P = Simd<T>::kLanes, H = P / 2;
  for (int64_t k0 = 0; k0 < n; k0 += kKChunk) {
    const int64_t kc = std::min(kKChunk, n - k0);
    pack_panels(f, c, n, k0, kc, r1, panels);
    for (int64_t ti = r0; ti < r1; ++ti) {
      int64_t tj = 0;
      for (; tj + 1 <= ti; tj += 2) {  // tiles (ti, tj) and (ti, tj + 1), half a panel of rows at a time
        update_block<T, H, 2>(g, c, panels, kc, ti * P, tj, k0 == 0);
        update_block<T, H, 2>(g, c, panels, kc, ti * P + H, tj, k0 == 0);
      }
      if (tj == ti) update_block<T, P, 1>(g, c, panels, kc, ti * P, ti, k0 == 0);
    }
  }
  mirror_rows(g, c, r0, r1);
}

// Splits tiles rows [0, tiles) into `parts` contiguous ranges of about equal work (row t has t + 1
// tiles); returns the part + 1 boundaries.
std::vector<int64_t> split_rows(int64_t tiles, int64_t parts) {
  std::vector<int64_t> bounds{0};
  const auto work_before = [](int64_t row) { return 0.5 * static_cast<double>(row) * static_cast<double>(row + 1); };
  int64_t row = 0;
  for (int64_t part = 1; part < parts; ++part) {
    while (row < tiles && work_before(row) < work_before(tiles) * part / parts) ++row;
    bounds.push_back(row);
  }
  bounds.push_back(tiles);
  return bounds;
}

template <typename T>
void gram_kernel(const at::Tensor& features, const at::Tensor& gram) {
  using Vec = typename Simd<T>::Vec;
  constexpr int P = Simd<T>::kLanes;
  const int64_t batch = features.size(0), c = features.size(1), n = features.size(2);
  const int64_t tiles = (c + P - 1) / P;
  const int64_t threads = at::get_num_threads();
  // Fewer samples than threads: split each triangle so that every thread has work.
  const int64_t parts = std::min<int64_t>(tiles, batch >= threads ? 1 : (threads + batch - 1) / batch);
  const std::vector<int64_t> bounds = split_rows(tiles, parts);
  const int64_t tasks = batch * parts;
  const T* f = features.data_ptr<T>();
  T* g = gram.data_ptr<T>();
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, tasks), 1, [&](int64_t, int64_t) {
    std::unique_ptr<Vec[]> panels(new Vec[tiles * std::min(kKChunk, n)]);
    for (int64_t task; (task = next.fetch_add(1)) < tasks;) {
      const int64_t s = task / parts, part = task % parts;
      gram_rows<T>(f + s * c * n, g + s * c * c, c, n, bounds[part], bounds[part + 1], panels.get());
    }
  });
}

void check_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 3, "features must be a 3-D [B, C, N] tensor, got ", features.dim(), " dims");
  TORCH_CHECK(features.numel() > 0, "features must have B, C, N >= 1, got ", features.sizes());
  TORCH_CHECK(features.device().is_cpu(), "features must be a CPU tensor, got ", features.device());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
              "features must be float32 or float64, got ", features.scalar_type());
}

at::Tensor gram_matrix_fwd(const at::Tensor& features) {
  check_features(features);
  const at::Tensor f = features.contiguous();
  at::Tensor gram = at::empty({f.size(0), f.size(1), f.size(1)}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "gram_matrix_fwd", [&] { gram_kernel<scalar_t>(f, gram); });
  return gram;
}

at::Tensor gram_matrix_bwd(const at::Tensor& grad_out, const at::Tensor& features) {
  check_features(features);
  const int64_t b = features.size(0), c = features.size(1);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == b && grad_out.size(1) == c && grad_out.size(2) == c,
              "grad_out must be [B, C, C] = [", b, ", ", c, ", ", c, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.scalar_type() == features.scalar_type(),
              "grad_out must be a CPU tensor of dtype ", features.scalar_type());
  return at::bmm(grad_out + grad_out.transpose(1, 2), features);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) {
  m.impl("gram_matrix_fwd", &gram_matrix_fwd);
  m.impl("gram_matrix_bwd", &gram_matrix_bwd);
}

}  // namespace fastgen
