// VQ nearest-codebook search on the CPU: a certified bfloat16 filter, then exact distances for the
// few rows and codes it cannot decide.
//
// argmin_k |z - e_k|^2 = argmin_k S_k with S_k = |e_k|^2 - 2 z.e_k. The filter computes approximate
// scores S~_k from z and e rounded to bfloat16 with AVX512-BF16 dot products (vdpbf16ps: 32 MACs an
// instruction, twice the float32 FMA rate), in a register-tiled GEMM that never stores a score: it
// keeps per row the smallest S~ seen and the codes within 2E of it, where E bounds |S~_k - S_k| for
// every k (derived at row_error_bound). The true argmin k* is always among those candidates:
// S~_k* <= S_k* + E <= S_b + E <= S~_b + 2E for the code b of the smallest S~. A row with one
// candidate is decided; otherwise its candidates are compared by exact distances (double, from the
// difference, ties to the lowest index), and a row with too many (clustered codes) is scanned exactly.
// On random normal data (D = 64, K = 512..8192) 22-31% of the rows keep 2-3 candidates, none more.
//
// Threads take blocks of z rows one at a time; the packed codebook goes by blocks that stay in L2
// while the block's micro-tiles (6 rows x 64 codes: 24 accumulators) pass over them.
// float16 / bfloat16 run the float32 path (z converted a row block at a time, the codebook once);
// float64 and builds without AVX512-BF16 use the exact scan. Extra memory is O(N + K*D).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace fastgen {
namespace {

// Squared distance accumulated in double from the difference (float or double inputs): exact ties stay ties.
template <typename T>
double exact_sq_dist(const T* z, const T* e, int64_t d) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(z[j]) - static_cast<double>(e[j]);
    s += t * t;
  }
  return s;
}

// The nearest code by exact distance; strict < keeps the lowest index on ties.
template <typename T>
int64_t exact_nearest(const T* z, const T* e, int64_t k, int64_t d) {
  double best = std::numeric_limits<double>::infinity();
  int64_t index = 0;
  for (int64_t c = 0; c < k; ++c) {
    const double s = exact_sq_dist(z, e + c * d, d);
    if (s < best) best = s, index = c;
  }
  return index;
}

// |z - e|^2 accumulated in float, as the reference computes the output distances.
float sq_dist_float(const float* z, const float* e, int64_t d) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) s += (z[j] - e[j]) * (z[j] - e[j]);
  return s;
}

void nearest_double(const at::Tensor& z, const at::Tensor& e, int64_t* indices, double* distances) {
  const int64_t n = z.size(0), k = e.size(0), d = z.size(1);
  const double* zp = z.data_ptr<double>();
  const double* ep = e.data_ptr<double>();
  at::parallel_for(0, n, std::max<int64_t>(1, 65536 / std::max<int64_t>(k * d, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      indices[i] = exact_nearest(zp + i * d, ep, k, d);
      distances[i] = exact_sq_dist(zp + i * d, ep + indices[i] * d, d);
    }
  });
}

// Rows of z [N, D] (any strides, any float type) converted to a contiguous float block.
template <typename T>
void gather_rows(const T* z, int64_t s0, int64_t s1, int64_t row0, int64_t rows, int64_t d, float* out) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* src = z + (row0 + i) * s0;
    float* dst = out + i * d;
    if (s1 == 1) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dst[j] = static_cast<float>(src[j]);
    } else {
      for (int64_t j = 0; j < d; ++j) dst[j] = static_cast<float>(src[j * s1]);
    }
  }
}

#if defined(__AVX512BF16__)

// ---- bfloat16 rounding, with the values the dot-product instruction will see ----

// Round to nearest even; float32 subnormals become zero (vdpbf16ps would treat them as zero), so
// every bfloat16 made here is normal or zero and the rounding error z - bf16(z) is computed exactly.
inline uint32_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0) return (u >> 16) & 0x8000u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

inline float from_bf16(uint32_t b) {
  const uint32_t u = b << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// to_bf16 on 16 floats, the result as floats (low 16 bits zero).
inline __m512 round_bf16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 normal = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))),
                                     _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  return _mm512_castsi512_ps(
      _mm512_mask_blend_epi32(normal, _mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0x80000000u))), r));
}

// One row of z: writes -2 bf16(x) (exact) as bfloat16 to out[0, d), and |bf16(x)|^2, |x - bf16(x)|^2.
inline void round_row(const float* x, int64_t d, uint16_t* out, double& zb_sq, double& round_sq) {
  __m512d a0 = _mm512_setzero_pd(), a1 = a0, r0 = a0, r1 = a0;
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 m = d - j >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (d - j)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
    const __m512 vb = round_bf16(v);
    const __m512 rv = _mm512_sub_ps(v, vb);  // exact: vb is v with its low bits rounded off
    const __m512d b_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(vb));
    const __m512d b_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(vb, 1));
    const __m512d r_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(rv));
    const __m512d r_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(rv, 1));
    a0 = _mm512_fmadd_pd(b_lo, b_lo, a0), a1 = _mm512_fmadd_pd(b_hi, b_hi, a1);
    r0 = _mm512_fmadd_pd(r_lo, r_lo, r0), r1 = _mm512_fmadd_pd(r_hi, r_hi, r1);
    const __m512i scaled = _mm512_srli_epi32(_mm512_castps_si512(_mm512_mul_ps(vb, _mm512_set1_ps(-2.f))), 16);
    _mm512_mask_cvtepi32_storeu_epi16(out + j, m, scaled);
  }
  zb_sq = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  round_sq = _mm512_reduce_add_pd(_mm512_add_pd(r0, r1));
}

constexpr int64_t kLanes = 16;    // codes per vector: one group
constexpr int kTileRows = 6;      // z rows per micro-tile
constexpr int kTileGroups = 4;    // groups per micro-tile: 24 accumulators + 4 code vectors + 1 broadcast
constexpr int kCandidates = 32;   // candidates kept per row before it falls back to the exact scan
constexpr int64_t kCodeBlockBytes = 256 << 10;  // a codebook block stays in L2 while a row block streams
constexpr int64_t kRowBlockBytes = 48 << 10;    // float rows per block
// Past this |S| the float32 accumulation could overflow: such rows take the exact scan.
constexpr double kRangeLimit = 0x1p100;

// The codebook in bfloat16, a group of 16 codes at a time: 16 float32 norms |e_k|^2 (the
// accumulators start from them; +inf for padding codes, which then never win), then for each pair of
// dimensions one 64-byte vector of 16 (e[2p], e[2p+1]) bfloat16 pairs: each step loads contiguously.
struct PackedCodebook {
  at::Tensor storage;
  const uint32_t* data = nullptr;
  int64_t groups = 0, pairs = 0, stride = 0;  // stride: uint32 words per group
  double max_norm_bf = 0;   // max_k |bf16(e_k)|
  double max_round = 0;     // max_k |e_k - bf16(e_k)|
  double max_norm_sq = 0;   // max_k |e_k|^2
};

PackedCodebook pack_codebook(const float* e, int64_t k, int64_t d) {
  PackedCodebook p;
  p.groups = (k + kLanes - 1) / kLanes;
  p.pairs = (d + 1) / 2;
  p.stride = kLanes * (1 + p.pairs);
  p.storage = at::empty({p.groups * p.stride}, at::kInt);
  uint32_t* out = reinterpret_cast<uint32_t*>(p.storage.data_ptr<int32_t>());
  p.data = out;
  std::vector<double> norm_bf(p.groups), round(p.groups), norm_sq(p.groups);
  const int64_t pairs = p.pairs, stride = p.stride;
  at::parallel_for(0, p.groups, 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      uint32_t* block = out + g * stride;
      double g_norm_bf = 0, g_round = 0, g_norm_sq = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t c = g * kLanes + l;
        if (c >= k) {
          const float inf = std::numeric_limits<float>::infinity();
          std::memcpy(block + l, &inf, 4);
          for (int64_t q = 0; q < pairs; ++q) block[kLanes * (1 + q) + l] = 0;
          continue;
        }
        const float* row = e + c * d;
        double sq = 0, bf_sq = 0, round_sq = 0;
        for (int64_t q = 0; q < pairs; ++q) {
          uint32_t word = 0;
          for (int64_t h = 0; h < 2 && 2 * q + h < d; ++h) {
            const float x = row[2 * q + h];
            const uint32_t b = to_bf16(x);
            const double xb = from_bf16(b);
            sq += static_cast<double>(x) * x;
            bf_sq += xb * xb;
            round_sq += (x - xb) * (x - xb);
            word |= b << (16 * h);
          }
          block[kLanes * (1 + q) + l] = word;
        }
        const float norm = static_cast<float>(sq);
        std::memcpy(block + l, &norm, 4);
        g_norm_bf = std::max(g_norm_bf, std::sqrt(bf_sq));
        g_round = std::max(g_round, std::sqrt(round_sq));
        g_norm_sq = std::max(g_norm_sq, sq);
      }
      norm_bf[g] = g_norm_bf, round[g] = g_round, norm_sq[g] = g_norm_sq;
    }
  });
  p.max_norm_bf = *std::max_element(norm_bf.begin(), norm_bf.end());
  p.max_round = *std::max_element(round.begin(), round.end());
  p.max_norm_sq = *std::max_element(norm_sq.begin(), norm_sq.end());
  return p;
}

// E with |S~_k - S_k| <= E for every code k of one row z, where S~_k is the float32 accumulation of
// n_k + sum_j (-2 zb_j) eb_kj (zb, eb: bfloat16 roundings; n_k = fl32(|e_k|^2)) and S_k is exact.
// Write dz = z - zb, de_k = e_k - eb_k (computed exactly from the rounded values):
//  * rounding the inputs: 2 |z.e_k - zb.eb_k| = 2 |zb.de_k + dz.eb_k + dz.de_k|
//                         <= 2 (|zb| max|de| + |dz| max|eb| + |dz| max|de|)   (Cauchy-Schwarz)
//  * the norm: |n_k - |e_k|^2| <= 2^-23 |e_k|^2 (double sum rounded once to float32)
//  * accumulation: the products -2 zb_j eb_kj are exact in float32 (8-bit significands); the chain
//    from n_k adds them with at most 2P roundings (P = ceil(D/2) pairs), so with u = 2^-23 (any
//    faithful rounding, not only nearest-even) the error is <= gamma_2P (n_k + 2 |zb| |eb_k|),
//    gamma_m = m u / (1 - m u)
//  * subnormals: vdpbf16ps flushes subnormal products and sums (< 2^-126 each, 4P of them); a
//    flush-to-zero mode set by the caller could also drop subnormal parts of dz, de (< 2^-126 an
//    element) and n_k, which adds at most 2 sqrt(2P) 2^-126 (|zb| + |dz| + max|eb| + max|de| + 1).
// The norms here are computed in double (relative error ~D 2^-53); the final factor covers that.
double row_error_bound(double zb_norm, double round_norm, const PackedCodebook& p) {
  const double u = 0x1p-23, tiny = 0x1p-126;
  const double m = 2.0 * static_cast<double>(p.pairs);
  const double gamma = m * u / (1 - m * u);
  const double rounding = 2 * (zb_norm * p.max_round + round_norm * (p.max_norm_bf + p.max_round));
  const double accumulation = gamma * (p.max_norm_sq * (1 + 2 * u) + 2 * zb_norm * p.max_norm_bf);
  const double flushed = (2 * m + 2) * tiny +
                         2 * std::sqrt(m) * tiny * (zb_norm + round_norm + p.max_norm_bf + p.max_round + 1);
  return (rounding + accumulation + u * p.max_norm_sq + flushed) * (1 + 0x1p-20);
}

// Per-row search state of a row block. `threshold` (best + 2E, rounded up to a float) sits in its
// own array: the micro-kernel compares against it after every tile.
struct RowState {
  float best;
  int32_t count;  // candidates kept; -1: too many (or the filter does not apply): exact scan
  double two_e;
  float value[kCandidates];
  int64_t code[kCandidates];
};

// best + 2E rounded up to a float: a code is a candidate when its S~ <= the threshold.
inline float raise_threshold(float best, double two_e) {
  const float t = static_cast<float>(static_cast<double>(best) + two_e);
  if (!std::isfinite(t)) return t;
  if (t == 0) return std::numeric_limits<float>::denorm_min();
  uint32_t u;
  std::memcpy(&u, &t, 4);
  u += t > 0 ? 1 : -1;
  float up;
  std::memcpy(&up, &u, 4);
  return up;
}

// Rows of a tile with scores at or below their threshold (rare after a row's first tile: each later
// improvement of its best, and codes within 2E of it): update the best, then keep the candidates.
template <int R, int G>
[[gnu::noinline]] void take_hits(const float* scores, uint32_t hit_rows, int64_t code0, RowState* rows,
                                 float* threshold) {
  for (; hit_rows; hit_rows &= hit_rows - 1) {
    const int r = __builtin_ctz(hit_rows);
    const float* s = scores + r * G * kLanes;
    __m512 m = _mm512_load_ps(s);
    for (int g = 1; g < G; ++g) m = _mm512_min_ps(m, _mm512_load_ps(s + g * kLanes));
    const float low = _mm512_reduce_min_ps(m);
    RowState& row = rows[r];
    if (low < row.best) {
      row.best = low;
      threshold[r] = raise_threshold(low, row.two_e);
    }
    const __m512 t = _mm512_set1_ps(threshold[r]);
    for (int g = 0; g < G; ++g) {
      uint32_t mask = _mm512_cmp_ps_mask(_mm512_load_ps(s + g * kLanes), t, _CMP_LE_OQ);
      for (; mask && row.count >= 0; mask &= mask - 1) {
        const int l = __builtin_ctz(mask);
        if (row.count == kCandidates) {  // drop the candidates the lower threshold excludes
          int kept = 0;
          for (int i = 0; i < kCandidates; ++i)
            if (row.value[i] <= threshold[r]) row.value[kept] = row.value[i], row.code[kept++] = row.code[i];
          row.count = kept;
          if (kept == kCandidates) {
            row.count = -1;
            threshold[r] = -std::numeric_limits<float>::infinity();  // no more hits: exact scan
            break;
          }
        }
        row.value[row.count] = s[g * kLanes + l];
        row.code[row.count++] = code0 + g * kLanes + l;
      }
    }
  }
}

// Scores of R rows (zt: R x P words of (-2 zb[2p], -2 zb[2p+1]) bfloat16 pairs) against G groups
// starting at `codes`, then the threshold check. The R*G accumulators stay in registers.
template <int R, int G>
inline void scan_tile(const uint32_t* zt, int64_t pairs, const uint32_t* codes, int64_t stride, int64_t code0,
                      RowState* rows, float* threshold) {
  __m512 acc[R][G];
  for (int g = 0; g < G; ++g) {
    const __m512 norms = _mm512_loadu_ps(reinterpret_cast<const float*>(codes + g * stride));
    for (int r = 0; r < R; ++r) acc[r][g] = norms;
  }
  const uint32_t* b = codes + kLanes;
  int64_t q = 0;
  do {  // pairs >= 1: no zero-trip path, which made the compiler keep the accumulators in memory
    __m512bh e[G];
    for (int g = 0; g < G; ++g) e[g] = (__m512bh)_mm512_loadu_si512(b + g * stride);
    for (int r = 0; r < R; ++r) {
      const __m512bh zv = (__m512bh)_mm512_set1_epi32(static_cast<int>(zt[r * pairs + q]));
      for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], zv, e[g]);
    }
    b += kLanes;
  } while (++q < pairs);
  uint32_t hit_rows = 0;
  for (int r = 0; r < R; ++r) {
    __m512 m = acc[r][0];
    for (int g = 1; g < G; ++g) m = _mm512_min_ps(m, acc[r][g]);
    hit_rows |= uint32_t(_mm512_cmp_ps_mask(m, _mm512_set1_ps(threshold[r]), _CMP_LE_OQ) != 0) << r;
  }
  if (__builtin_expect(hit_rows != 0, 0)) {
    alignas(64) float scores[R * G * kLanes];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) _mm512_store_ps(scores + (r * G + g) * kLanes, acc[r][g]);
    take_hits<R, G>(scores, hit_rows, code0, rows, threshold);
  }
}

template <int G>
void scan_groups(const uint32_t* zt, int64_t pairs, const PackedCodebook& p, int64_t g0, RowState* rows,
                 float* threshold) {
  scan_tile<kTileRows, G>(zt, pairs, p.data + g0 * p.stride, p.stride, g0 * kLanes, rows, threshold);
}

// Rows [row0, row0 + rows) of z: the filter, then candidates or the exact scan; writes the outputs.
template <typename T>
void search_block(const T* z, int64_t s0, int64_t s1, int64_t row0, int64_t rows, const float* e, int64_t k,
                  int64_t d, const PackedCodebook& p, std::vector<float>& zf, std::vector<uint32_t>& zt,
                  std::vector<RowState>& state, std::vector<float>& threshold, int64_t* indices, T* distances) {
  const int64_t pairs = p.pairs;
  const int64_t padded = (rows + kTileRows - 1) / kTileRows * kTileRows;
  gather_rows(z, s0, s1, row0, rows, d, zf.data());
  std::fill(zt.begin(), zt.begin() + padded * pairs, 0u);
  for (int64_t i = 0; i < padded; ++i) {
    RowState& row = state[i];
    row.best = std::numeric_limits<float>::infinity();
    row.count = -1;
    threshold[i] = -std::numeric_limits<float>::infinity();
    if (i >= rows) continue;
    double zb_sq, round_sq;
    round_row(zf.data() + i * d, d, reinterpret_cast<uint16_t*>(zt.data() + i * pairs), zb_sq, round_sq);
    const double zb_norm = std::sqrt(zb_sq);
    if (2 * zb_norm * p.max_norm_bf + p.max_norm_sq < kRangeLimit) {
      row.two_e = 2 * row_error_bound(zb_norm, std::sqrt(round_sq), p);
      row.count = 0;
      threshold[i] = std::numeric_limits<float>::infinity();
    }
  }
  const int64_t block_groups =
      std::max<int64_t>(kTileGroups, kCodeBlockBytes / (p.stride * 4) / kTileGroups * kTileGroups);
  for (int64_t gb = 0; gb < p.groups; gb += block_groups) {
    const int64_t ge = std::min(p.groups, gb + block_groups);
    for (int64_t t = 0; t < padded; t += kTileRows) {
      const uint32_t* ztile = zt.data() + t * pairs;
      RowState* rs = state.data() + t;
      float* th = threshold.data() + t;
      int64_t g = gb;
      for (; g + kTileGroups <= ge; g += kTileGroups) scan_groups<kTileGroups>(ztile, pairs, p, g, rs, th);
      switch (ge - g) {
        case 3: scan_groups<3>(ztile, pairs, p, g, rs, th); break;
        case 2: scan_groups<2>(ztile, pairs, p, g, rs, th); break;
        case 1: scan_groups<1>(ztile, pairs, p, g, rs, th); break;
        default: break;
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    const RowState& row = state[i];
    const float* x = zf.data() + i * d;
    // The candidates under the final threshold: one decides the row; several are compared by exact
    // distance (they were found out of code order: ties compare the codes); none kept (too many, or
    // out of range): the exact scan.
    int64_t index = -1;
    int kept = 0;
    for (int c = 0; c < row.count; ++c)
      if (row.value[c] <= threshold[i]) ++kept, index = row.code[c];
    if (kept > 1) {
      double best = std::numeric_limits<double>::infinity();
      for (int c = 0; c < row.count; ++c) {
        if (!(row.value[c] <= threshold[i])) continue;
        const double s = exact_sq_dist(x, e + row.code[c] * d, d);
        if (s < best || (s == best && row.code[c] < index)) best = s, index = row.code[c];
      }
    }
    if (index < 0) index = exact_nearest(x, e, k, d);
    indices[row0 + i] = index;
    distances[row0 + i] = static_cast<T>(sq_dist_float(x, e + index * d, d));
  }
}

template <typename T>
void nearest_float(const at::Tensor& z, const at::Tensor& ef, int64_t* indices, T* distances) {
  const int64_t n = z.size(0), k = ef.size(0), d = z.size(1);
  const float* e = ef.data_ptr<float>();
  const PackedCodebook p = pack_codebook(e, k, d);
  const T* zp = z.data_ptr<T>();
  const int64_t s0 = z.stride(0), s1 = z.stride(1);
  const int64_t block_rows =
      std::max<int64_t>(kTileRows, kRowBlockBytes / (4 * std::max<int64_t>(d, 1)) / kTileRows * kTileRows);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  // Blocks are handed out one at a time, not split evenly up front: rows that fall back cost more,
  // and a core slowed by other load then only delays the block it is on.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, blocks, 1, [&](int64_t, int64_t) {
    std::vector<float> zf(block_rows * d);
    std::vector<uint32_t> zt(block_rows * p.pairs);
    std::vector<RowState> state(block_rows);
    std::vector<float> threshold(block_rows);
    for (int64_t b = next++; b < blocks; b = next++) {
      const int64_t row0 = b * block_rows;
      search_block(zp, s0, s1, row0, std::min(block_rows, n - row0), e, k, d, p, zf, zt, state, threshold,
                   indices, distances);
    }
  });
}

#else  // no AVX512-BF16: the exact scan

template <typename T>
void nearest_float(const at::Tensor& z, const at::Tensor& ef, int64_t* indices, T* distances) {
  const int64_t n = z.size(0), k = ef.size(0), d = z.size(1);
  const float* e = ef.data_ptr<float>();
  const T* zp = z.data_ptr<T>();
  const int64_t s0 = z.stride(0), s1 = z.stride(1);
  at::parallel_for(0, n, std::max<int64_t>(1, 65536 / std::max<int64_t>(k * d, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> x(d);
    for (int64_t i = begin; i < end; ++i) {
      gather_rows(zp, s0, s1, i, 1, d, x.data());
      indices[i] = exact_nearest(x.data(), e, k, d);
      distances[i] = static_cast<T>(sq_dist_float(x.data(), e + indices[i] * d, d));
    }
  });
}

#endif

std::tuple<at::Tensor, at::Tensor> vq_nearest_l2(const at::Tensor& z, const at::Tensor& codebook) {
  TORCH_CHECK(z.dim() == 2 && codebook.dim() == 2, "vq_nearest_l2: z [N, D] and codebook [K, D] must be 2-D");
  TORCH_CHECK(z.size(1) == codebook.size(1), "vq_nearest_l2: z and codebook must have the same D");
  TORCH_CHECK(codebook.size(0) >= 1, "vq_nearest_l2: the codebook needs K >= 1 entries");
  TORCH_CHECK(z.device().is_cpu() && codebook.device().is_cpu(), "vq_nearest_l2: CPU tensors expected");
  TORCH_CHECK(z.scalar_type() == codebook.scalar_type(), "vq_nearest_l2: z and codebook must have one dtype");
  const int64_t n = z.size(0);
  at::Tensor indices = at::empty({n}, z.options().dtype(at::kLong));
  at::Tensor distances = at::empty({n}, z.options());
  if (n == 0) return {indices, distances};
  if (z.size(1) == 0) {  // every distance is 0: the first code
    indices.zero_();
    distances.zero_();
    return {indices, distances};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "vq_nearest_l2", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      nearest_double(z.contiguous(), codebook.contiguous(), indices.data_ptr<int64_t>(),
                     distances.data_ptr<double>());
    } else {
      nearest_float(z, codebook.to(at::kFloat).contiguous(), indices.data_ptr<int64_t>(),
                    distances.data_ptr<scalar_t>());
    }
  });
  return {indices, distances};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) { m.impl("vq_nearest_l2", &vq_nearest_l2); }

}  // namespace fastgen
