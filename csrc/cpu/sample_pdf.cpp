// NeRF hierarchical sampling on the CPU (fastgen::sample_pdf; the spec is
// fastgen/ops/nerf/reference_pdf.py): the inverse CDF of each ray's piecewise-constant pdf.
//
// Threads take chunks of rays. Per ray the CDF is built in a per-thread buffer the way the reference
// builds it, so its float32 bits are the reference's: each prefix of (w + 1e-5) accumulated in double
// and rounded (torch's CPU cumsum), then divided by the last one (which becomes exactly 1). The same
// pass checks the values (weights finite and >= 0, edges finite and sorted) instead of separate torch
// passes, which cost more than this kernel. Then each u needs the count of CDF values <= u
// (searchsorted, right=True). float32 with AVX-512 takes 16 samples a vector:
//   * deterministic u (one sorted linspace row): a merge at vector granularity, O(S + n) per ray: CDF
//     values before k0 are <= the whole group of 16 u, none from k1 on is <= any, so only [k0, k1) is
//     compared (a broadcast compare and a masked add per value);
//   * random u (any order): the whole CDF compared (up to kLinearScanMax values), else a branch-free
//     binary search with gathers;
//   * the interpolation reads cdf and bins at below / above by register permutes when S + 1 <= 64
//     (NeRF's 63 or 64 edges), else by gathers.
// float64 and builds without AVX-512 run the same steps in plain loops (a binary search per sample
// past kLinearScanMax values). Results equal the reference's up to one rounding of the final
// b0 + t * (b1 - b0), which the compiler may contract into an FMA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../sample_pdf_checks.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace fastgen {
namespace {

// Rays per task: enough work (S + n per ray) to amortize a task, but many tasks for load balance.
constexpr int64_t kWorkPerTask = 1 << 15;
// CDFs up to this many values are scanned whole per sample, longer ones binary-searched.
constexpr int64_t kLinearScanMax = 128;

// Returns false when a weight is negative, NaN or infinite (the CDF is then meaningless).
template <typename T>
bool build_cdf(const T* w, int64_t s, T* cdf) {
  // The accumulation type of torch's CPU cumsum: double for float and double.
  double acc = 0;
  bool valid = true;
  cdf[0] = 0;
  for (int64_t k = 0; k < s; ++k) {
    valid &= w[k] >= 0 && w[k] < std::numeric_limits<T>::infinity();
    acc += static_cast<double>(w[k] + static_cast<T>(1e-5));
    cdf[k + 1] = static_cast<T>(acc);
  }
  const T total = cdf[s];
#pragma omp simd
  for (int64_t k = 1; k <= s; ++k) cdf[k] = cdf[k] / total;
  return valid;
}

// Error bits: 1 when an end is NaN or infinite, 2 when unsorted or NaN inside (0: valid).
template <typename T>
int bins_error(const T* b, int64_t s) {
  if (!std::isfinite(b[0]) || !std::isfinite(b[s])) return 1;
  bool sorted = true;
#pragma omp simd reduction(&& : sorted)
  for (int64_t k = 0; k < s; ++k) sorted = sorted && b[k + 1] >= b[k];
  return sorted ? 0 : 2;
}

// The portable path (float64, builds without AVX-512). inds[j] = how many of cdf[0..s] (non-decreasing)
// are <= u[j], as searchsorted(right=True), for any order of u: a short CDF is compared whole, a long
// one binary-searched without branches.
template <typename T>
void locate(const T* cdf, int64_t s, const T* u, int64_t n, int32_t* inds) {
  const int64_t size = s + 1;
  if (size <= kLinearScanMax) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      int32_t count = 0;
      for (int64_t k = 0; k < size; ++k) count += cdf[k] <= u[j];
      inds[j] = count;
    }
    return;
  }
  int64_t top = 1;
  while (top * 2 <= size) top *= 2;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    int64_t count = 0;  // grows by the powers of two whose prefix still ends at a value <= u
    for (int64_t step = top; step > 0; step /= 2) {
      const int64_t next = count + step;
      count = (next <= size && cdf[std::min(next, size) - 1] <= u[j]) ? next : count;
    }
    inds[j] = static_cast<int32_t>(count);
  }
}

// out[j] from u[j] and inds[j] (the count of CDF values <= u[j]), as the reference interpolates.
template <typename T>
void interpolate(const T* cdf, const T* bins, int64_t s, const T* u, const int32_t* inds, int64_t n, T* out) {
  const int32_t last = static_cast<int32_t>(s);
  const T min_step = static_cast<T>(1e-5);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const int32_t below = std::max(inds[j] - 1, 0), above = std::min(inds[j], last);
    const T c0 = cdf[below], b0 = bins[below];
    T denom = cdf[above] - c0;
    denom = denom < min_step ? T(1) : denom;
    const T t = (u[j] - c0) / denom;
    out[j] = b0 + t * (bins[above] - b0);
  }
}

#if defined(__AVX512F__)
// ---- float32 with AVX-512: 16 samples a vector, the interpolation with explicit (unfused) mul and add ----

// cnt + (how many of cdf[k_begin, k_end) are <= u), per lane.
inline __m512i count_le(const float* cdf, int64_t k_begin, int64_t k_end, __m512 u, __m512i cnt) {
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t k = k_begin; k < k_end; ++k) {
    cnt = _mm512_mask_add_epi32(cnt, _mm512_cmp_ps_mask(_mm512_set1_ps(cdf[k]), u, _CMP_LE_OQ), cnt, one);
  }
  return cnt;
}

// The count of cdf[0..size) values <= u by a branch-free binary search, one gather a step.
inline __m512i search_le(const float* cdf, int64_t size, __m512 u) {
  int64_t top = 1;
  while (top * 2 <= size) top *= 2;
  const __m512i limit = _mm512_set1_epi32(static_cast<int32_t>(size));
  __m512i cnt = _mm512_setzero_si512();
  for (int64_t step = top; step > 0; step /= 2) {
    const __m512i next = _mm512_add_epi32(cnt, _mm512_set1_epi32(static_cast<int32_t>(step)));
    const __mmask16 fits = _mm512_cmple_epi32_mask(next, limit);
    const __m512i last = _mm512_sub_epi32(next, _mm512_set1_epi32(1));
    const __m512 value = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), fits, last, cdf, 4);
    cnt = _mm512_mask_mov_epi32(cnt, fits & _mm512_cmp_ps_mask(value, u, _CMP_LE_OQ), next);
  }
  return cnt;
}

// Up to 64 values of a ray's table (cdf or bins) in four registers: a lookup is two two-register
// permutes and a blend, much cheaper than a gather.
struct Table64 {
  __m512 part[4];
  Table64(const float* values, int64_t size) {
    for (int i = 0; i < 4; ++i) {
      const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, size - 16 * i));
      part[i] = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << left) - 1u), values + 16 * i);
    }
  }
  __m512 operator[](__m512i index) const {
    const __m512 low = _mm512_permutex2var_ps(part[0], index, part[1]);
    const __m512 high = _mm512_permutex2var_ps(part[2], index, part[3]);
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(index, _mm512_set1_epi32(32)), low, high);
  }
};

// Any length: gathers.
struct TableGather {
  const float* values;
  __m512 operator[](__m512i index) const { return _mm512_i32gather_ps(index, values, 4); }
};

// The reference's interpolation for 16 samples whose counts of CDF values <= u are cnt.
template <typename Table>
inline void interpolate16(const Table& cdf, const Table& bins, int64_t s, __m512 u, __m512i cnt, __mmask16 lanes,
                          float* out) {
  const __m512i below = _mm512_max_epi32(_mm512_sub_epi32(cnt, _mm512_set1_epi32(1)), _mm512_setzero_si512());
  const __m512i above = _mm512_min_epi32(cnt, _mm512_set1_epi32(static_cast<int32_t>(s)));
  const __m512 c0 = cdf[below], c1 = cdf[above], b0 = bins[below], b1 = bins[above];
  __m512 denom = _mm512_sub_ps(c1, c0);
  denom = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(denom, _mm512_set1_ps(1e-5f), _CMP_LT_OQ), denom,
                               _mm512_set1_ps(1.f));
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(u, c0), denom);
  _mm512_mask_storeu_ps(out, lanes, _mm512_add_ps(b0, _mm512_mul_ps(t, _mm512_sub_ps(b1, b0))));
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}

// One ray. A sorted u (the deterministic linspace) goes by a merge at vector granularity: every CDF
// value before k0 is <= the group's first u, none from k1 on is <= its last, so only [k0, k1) is
// compared, O(S + n) per ray. An unsorted u compares the whole CDF (short) or binary-searches it.
template <typename Table>
void sample_ray(const float* cdf, int64_t s, const float* u, int64_t n, bool sorted,
                const Table& cdf_table, const Table& bins_table, float* out) {
  const int64_t size = s + 1;
  int64_t k0 = 0;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 lanes = tail_mask(n - j);
    const __m512 uj = _mm512_maskz_loadu_ps(lanes, u + j);  // masked lanes: u = 0, any index is valid
    __m512i cnt;
    if (sorted) {
      const float first = u[j], last = u[std::min(j + 16, n) - 1];
      while (k0 < size && cdf[k0] <= first) ++k0;
      int64_t k1 = k0;
      while (k1 < size && cdf[k1] <= last) ++k1;
      cnt = count_le(cdf, k0, k1, uj, _mm512_set1_epi32(static_cast<int32_t>(k0)));
    } else if (size <= kLinearScanMax) {
      cnt = count_le(cdf, 0, size, uj, _mm512_setzero_si512());
    } else {
      cnt = search_le(cdf, size, uj);
    }
    interpolate16(cdf_table, bins_table, s, uj, cnt, lanes, out + j);
  }
}
#endif

template <typename T>
void sample_rays(const at::Tensor& bins, const at::Tensor& weights, const at::Tensor& u, bool shared_u,
                 at::Tensor& out) {
  const int64_t rays = weights.size(0), s = weights.size(1), n = out.size(1);
  const T* bp = bins.data_ptr<T>();
  const T* wp = weights.data_ptr<T>();
  const T* up = u.data_ptr<T>();
  T* op = out.data_ptr<T>();
  // A deterministic u is one row shared by every ray; a given u has a row per ray.
  const int64_t u_stride = shared_u ? 0 : n;
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / (s + 1 + n));
  // The value checks of fastgen.ops.nerf.pdf.check_values, done here in the same pass over the inputs
  // (the separate torch passes cost more than this kernel): the first error of each kind is flagged.
  std::atomic<bool> bad_weights{false};
  std::atomic<int> bad_bins{0};
  at::parallel_for(0, rays, grain, [&](int64_t begin, int64_t end) {
    bool weights_ok = true;
    int bins_err = 0;
    std::vector<T> cdf(s + 1);
    std::vector<int32_t> inds(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* ur = up + r * u_stride;
      weights_ok &= build_cdf(wp + r * s, s, cdf.data());
      bins_err |= bins_error(bp + r * (s + 1), s);
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        const float* br = bp + r * (s + 1);
        if (s + 1 <= 64) {
          sample_ray(cdf.data(), s, ur, n, shared_u, Table64(cdf.data(), s + 1), Table64(br, s + 1), op + r * n);
        } else {
          sample_ray(cdf.data(), s, ur, n, shared_u, TableGather{cdf.data()}, TableGather{br}, op + r * n);
        }
        continue;
      }
#endif
      locate(cdf.data(), s, ur, n, inds.data());
      interpolate(cdf.data(), bp + r * (s + 1), s, ur, inds.data(), n, op + r * n);
    }
    if (!weights_ok) bad_weights = true;
    if (bins_err) bad_bins.fetch_or(bins_err);
  });
  TORCH_CHECK_VALUE(!bad_weights, "weights must be finite and >= 0");
  TORCH_CHECK_VALUE(!(bad_bins & 1), "bins contains NaN or Inf");
  TORCH_CHECK_VALUE(!(bad_bins & 2),
                    "bins must be sorted (non-decreasing) along the last dim on every ray, without NaN");
}

at::Tensor sample_pdf(const at::Tensor& bins, const at::Tensor& weights, const std::optional<at::Tensor>& u,
                      int64_t n_samples) {
  const int64_t rays = weights.size(0), s = check_sample_pdf_inputs(bins, weights, n_samples, "CPU");
  TORCH_CHECK(s < INT32_MAX, "sample_pdf: S must fit in int32, got ", s);
  at::Tensor u_rows;
  if (u.has_value()) {
    TORCH_CHECK(u->dim() == 2 && u->size(0) == rays && u->size(1) == n_samples,
                "sample_pdf: u must be [R, n_samples] = [", rays, ", ", n_samples, "], got ", u->sizes());
    TORCH_CHECK(u->scalar_type() == weights.scalar_type(), "sample_pdf: u must have weights' dtype (",
                weights.scalar_type(), "), got ", u->scalar_type());
    u_rows = u->contiguous();
  } else {
    u_rows = at::linspace(0.0, 1.0, n_samples, weights.options());  // the reference's values, bit for bit
  }
  const at::Tensor b = bins.contiguous(), w = weights.contiguous();
  at::Tensor out = at::empty({rays, n_samples}, weights.options());
  if (rays == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "sample_pdf", [&] {
    sample_rays<scalar_t>(b, w, u_rows, !u.has_value(), out);
  });
  return out;
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) { m.impl("sample_pdf", TORCH_FN(fastgen::sample_pdf)); }
