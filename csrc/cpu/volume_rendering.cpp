// NeRF volume rendering on packed rays (the spec is fastgen/ops/nerf/reference_rendering.py):
// ray r owns samples [start_r, start_r + count_r) of sigmas [N], t_starts [N], t_ends [N] and
// rgbs [N, C], with packed_info[r] = (start_r, count_r) tiling [0, N) in order.
//
// * volume_render_weights: weights, transmittance and alphas per sample (nerfacc's
//   render_weight_from_density), and its backward from the saved outputs.
// * volume_render: colors, opacities and depths per ray in one pass over its samples, stopping at
//   the first sample whose transmittance is below early_stop_eps (those get weight 0, so their
//   rgbs are never read); its backward recomputes the ray's transmittances into a per-thread
//   scratch (at most one ray long) and walks the ray in reverse with a running suffix sum.
//
// One task takes a block of rays (at::parallel_for). Within a ray, exp(-sigma * delta) of a chunk
// of kChunk samples is computed with SIMD lanes (exp_clamped below, for float); the transmittance
// is then a sequential product T_{i+1} = T_i * exp(-tau_i), which equals the reference's
// exp(-exclusive sum) up to rounding; the fused forward's weighted sums over the chunk use SIMD
// lanes again. Outputs of N samples come from the output cache (output_cache.h). float and double only (the Python layer computes half in
// float). A NaN sigma or a negative interval (t_end < t_start) is an error naming the sample;
// samples past early termination are not read, so they are not checked either.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "output_cache.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fastgen {
namespace {

constexpr int64_t kChunk = 16;                 // one AVX-512 vector of floats
constexpr int64_t kSamplesPerTask = 1 << 15;   // below this a thread wake-up costs more than the work

// GCC keeps a compare (the clamp below) out of vectorized loops while floating-point traps are
// modelled; nothing here reads the FP exception flags.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

// exp(x) as Cephes' expf (about 1 ulp): x = k ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for
// exp(r) and 2^k from the exponent bits. Branch-free, so `omp simd` vectorizes a loop of it (libm's
// expf does not vectorize here). x is clamped to where 2^k stays a normal float; k = floor(x / ln2 +
// 1/2) by truncating a positive number (floor itself does not vectorize).
inline float exp_clamped(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // not std::min/max: they lack this region's options
  const int32_t ki = static_cast<int32_t>(x * 1.44269504088896341f + 128.5f) - 128;
  const float k = static_cast<float>(ki);
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (ki + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// e[j] = exp(-sigma_j * (t_end_j - t_start_j)) for n <= kChunk samples; NaN marks a bad sample
// (a NaN sigma or interval, or a negative interval), so the sequential loop needs one test.
// Not a template: a template's instantiation would not get this region's options. Branch-free (a
// select marks the bad samples), or it would not vectorize.
void survival_chunk(const float* sigmas, const float* t_starts, const float* t_ends, int64_t n, float* e) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float sigma = sigmas[j], delta = t_ends[j] - t_starts[j];
    const bool good = (delta >= 0.0f) & (sigma == sigma);
    const float value = exp_clamped(-sigma * delta);
    e[j] = good ? value : std::numeric_limits<float>::quiet_NaN();
  }
}

#pragma GCC pop_options

void survival_chunk(const double* sigmas, const double* t_starts, const double* t_ends, int64_t n, double* e) {
  for (int64_t j = 0; j < n; ++j) {
    const double delta = t_ends[j] - t_starts[j];
    e[j] = delta >= 0 && sigmas[j] == sigmas[j] ? std::exp(-sigmas[j] * delta)
                                                 : std::numeric_limits<double>::quiet_NaN();
  }
}

template <typename T>
[[noreturn]] void bad_sample(const char* op, int64_t i, T sigma, T t_start, T t_end) {
  TORCH_CHECK(sigma == sigma, op, ": sigmas contains NaN (sample ", i, ")");
  TORCH_CHECK(false, op, ": t_ends must be >= t_starts, got t_start = ", t_start, " and t_end = ", t_end,
              " at sample ", i, " (sigma = ", sigma, "; sigma * interval must be a number)");
}

struct Rays {
  const int64_t* info;  // [R, 2] (start, count)
  int64_t n_rays;
  int64_t start(int64_t r) const { return info[2 * r]; }
  int64_t count(int64_t r) const { return info[2 * r + 1]; }
};

void check_common(const char* op, const at::Tensor& sigmas, const at::Tensor& t_starts, const at::Tensor& t_ends,
                  const at::Tensor& packed_info) {
  TORCH_CHECK(sigmas.device().is_cpu(), op, ": CPU tensors expected, got ", sigmas.device());
  TORCH_CHECK(sigmas.scalar_type() == at::kFloat || sigmas.scalar_type() == at::kDouble, op,
              ": sigmas must be float32 or float64, got ", sigmas.scalar_type());
  TORCH_CHECK(sigmas.dim() == 1, op, ": sigmas must be 1-D [N], got ", sigmas.sizes());
  for (const at::Tensor* t : {&t_starts, &t_ends})
    TORCH_CHECK(t->sizes() == sigmas.sizes() && t->scalar_type() == sigmas.scalar_type() && t->device().is_cpu(),
                op, ": t_starts and t_ends must be CPU ", sigmas.scalar_type(), " of shape ", sigmas.sizes(), ", got ",
                t->scalar_type(), " ", t->sizes(), " on ", t->device());
  TORCH_CHECK(packed_info.scalar_type() == at::kLong && packed_info.dim() == 2 && packed_info.size(1) == 2 &&
                  packed_info.device().is_cpu(),
              op, ": packed_info must be a CPU int64 tensor [R, 2], got ", packed_info.scalar_type(), " ",
              packed_info.sizes());
}

// The rays must tile [0, N) in order: every kernel writes each sample exactly once.
Rays checked_rays(const char* op, const at::Tensor& packed_info, int64_t n) {
  const Rays rays{packed_info.data_ptr<int64_t>(), packed_info.size(0)};
  int64_t next = 0;
  for (int64_t r = 0; r < rays.n_rays; ++r) {
    TORCH_CHECK(rays.start(r) == next && rays.count(r) >= 0, op, ": packed_info[", r, "] = (", rays.start(r), ", ",
                rays.count(r), ") must start at ", next, " (starts are the exclusive sum of counts >= 0)");
    next += rays.count(r);
  }
  TORCH_CHECK(next == n, op, ": packed_info counts sum to ", next, ", but there are ", n, " samples");
  return rays;
}

int64_t ray_grain(int64_t n, int64_t n_rays) {
  return std::max<int64_t>(1, kSamplesPerTask / std::max<int64_t>(1, n / std::max<int64_t>(1, n_rays)));
}

// ---- volume_render, float RGB with AVX-512: one 16-sample chunk per vector ----
//
// The scalar loop above carries T_{i+1} = T_i e_i from sample to sample, and its `omp simd` sums end
// in horizontal reductions every chunk. Here a chunk's transmittances come from an in-register
// prefix product (log2(16) = 4 lane shifts), its stop is the first lane with T < eps (a mask), and
// the sums stay in vector accumulators until the ray ends. The colors are summed interleaved: the
// 48 floats of a chunk's rgbs times each sample's weight repeated three times, folded into R, G, B
// once per ray. The backward needs no second pass over a ray: the sum of w_k v_k after sample i is
// the ray's total (known once its last chunk is done) minus the prefix through i, so grad_sigma is
// written with the prefix, and the total is subtracted in a sweep over the ray (in cache).
#ifdef __AVX512F__

// Lane j gets x[j - s]; lanes j < s get `fill`.
inline __m512i lane_indices() { return _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0); }

inline __m512 shift_up(__m512 x, int s, float fill) {
  const __m512i from = _mm512_sub_epi32(lane_indices(), _mm512_set1_epi32(s));
  const __mmask16 valid = static_cast<__mmask16>(0xFFFFu << s);
  return _mm512_mask_permutexvar_ps(_mm512_set1_ps(fill), valid, from, x);
}

inline __m512 inclusive_product(__m512 x) {
  for (int s = 1; s < 16; s <<= 1) x = _mm512_mul_ps(x, shift_up(x, s, 1.0f));
  return x;
}

inline __m512 inclusive_sum(__m512 x) {
  for (int s = 1; s < 16; s <<= 1) x = _mm512_add_ps(x, shift_up(x, s, 0.0f));
  return x;
}

// Lane j gets element 3 j + channel of the 48 interleaved floats x[0..2].
inline __m512 deinterleave3(const __m512 x[3], int channel) {
  const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(lane_indices(), _mm512_set1_epi32(3)),
                                       _mm512_set1_epi32(channel));
  const __m512 low = _mm512_permutex2var_ps(x[0], idx, x[1]);  // elements 0..31
  const __mmask16 high = _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(32));
  return _mm512_mask_permutexvar_ps(low, high, _mm512_sub_epi32(idx, _mm512_set1_epi32(32)), x[2]);
}

inline float lane(__m512 x, int64_t j) {
  return _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(static_cast<int32_t>(j)), x));
}

// exp_clamped on 16 lanes.
inline __m512 exp_clamped16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512i ki = _mm512_sub_epi32(
      _mm512_cvttps_epi32(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(128.5f))),
      _mm512_set1_epi32(128));
  const __m512 k = _mm512_cvtepi32_ps(ki);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ki, _mm512_set1_epi32(127)), 23));
  return _mm512_mul_ps(y, scale);
}

// Each of 16 lanes repeated three times: 48 lanes in three vectors, matching interleaved RGB.
struct Triple {
  __m512 v[3];
};

inline Triple repeat3(__m512 x) {
  Triple out;
  // (16 part + k) / 3 as (16 part + k) * 43 >> 7, exact below 48.
  for (int part = 0; part < 3; ++part) {
    const __m512i element = _mm512_add_epi32(lane_indices(), _mm512_set1_epi32(16 * part));
    out.v[part] = _mm512_permutexvar_ps(_mm512_srli_epi32(_mm512_mullo_epi32(element, _mm512_set1_epi32(43)), 7), x);
  }
  return out;
}

inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>(count <= 0 ? 0 : (1u << count) - 1u);
}

// One chunk of m <= 16 samples entered with transmittance `transmittance` (>= eps): e = exp(-tau),
// trans (before each sample), the inclusive product, and `active` (samples before the stop).
struct Chunk {
  __m512 e, trans, through, t0, t1;
  int64_t active;
};

inline Chunk chunk_transmittance(const char* op, const float* sigmas, const float* t_starts, const float* t_ends,
                                 int64_t base, int64_t m, float transmittance, float eps) {
  const __mmask16 in = first_lanes(m);
  Chunk c;
  const __m512 sigma = _mm512_maskz_loadu_ps(in, sigmas + base);
  c.t0 = _mm512_maskz_loadu_ps(in, t_starts + base);
  c.t1 = _mm512_maskz_loadu_ps(in, t_ends + base);
  const __m512 delta = _mm512_sub_ps(c.t1, c.t0);
  const __mmask16 good = _mm512_cmp_ps_mask(delta, _mm512_setzero_ps(), _CMP_GE_OQ) &
                         _mm512_cmp_ps_mask(sigma, sigma, _CMP_ORD_Q);
  const __m512 e = exp_clamped16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), sigma), delta));
  // Lanes past the chunk multiply by 1; bad samples are NaN, which stops the ray after them.
  c.e = _mm512_mask_blend_ps(in, _mm512_set1_ps(1.0f),
                             _mm512_mask_blend_ps(good, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()), e));
  const __m512 scale = _mm512_set1_ps(transmittance);
  c.through = _mm512_mul_ps(scale, inclusive_product(c.e));
  c.trans = shift_up(c.through, 1, transmittance);
  const __mmask16 going = _mm512_cmp_ps_mask(c.trans, _mm512_set1_ps(eps), _CMP_GE_OQ) & in;
  // The first lane that is not going (NaN compares false) ends the ray.
  c.active = std::min<int64_t>(m, __builtin_ctz(static_cast<uint32_t>(static_cast<uint16_t>(~going)) | 0x10000u));
  if (c.active > 0) {
    const int64_t last = c.active - 1;
    if (std::isnan(lane(c.e, last))) {
      const int64_t i = base + last;
      bad_sample(op, i, sigmas[i], t_starts[i], t_ends[i]);
    }
  }
  return c;
}

void render_forward_rgb_avx512(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                               Rays rays, int64_t n, float eps, float* __restrict colors,
                               float* __restrict opacities, float* __restrict depths) {
  at::parallel_for(0, rays.n_rays, ray_grain(n, rays.n_rays), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      __m512 opacity = _mm512_setzero_ps(), depth = _mm512_setzero_ps();
      __m512 color[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      float transmittance = 1.0f;
      const int64_t start = rays.start(r), stop = start + rays.count(r);
      for (int64_t base = start; base < stop && transmittance >= eps; base += 16) {
        const int64_t m = std::min<int64_t>(16, stop - base);
        const Chunk c = chunk_transmittance("volume_render", sigmas, t_starts, t_ends, base, m, transmittance, eps);
        const __m512 w = _mm512_maskz_mul_ps(first_lanes(c.active), c.trans,
                                             _mm512_sub_ps(_mm512_set1_ps(1.0f), c.e));
        opacity = _mm512_add_ps(opacity, w);
        depth = _mm512_fmadd_ps(w, _mm512_mul_ps(_mm512_add_ps(c.t0, c.t1), _mm512_set1_ps(0.5f)), depth);
        const Triple w3 = repeat3(w);
        for (int part = 0; part < 3; ++part) {
          const __m512 x = _mm512_maskz_loadu_ps(first_lanes(3 * c.active - 16 * part), rgbs + 3 * base + 16 * part);
          color[part] = _mm512_fmadd_ps(w3.v[part], x, color[part]);
        }
        transmittance = c.active == m ? lane(c.through, m - 1) : 0.0f;
      }
      alignas(64) float sums[48];
      for (int part = 0; part < 3; ++part) _mm512_store_ps(sums + 16 * part, color[part]);
      float rgb[3] = {0.0f, 0.0f, 0.0f};
      for (int k = 0; k < 48; ++k) rgb[k % 3] += sums[k];
      std::copy(rgb, rgb + 3, colors + 3 * r);
      opacities[r] = _mm512_reduce_add_ps(opacity);
      depths[r] = _mm512_reduce_add_ps(depth);
    }
  });
}

void render_backward_rgb_avx512(const float* grad_colors, const float* grad_opacities, const float* grad_depths,
                                const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                                Rays rays, int64_t n, float eps, float* __restrict grad_sigmas,
                                float* __restrict grad_rgbs) {
  at::parallel_for(0, rays.n_rays, ray_grain(n, rays.n_rays), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t start = rays.start(r), stop = start + rays.count(r);
      // The color gradient repeated per sample: lane k of part p is channel (16 p + k) % 3.
      Triple g3;
      for (int part = 0; part < 3; ++part) {
        alignas(64) float pattern[16];
        for (int k = 0; k < 16; ++k) pattern[k] = grad_colors[3 * r + (16 * part + k) % 3];
        g3.v[part] = _mm512_load_ps(pattern);
      }
      const __m512 g_opacity = _mm512_set1_ps(grad_opacities[r]), g_depth = _mm512_set1_ps(grad_depths[r]);
      float transmittance = 1.0f, prefix = 0.0f;
      int64_t reached = start;  // samples [start, reached) are before the stop
      for (int64_t base = start; base < stop && transmittance >= eps; base += 16) {
        const int64_t m = std::min<int64_t>(16, stop - base);
        const Chunk c = chunk_transmittance("volume_render_backward", sigmas, t_starts, t_ends, base, m,
                                            transmittance, eps);
        const __mmask16 live = first_lanes(c.active);
        const __m512 w = _mm512_maskz_mul_ps(live, c.trans, _mm512_sub_ps(_mm512_set1_ps(1.0f), c.e));
        const __m512 mid = _mm512_mul_ps(_mm512_add_ps(c.t0, c.t1), _mm512_set1_ps(0.5f));
        // v = gC . c + gO + gD mid, with the chunk's rgbs split into R, G, B lanes.
        const Triple w3 = repeat3(w);
        __m512 x[3];
        for (int part = 0; part < 3; ++part) {
          const __mmask16 valid = first_lanes(3 * c.active - 16 * part);
          x[part] = _mm512_maskz_loadu_ps(valid, rgbs + 3 * base + 16 * part);
          _mm512_mask_storeu_ps(grad_rgbs + 3 * base + 16 * part, valid, _mm512_mul_ps(w3.v[part], g3.v[part]));
        }
        __m512 v = _mm512_fmadd_ps(g_depth, mid, g_opacity);
        for (int channel = 0; channel < 3; ++channel)
          v = _mm512_fmadd_ps(_mm512_set1_ps(grad_colors[3 * r + channel]), deinterleave3(x, channel), v);
        const __m512 wv = _mm512_maskz_mul_ps(live, w, v);
        const __m512 through_prefix = _mm512_add_ps(_mm512_set1_ps(prefix), inclusive_sum(wv));
        // delta (T_{i+1} v + prefix_i); the ray's total times delta is subtracted below.
        const __m512 partial = _mm512_mul_ps(_mm512_sub_ps(c.t1, c.t0), _mm512_fmadd_ps(c.through, v, through_prefix));
        _mm512_mask_storeu_ps(grad_sigmas + base, live, partial);
        prefix = lane(through_prefix, 15);
        reached = base + c.active;
        transmittance = c.active == m ? lane(c.through, m - 1) : 0.0f;
      }
      const __m512 total = _mm512_set1_ps(prefix);
      for (int64_t base = start; base < reached; base += 16) {
        const __mmask16 live = first_lanes(reached - base);
        const __m512 delta = _mm512_sub_ps(_mm512_maskz_loadu_ps(live, t_ends + base),
                                           _mm512_maskz_loadu_ps(live, t_starts + base));
        const __m512 g = _mm512_maskz_loadu_ps(live, grad_sigmas + base);
        _mm512_mask_storeu_ps(grad_sigmas + base, live, _mm512_fnmadd_ps(delta, total, g));
      }
      std::fill(grad_sigmas + reached, grad_sigmas + stop, 0.0f);
      std::fill(grad_rgbs + 3 * reached, grad_rgbs + 3 * stop, 0.0f);
    }
  });
}

#endif  // __AVX512F__

// ---- volume_render_weights ----

template <typename T>
void weights_forward(const T* sigmas, const T* t_starts, const T* t_ends, Rays rays, int64_t n, T* weights,
                     T* trans, T* alphas) {
  at::parallel_for(0, rays.n_rays, ray_grain(n, rays.n_rays), [&](int64_t begin, int64_t end) {
    T e[kChunk];
    for (int64_t r = begin; r < end; ++r) {
      T transmittance = 1;
      const int64_t start = rays.start(r), stop = start + rays.count(r);
      for (int64_t base = start; base < stop; base += kChunk) {
        const int64_t n = std::min(kChunk, stop - base);
        survival_chunk(sigmas + base, t_starts + base, t_ends + base, n, e);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t i = base + j;
          if (std::isnan(e[j])) bad_sample("volume_render_weights", i, sigmas[i], t_starts[i], t_ends[i]);
          trans[i] = transmittance;
          alphas[i] = T(1) - e[j];
          weights[i] = transmittance * alphas[i];
          transmittance *= e[j];
        }
      }
    }
  });
}

// grad_sigma_i = delta_i (gw_i T_{i+1} + ga_i (1 - alpha_i) - sum_{k > i} (gw_k w_k + gT_k T_k)),
// walking each ray backwards with the sum so far.
template <typename T>
void weights_backward(const T* grad_weights, const T* grad_trans, const T* grad_alphas, const T* t_starts,
                      const T* t_ends, Rays rays, const T* weights, const T* trans, const T* alphas, int64_t n,
                      T* grad_sigmas) {
  at::parallel_for(0, rays.n_rays, ray_grain(n, rays.n_rays), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T later = 0;
      for (int64_t i = rays.start(r) + rays.count(r) - 1; i >= rays.start(r); --i) {
        const T survival = T(1) - alphas[i];
        grad_sigmas[i] = (t_ends[i] - t_starts[i]) *
                         (grad_weights[i] * trans[i] * survival + grad_alphas[i] * survival - later);
        later += grad_weights[i] * weights[i] + grad_trans[i] * trans[i];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volume_render_weights(const at::Tensor& sigmas,
                                                                     const at::Tensor& t_starts,
                                                                     const at::Tensor& t_ends,
                                                                     const at::Tensor& packed_info) {
  check_common("volume_render_weights", sigmas, t_starts, t_ends, packed_info);
  const at::Tensor info = packed_info.contiguous();
  const int64_t n = sigmas.size(0);
  const Rays rays = checked_rays("volume_render_weights", info, n);
  at::Tensor weights = empty_cached({n}, sigmas.options());
  at::Tensor trans = empty_cached({n}, sigmas.options()), alphas = empty_cached({n}, sigmas.options());
  if (n == 0) return {weights, trans, alphas};
  const at::Tensor s = sigmas.contiguous(), t0 = t_starts.contiguous(), t1 = t_ends.contiguous();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "volume_render_weights", [&] {
    weights_forward(s.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(), t1.data_ptr<scalar_t>(), rays, n,
                    weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>());
  });
  return {weights, trans, alphas};
}

at::Tensor volume_render_weights_backward(const at::Tensor& grad_weights, const at::Tensor& grad_trans,
                                          const at::Tensor& grad_alphas, const at::Tensor& t_starts,
                                          const at::Tensor& t_ends, const at::Tensor& packed_info,
                                          const at::Tensor& weights, const at::Tensor& trans,
                                          const at::Tensor& alphas) {
  check_common("volume_render_weights_backward", weights, t_starts, t_ends, packed_info);
  for (const at::Tensor* t : {&grad_weights, &grad_trans, &grad_alphas, &trans, &alphas})
    TORCH_CHECK(t->sizes() == weights.sizes() && t->scalar_type() == weights.scalar_type() && t->device().is_cpu(),
                "volume_render_weights_backward: gradients and saved outputs must be CPU ", weights.scalar_type(),
                " of shape ", weights.sizes(), ", got ", t->scalar_type(), " ", t->sizes());
  const at::Tensor info = packed_info.contiguous();
  const int64_t n = weights.size(0);
  const Rays rays = checked_rays("volume_render_weights_backward", info, n);
  at::Tensor grad_sigmas = empty_cached({n}, weights.options());
  if (n == 0) return grad_sigmas;
  const at::Tensor gw = grad_weights.contiguous(), gt = grad_trans.contiguous(), ga = grad_alphas.contiguous();
  const at::Tensor t0 = t_starts.contiguous(), t1 = t_ends.contiguous();
  const at::Tensor w = weights.contiguous(), tr = trans.contiguous(), al = alphas.contiguous();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "volume_render_weights_backward", [&] {
    weights_backward(gw.data_ptr<scalar_t>(), gt.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(),
                     t0.data_ptr<scalar_t>(), t1.data_ptr<scalar_t>(), rays, w.data_ptr<scalar_t>(),
                     tr.data_ptr<scalar_t>(), al.data_ptr<scalar_t>(), n, grad_sigmas.data_ptr<scalar_t>());
  });
  return grad_sigmas;
}

// ---- volume_render (fused compositing with early ray termination) ----

// Channels known at compile time (kC > 0, RGB's 3) unroll the per-sample color loop.
template <int kC>
struct Channels {
  int64_t value;
  int64_t operator()() const { return kC > 0 ? kC : value; }
};

// Per chunk of a ray: exp(-tau) with SIMD lanes, then the transmittances up to the stop (the only
// sequential part: a product), then the weighted sums over the chunk with SIMD lanes again.
template <typename T, int kC>
void render_forward(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends, Rays rays, int64_t n,
                    Channels<kC> channels, T eps, T* __restrict colors, T* __restrict opacities,
                    T* __restrict depths) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float> && kC == 3)
    return render_forward_rgb_avx512(sigmas, rgbs, t_starts, t_ends, rays, n, eps, colors, opacities, depths);
#endif
  const int64_t c = channels();
  at::parallel_for(0, rays.n_rays, ray_grain(n, rays.n_rays), [&](int64_t begin, int64_t end) {
    T e[kChunk], w[kChunk];
    std::vector<T> color(c);
    for (int64_t r = begin; r < end; ++r) {
      std::fill(color.begin(), color.end(), T(0));
      T transmittance = 1, opacity = 0, depth = 0, red = 0, green = 0, blue = 0;
      const int64_t start = rays.start(r), stop = start + rays.count(r);
      for (int64_t base = start; base < stop && transmittance >= eps; base += kChunk) {
        const int64_t m = std::min(kChunk, stop - base);
        survival_chunk(sigmas + base, t_starts + base, t_ends + base, m, e);
        int64_t active = 0;
        for (; active < m && transmittance >= eps; ++active) {
          if (std::isnan(e[active]))
            bad_sample("volume_render", base + active, sigmas[base + active], t_starts[base + active],
                       t_ends[base + active]);
          w[active] = transmittance * (T(1) - e[active]);
          transmittance *= e[active];
        }
        const T* t0 = t_starts + base;
        const T* t1 = t_ends + base;
        const T* rgb = rgbs + base * c;
        if constexpr (kC == 3) {
#pragma omp simd reduction(+ : opacity, depth, red, green, blue)
          for (int64_t j = 0; j < active; ++j) {
            opacity += w[j];
            depth += w[j] * (t0[j] + t1[j]) * T(0.5);
            red += w[j] * rgb[3 * j];
            green += w[j] * rgb[3 * j + 1];
            blue += w[j] * rgb[3 * j + 2];
          }
        } else {
          for (int64_t j = 0; j < active; ++j) {
            opacity += w[j];
            depth += w[j] * (t0[j] + t1[j]) * T(0.5);
            for (int64_t k = 0; k < c; ++k) color[k] += w[j] * rgb[j * c + k];
          }
        }
      }
      if constexpr (kC == 3) {
        color[0] = red;
        color[1] = green;
        color[2] = blue;
      }
      std::copy(color.begin(), color.end(), colors + r * c);
      opacities[r] = opacity;
      depths[r] = depth;
    }
  });
}

// Per ray: the forward pass again, keeping T_i and exp(-tau_i) of the samples it does not stop
// before (K of them), then from the last one back:
//   v_i = gC . c_i + gO + gD mid_i,  grad_rgb_i = w_i gC,  grad_sigma_i = delta_i (T_{i+1} v_i - later),
// later being sum_{k > i, k < K} w_k v_k. Samples from K on get zero gradients.
template <typename T, int kC>
void render_backward(const T* grad_colors, const T* grad_opacities, const T* grad_depths, const T* sigmas,
                     const T* rgbs, const T* t_starts, const T* t_ends, Rays rays, int64_t n, Channels<kC> channels,
                     T eps, T* __restrict grad_sigmas, T* __restrict grad_rgbs) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float> && kC == 3)
    return render_backward_rgb_avx512(grad_colors, grad_opacities, grad_depths, sigmas, rgbs, t_starts, t_ends,
                                      rays, n, eps, grad_sigmas, grad_rgbs);
#endif
  const int64_t c = channels();
  at::parallel_for(0, rays.n_rays, ray_grain(n, rays.n_rays), [&](int64_t begin, int64_t end) {
    std::vector<T> trans(1), survival;  // per-thread scratch: T_0..T_K and exp(-tau) of one ray
    for (int64_t r = begin; r < end; ++r) {
      const int64_t start = rays.start(r), count = rays.count(r);
      if (static_cast<int64_t>(survival.size()) < count) {
        survival.resize(count);
        trans.resize(count + 1);
      }
      T transmittance = 1;
      int64_t active = 0;
      for (int64_t base = 0; base < count && transmittance >= eps; base += kChunk) {
        const int64_t m = std::min(kChunk, count - base);
        survival_chunk(sigmas + start + base, t_starts + start + base, t_ends + start + base, m,
                       survival.data() + base);
        for (int64_t j = base; j < base + m && transmittance >= eps; ++j) {
          const int64_t i = start + j;
          if (std::isnan(survival[j])) bad_sample("volume_render_backward", i, sigmas[i], t_starts[i], t_ends[i]);
          trans[j] = transmittance;
          transmittance *= survival[j];
          active = j + 1;
        }
      }
      trans[active] = transmittance;
      const T* g = grad_colors + r * c;
      const T g_opacity = grad_opacities[r], g_depth = grad_depths[r];
      std::fill(grad_sigmas + start + active, grad_sigmas + start + count, T(0));
      std::fill(grad_rgbs + (start + active) * c, grad_rgbs + (start + count) * c, T(0));
      // Chunks from the ray's end: the per-sample terms with SIMD lanes, then the suffix sum `later`
      // (the only sequential part: kChunk adds), then grad_sigma with SIMD lanes.
      T later = 0;
      for (int64_t stop = active; stop > 0; stop -= kChunk) {
        const int64_t base = std::max<int64_t>(stop - kChunk, 0), m = stop - base, i0 = start + base;
        const T* tr = trans.data() + base;
        const T* e = survival.data() + base;
        const T* t0 = t_starts + i0;
        const T* t1 = t_ends + i0;
        const T* rgb = rgbs + i0 * c;
        T* grad_rgb = grad_rgbs + i0 * c;
        T v[kChunk], wv[kChunk], after[kChunk];
        if constexpr (kC == 3) {
          const T g0 = g[0], g1 = g[1], g2 = g[2];
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) {
            const T w = tr[j] * (T(1) - e[j]);
            v[j] = g_opacity + g_depth * (t0[j] + t1[j]) * T(0.5) + g0 * rgb[3 * j] + g1 * rgb[3 * j + 1] +
                   g2 * rgb[3 * j + 2];
            wv[j] = w * v[j];
            grad_rgb[3 * j] = w * g0;
            grad_rgb[3 * j + 1] = w * g1;
            grad_rgb[3 * j + 2] = w * g2;
          }
        } else {
          for (int64_t j = 0; j < m; ++j) {
            const T w = tr[j] * (T(1) - e[j]);
            v[j] = g_opacity + g_depth * (t0[j] + t1[j]) * T(0.5);
            for (int64_t k = 0; k < c; ++k) {
              v[j] += g[k] * rgb[j * c + k];
              grad_rgb[j * c + k] = w * g[k];
            }
            wv[j] = w * v[j];
          }
        }
        for (int64_t j = m - 1; j >= 0; --j) {
          after[j] = later;
          later += wv[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) grad_sigmas[i0 + j] = (t1[j] - t0[j]) * (tr[j + 1] * v[j] - after[j]);
      }
    }
  });
}

void check_render(const char* op, const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts,
                  const at::Tensor& t_ends, const at::Tensor& packed_info, double early_stop_eps) {
  check_common(op, sigmas, t_starts, t_ends, packed_info);
  TORCH_CHECK(rgbs.dim() == 2 && rgbs.size(0) == sigmas.size(0) && rgbs.scalar_type() == sigmas.scalar_type() &&
                  rgbs.device().is_cpu(),
              op, ": rgbs must be CPU ", sigmas.scalar_type(), " [N, C] with N = ", sigmas.size(0), ", got ",
              rgbs.scalar_type(), " ", rgbs.sizes());
  TORCH_CHECK(early_stop_eps >= 0, op, ": early_stop_eps must be >= 0, got ", early_stop_eps);
}

// Calls fn(Channels<3>{}) for RGB, else fn(Channels<0>{c}).
template <typename Fn>
void with_channels(int64_t c, Fn&& fn) {
  if (c == 3) {
    fn(Channels<3>{3});
  } else {
    fn(Channels<0>{c});
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volume_render(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                             const at::Tensor& t_starts, const at::Tensor& t_ends,
                                                             const at::Tensor& packed_info, double early_stop_eps) {
  check_render("volume_render", sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps);
  const at::Tensor info = packed_info.contiguous();
  const int64_t n = sigmas.size(0), c = rgbs.size(1);
  const Rays rays = checked_rays("volume_render", info, n);
  at::Tensor colors = at::empty({rays.n_rays, c}, sigmas.options());
  at::Tensor opacities = at::empty({rays.n_rays, 1}, sigmas.options());
  at::Tensor depths = at::empty({rays.n_rays, 1}, sigmas.options());
  if (rays.n_rays == 0) return {colors, opacities, depths};
  const at::Tensor s = sigmas.contiguous(), rgb = rgbs.contiguous();
  const at::Tensor t0 = t_starts.contiguous(), t1 = t_ends.contiguous();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "volume_render", [&] {
    with_channels(c, [&](auto channels) {
      render_forward(s.data_ptr<scalar_t>(), rgb.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(),
                     t1.data_ptr<scalar_t>(), rays, n, channels, static_cast<scalar_t>(early_stop_eps),
                     colors.data_ptr<scalar_t>(), opacities.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>());
    });
  });
  return {colors, opacities, depths};
}

std::tuple<at::Tensor, at::Tensor> volume_render_backward(const at::Tensor& grad_colors,
                                                          const at::Tensor& grad_opacities,
                                                          const at::Tensor& grad_depths, const at::Tensor& sigmas,
                                                          const at::Tensor& rgbs, const at::Tensor& t_starts,
                                                          const at::Tensor& t_ends, const at::Tensor& packed_info,
                                                          double early_stop_eps) {
  check_render("volume_render_backward", sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps);
  const int64_t n_rays = packed_info.size(0), c = rgbs.size(1);
  const auto expect = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.sizes() == shape && t.scalar_type() == sigmas.scalar_type() && t.device().is_cpu(),
                "volume_render_backward: ", name, " must be CPU ", sigmas.scalar_type(), " of shape ", shape,
                ", got ", t.scalar_type(), " ", t.sizes());
  };
  expect(grad_colors, {n_rays, c}, "grad_colors");
  expect(grad_opacities, {n_rays, 1}, "grad_opacities");
  expect(grad_depths, {n_rays, 1}, "grad_depths");
  const at::Tensor info = packed_info.contiguous();
  const int64_t n = sigmas.size(0);
  const Rays rays = checked_rays("volume_render_backward", info, n);
  // Per-sample outputs (multi-MiB) from the cache of written buffers: no page faults per step.
  at::Tensor grad_sigmas = empty_cached({n}, sigmas.options());
  at::Tensor grad_rgbs = empty_cached({n, c}, sigmas.options());
  if (n == 0) return {grad_sigmas, grad_rgbs};
  const at::Tensor gc = grad_colors.contiguous(), go = grad_opacities.contiguous(), gd = grad_depths.contiguous();
  const at::Tensor s = sigmas.contiguous(), rgb = rgbs.contiguous();
  const at::Tensor t0 = t_starts.contiguous(), t1 = t_ends.contiguous();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "volume_render_backward", [&] {
    with_channels(c, [&](auto channels) {
      render_backward(gc.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(),
                      s.data_ptr<scalar_t>(), rgb.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(),
                      t1.data_ptr<scalar_t>(), rays, n, channels, static_cast<scalar_t>(early_stop_eps),
                      grad_sigmas.data_ptr<scalar_t>(), grad_rgbs.data_ptr<scalar_t>());
    });
  });
  return {grad_sigmas, grad_rgbs};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) {
  m.impl("volume_render_weights", TORCH_FN(volume_render_weights));
  m.impl("volume_render_weights_backward", TORCH_FN(volume_render_weights_backward));
  m.impl("volume_render", TORCH_FN(volume_render));
  m.impl("volume_render_backward", TORCH_FN(volume_render_backward));
}

}  // namespace fastgen
