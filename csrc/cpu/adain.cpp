// Fused AdaIN on the CPU: forward and backward, one pass over memory per (n, c) plane.
//
// A 4-D tensor is seen as N x C planes of M = H*W elements. Work is split into
// blocks of channels of one sample, run in parallel with at::parallel_for. Each
// block is read from memory once; its planes then stay in L1/L2 for the two
// statistics passes and the output pass. NCHW float/double blocks are used in
// place; other layouts (channels_last) and half types are gathered into a small
// contiguous float buffer first, so every inner loop is a unit-stride, vectorized
// loop over one plane.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <type_traits>

#include "accumulate.h"
#include "output_cache.h"

namespace fastgen {
namespace {

// ---- Unit-stride loops over one plane (auto-vectorized with -O3 and omp simd) ----

template <typename A>
A plane_sum(const A* x, int64_t m) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < m; ++i) s += x[i];
  return s;
}

// Centered second pass: sum((x - mean)^2) does not cancel like E[x^2] - E[x]^2.
template <typename A>
A plane_centered_sq_sum(const A* x, int64_t m, A mean) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < m; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

// sum(g) and sum(g * (x - mean)), for the backward.
template <typename A>
void plane_grad_sums(const A* g, const A* x, int64_t m, A mean, A& sum_g, A& sum_gx) {
  A sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t i = 0; i < m; ++i) {
    sg += g[i];
    sgx += g[i] * (x[i] - mean);
  }
  sum_g = sg;
  sum_gx = sgx;
}

#if defined(__AVX512F__)
// float reductions with four independent accumulators: one accumulator chains every
// add on the previous one and runs at the add latency, 4x slower than the loads.
inline __mmask16 tail_mask(int64_t remaining) {
  return static_cast<__mmask16>((1u << remaining) - 1u);
}

inline float plane_sum(const float* x, int64_t m) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= m; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(x + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(x + i + 48));
  }
  for (; i + 16 <= m; i += 16) a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
  if (i < m) a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(tail_mask(m - i), x + i));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

inline float plane_centered_sq_sum(const float* x, int64_t m, float mean) {
  const __m512 mu = _mm512_set1_ps(mean);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= m; i += 64) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), mu);
    const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mu);
    const __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 32), mu);
    const __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 48), mu);
    a0 = _mm512_fmadd_ps(d0, d0, a0);
    a1 = _mm512_fmadd_ps(d1, d1, a1);
    a2 = _mm512_fmadd_ps(d2, d2, a2);
    a3 = _mm512_fmadd_ps(d3, d3, a3);
  }
  for (; i + 16 <= m; i += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), mu);
    a0 = _mm512_fmadd_ps(d, d, a0);
  }
  if (i < m) {
    const __mmask16 k = tail_mask(m - i);
    const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + i), mu);
    a1 = _mm512_fmadd_ps(d, d, a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

inline void plane_grad_sums(const float* g, const float* x, int64_t m, float mean, float& sum_g,
                            float& sum_gx) {
  const __m512 mu = _mm512_set1_ps(mean);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, t0 = s0, t1 = s0;
  int64_t i = 0;
  for (; i + 32 <= m; i += 32) {
    const __m512 g0 = _mm512_loadu_ps(g + i), g1 = _mm512_loadu_ps(g + i + 16);
    s0 = _mm512_add_ps(s0, g0);
    s1 = _mm512_add_ps(s1, g1);
    t0 = _mm512_fmadd_ps(g0, _mm512_sub_ps(_mm512_loadu_ps(x + i), mu), t0);
    t1 = _mm512_fmadd_ps(g1, _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mu), t1);
  }
  for (; i < m; i += 16) {
    const __mmask16 k = m - i >= 16 ? __mmask16(0xFFFF) : tail_mask(m - i);
    const __m512 gv = _mm512_maskz_loadu_ps(k, g + i);
    s0 = _mm512_add_ps(s0, gv);
    t0 = _mm512_fmadd_ps(gv, _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + i), mu), t0);
  }
  sum_g = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  sum_gx = _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
}
#endif

// y = (x - center) * scale + shift
template <typename A>
void plane_affine(const A* x, A* y, int64_t m, A center, A scale, A shift) {
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) y[i] = (x[i] - center) * scale + shift;
}

// Outputs larger than the caches are written with non-temporal stores: the lines
// bypass the caches, so the destination is not read first (no read-for-ownership).
constexpr int64_t kStreamingBytes = int64_t(16) << 20;

inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 64 != 0; ++i) dst[i] = src[i];
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__AVX__)
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 32 != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

inline void stream_copy(double* dst, const double* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 64 != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= n; i += 8) _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
#elif defined(__AVX__)
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 32 != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// Writes y[0, m) with compute(out, begin, len) filling out[0, len) with y[begin, begin+len):
// directly, or through an L1-sized buffer and streaming stores.
template <typename A, typename F>
void write_plane(A* y, int64_t m, bool streaming, const F& compute) {
  if (!streaming) {
    compute(y, 0, m);
    return;
  }
  constexpr int64_t kChunk = 1024;
  alignas(64) A buffer[kChunk];
  for (int64_t begin = 0; begin < m; begin += kChunk) {
    const int64_t len = std::min(kChunk, m - begin);
    compute(buffer, begin, len);
    stream_copy(y + begin, buffer, len);
  }
}

// The forward's output loop with streaming stores straight from registers: no trip through
// write_plane's buffer on the hottest path (float NCHW, the common case).
template <typename A>
void plane_affine_streaming(const A* x, A* y, int64_t m, A center, A scale, A shift) {
  write_plane(y, m, true, [&](A* out_chunk, int64_t begin, int64_t len) {
    plane_affine(x + begin, out_chunk, len, center, scale, shift);
  });
}

#if defined(__AVX512F__)
template <>
void plane_affine_streaming<float>(const float* x, float* y, int64_t m, float center, float scale, float shift) {
  int64_t i = 0;
  for (; i < m && reinterpret_cast<uintptr_t>(y + i) % 64 != 0; ++i) y[i] = (x[i] - center) * scale + shift;
  const __m512 c = _mm512_set1_ps(center), k = _mm512_set1_ps(scale), b = _mm512_set1_ps(shift);
  for (; i + 16 <= m; i += 16)
    _mm512_stream_ps(y + i, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), c), k, b));
  for (; i < m; ++i) y[i] = (x[i] - center) * scale + shift;
}
#endif

template <typename A>
struct Moments {
  A mean;
  A var;
};

template <typename A>
Moments<A> plane_moments(const A* x, int64_t m) {
  const A mean = plane_sum(x, m) / static_cast<A>(m);
  return {mean, plane_centered_sq_sum(x, m, mean) / static_cast<A>(m)};
}

// ---- Layout: where element (n, c, i) of a plane lives ----

template <typename T>
struct Planes {
  T* data;
  int64_t m, sn, sc, si;  // plane size and strides of n, c and the in-plane index
};

bool has_kernel_layout(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Canonical strides (size-1 dims may carry any stride, so read the layout, not the strides).
template <typename T>
Planes<T> planes_of(const at::Tensor& t) {
  const int64_t c = t.size(1), m = t.size(2) * t.size(3);
  T* data = static_cast<T*>(t.data_ptr());
  if (t.is_contiguous()) return {data, m, c * m, m, 1};
  TORCH_INTERNAL_ASSERT(t.is_contiguous(at::MemoryFormat::ChannelsLast));
  return {data, m, c * m, 1, c};
}

template <typename T>
constexpr bool in_place(const Planes<T>& p) {
  return std::is_same_v<std::remove_const_t<T>, acc_t<std::remove_const_t<T>>> && p.si == 1;
}

// Planes (n, c0 .. c0+cb) as cb contiguous rows of m accumulation-typed values:
// the tensor's own memory when possible, else a converted (and transposed) copy.
template <typename T, typename A = acc_t<T>>
const A* load_block(const Planes<const T>& p, int64_t n, int64_t c0, int64_t cb, A* scratch) {
  const T* base = p.data + n * p.sn + c0 * p.sc;
  if constexpr (std::is_same_v<T, A>) {
    if (p.si == 1) return base;
  }
  if (p.si == 1) {
    for (int64_t j = 0; j < cb; ++j)
      for (int64_t i = 0; i < p.m; ++i) scratch[j * p.m + i] = static_cast<A>(base[j * p.sc + i]);
  } else {  // channels_last: a block is m rows of cb contiguous channels
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < cb; ++j) scratch[j * p.m + i] = static_cast<A>(base[i * p.si + j]);
  }
  return scratch;
}

// Where a kernel writes planes (n, c0 ..): the output itself when possible, else scratch
// that store_block copies out.
template <typename T, typename A = acc_t<T>>
A* block_target(const Planes<T>& p, int64_t n, int64_t c0, A* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    if (p.si == 1) return p.data + n * p.sn + c0 * p.sc;
  }
  return scratch;
}

template <typename T, typename A = acc_t<T>>
void store_block(const Planes<T>& p, int64_t n, int64_t c0, int64_t cb, const A* src) {
  T* base = p.data + n * p.sn + c0 * p.sc;
  if (static_cast<const void*>(src) == static_cast<const void*>(base)) return;
  if (p.si == 1) {
    for (int64_t j = 0; j < cb; ++j)
      for (int64_t i = 0; i < p.m; ++i) base[j * p.sc + i] = static_cast<T>(src[j * p.m + i]);
  } else {
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < cb; ++j) base[i * p.si + j] = static_cast<T>(src[j * p.m + i]);
  }
}

// Runs body(n, c0, cb, scratch) over channel blocks of every sample, in parallel.
// In-place blocks are single planes; gathered blocks hold as many channels as fit
// `buffers` planes of scratch in about 256 KiB each, so they stay in L2. Threads take
// chunks of ~16k elements from a shared counter rather than a fixed half each: on a
// small shared machine one thread often runs late, and the other picks up its work.
template <typename A, typename Body>
void for_each_block(int64_t n, int64_t c, int64_t m, bool all_in_place, int64_t buffers, const Body& body) {
  constexpr int64_t kScratchBytesPerBuffer = 256 * 1024;
  const int64_t cb = all_in_place
      ? 1
      : std::clamp<int64_t>(kScratchBytesPerBuffer / (m * static_cast<int64_t>(sizeof(A))), 1, c);
  const int64_t blocks_per_sample = (c + cb - 1) / cb;
  const int64_t tasks = n * blocks_per_sample;
  const int64_t chunk = std::max<int64_t>(1, 16384 / (cb * m));
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), (tasks + chunk - 1) / chunk);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    std::unique_ptr<A[]> scratch(new A[buffers * cb * m]);  // small when in place: cb == 1
    for (int64_t begin; (begin = next.fetch_add(chunk)) < tasks;) {
      for (int64_t task = begin; task < std::min(begin + chunk, tasks); ++task) {
        const int64_t s = task / blocks_per_sample, c0 = (task % blocks_per_sample) * cb;
        body(s, c0, std::min(cb, c - c0), scratch.get());
      }
    }
#if defined(__SSE2__)
    _mm_sfence();  // order this thread's streaming stores before the parallel region ends
#endif
  });
}

// ---- Kernels ----

// Per plane of `style`: mean and sqrt(var + eps), into [N*C] accumulation-typed arrays.
template <typename T, typename A = acc_t<T>>
void style_stats_kernel(const at::Tensor& style, A* mean, A* stdev, double eps) {
  const int64_t n = style.size(0), c = style.size(1);
  const auto sp = planes_of<const T>(style);
  for_each_block<A>(n, c, sp.m, in_place(sp), 1, [&](int64_t s, int64_t c0, int64_t cb, A* scratch) {
    const A* x = load_block(sp, s, c0, cb, scratch);
    for (int64_t j = 0; j < cb; ++j) {
      const Moments<A> mo = plane_moments(x + j * sp.m, sp.m);
      mean[s * c + c0 + j] = mo.mean;
      stdev[s * c + c0 + j] = std::sqrt(mo.var + static_cast<A>(eps));
    }
  });
}

// The forward over blocks. Style statistics come from [N*C] arrays, or from `style` itself,
// whose block is read in the same task as the content block: one pass over both maps.
template <typename T, typename A = acc_t<T>>
void adain_forward_kernel(const at::Tensor& content, const A* style_mean, const A* style_std,
                          const at::Tensor* style, const at::Tensor& out, double eps) {
  const int64_t n = content.size(0), c = content.size(1);
  const auto xp = planes_of<const T>(content);
  const auto sp = style != nullptr ? planes_of<const T>(*style) : xp;
  const auto yp = planes_of<T>(out);
  const bool direct = in_place(xp) && in_place(yp) && (style == nullptr || in_place(sp));
  const bool streaming = direct && out.nbytes() >= kStreamingBytes;
  const int64_t width = std::max(xp.m, sp.m);  // scratch row length that fits either map
  for_each_block<A>(n, c, width, direct, 3, [&](int64_t s, int64_t c0, int64_t cb, A* scratch) {
    const int64_t m = xp.m;
    const A* x = load_block(xp, s, c0, cb, scratch);
    A* y = block_target(yp, s, c0, scratch + cb * width);
    const A* st = style != nullptr ? load_block(sp, s, c0, cb, scratch + 2 * cb * width) : nullptr;
    for (int64_t j = 0; j < cb; ++j) {
      const int64_t k = s * c + c0 + j;
      A mean_y, std_y;
      if (st != nullptr) {
        const Moments<A> ms = plane_moments(st + j * sp.m, sp.m);
        mean_y = ms.mean;
        std_y = std::sqrt(ms.var + static_cast<A>(eps));
      } else {
        mean_y = style_mean[k];
        std_y = style_std[k];
      }
      const A* xj = x + j * m;
      const Moments<A> mo = plane_moments(xj, m);
      const A scale = std_y / std::sqrt(mo.var + static_cast<A>(eps));
      if (streaming) {
        plane_affine_streaming(xj, y + j * m, m, mo.mean, scale, mean_y);
      } else {
        plane_affine(xj, y + j * m, m, mo.mean, scale, mean_y);
      }
    }
    store_block(yp, s, c0, cb, y);
  });
}

// dx = k * (g - sum(g)/M) + k2 * (x - mean), with k = std_y * rstd and
// k2 = -k * rstd^2 * sum(g * (x - mean)) / M; also returns d mean_y, d std_y per plane.
template <typename T, typename A = acc_t<T>>
void adain_backward_kernel(const at::Tensor& grad_out, const at::Tensor& content, const A* style_std,
                           const at::Tensor& grad_content, A* grad_mean, A* grad_std, double eps) {
  const int64_t n = content.size(0), c = content.size(1);
  const auto gp = planes_of<const T>(grad_out);
  const auto xp = planes_of<const T>(content);
  const auto dxp = planes_of<T>(grad_content);
  const bool direct = in_place(gp) && in_place(xp) && in_place(dxp);
  const bool streaming = direct && grad_content.nbytes() >= kStreamingBytes;
  for_each_block<A>(n, c, xp.m, direct, 3, [&](int64_t s, int64_t c0, int64_t cb, A* scratch) {
    const int64_t m = xp.m;
    const A* g = load_block(gp, s, c0, cb, scratch);
    const A* x = load_block(xp, s, c0, cb, scratch + cb * m);
    A* dx = block_target(dxp, s, c0, scratch + 2 * cb * m);
    for (int64_t j = 0; j < cb; ++j) {
      const int64_t k = s * c + c0 + j;
      const A* gj = g + j * m;
      const A* xj = x + j * m;
      A* dxj = dx + j * m;
      const Moments<A> mo = plane_moments(xj, m);
      const A mean = mo.mean;
      const A rstd = A(1) / std::sqrt(mo.var + static_cast<A>(eps));
      A sum_g, sum_gx;
      plane_grad_sums(gj, xj, m, mean, sum_g, sum_gx);
      const A inv_m = A(1) / static_cast<A>(m);
      const A scale = style_std[k] * rstd;
      const A k2 = -scale * rstd * rstd * sum_gx * inv_m;
      const A g_mean = sum_g * inv_m;
      write_plane(dxj, m, streaming, [&](A* out_chunk, int64_t begin, int64_t len) {
        const A* gb = gj + begin;
        const A* xb = xj + begin;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) out_chunk[i] = scale * (gb[i] - g_mean) + k2 * (xb[i] - mean);
      });
      grad_mean[k] = sum_g;
      grad_std[k] = sum_gx * rstd;
    }
    store_block(dxp, s, c0, cb, dx);
  });
}

// d style = (d mean_y + d std_y * (s - mean_s) / std_s) / M_s, an affine map of each style plane.
template <typename T, typename A = acc_t<T>>
void style_backward_kernel(const at::Tensor& style, const A* mean, const A* stdev, const A* grad_mean,
                           const A* grad_std, const at::Tensor& grad_style) {
  const int64_t n = style.size(0), c = style.size(1);
  const auto sp = planes_of<const T>(style);
  const auto dsp = planes_of<T>(grad_style);
  const bool direct = in_place(sp) && in_place(dsp);
  const bool streaming = direct && grad_style.nbytes() >= kStreamingBytes;
  for_each_block<A>(n, c, sp.m, direct, 2, [&](int64_t s, int64_t c0, int64_t cb, A* scratch) {
    const int64_t m = sp.m;
    const A* x = load_block(sp, s, c0, cb, scratch);
    A* dx = block_target(dsp, s, c0, scratch + cb * m);
    const A inv_m = A(1) / static_cast<A>(m);
    for (int64_t j = 0; j < cb; ++j) {
      const int64_t k = s * c + c0 + j;
      const A* xj = x + j * m;
      const A scale = grad_std[k] / stdev[k] * inv_m;
      write_plane(dx + j * m, m, streaming, [&](A* out_chunk, int64_t begin, int64_t len) {
        plane_affine(xj + begin, out_chunk, len, mean[k], scale, grad_mean[k] * inv_m);
      });
    }
    store_block(dsp, s, c0, cb, dx);
  });
}

// ---- Torch-facing wrappers ----

void check_feature_map(const char* name, const at::Tensor& t, const at::Tensor& content) {
  TORCH_CHECK(t.dim() == 4, name, " must be a 4-D [N, C, H, W] tensor, got ", t.dim(), " dims");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == content.scalar_type(), name, " must have dtype ", content.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.size(0) == content.size(0) && t.size(1) == content.size(1), name,
              " must have the N and C of content");
  TORCH_CHECK(t.numel() > 0, name, " must not be empty");
}

void check_style_vector(const char* name, const at::Tensor& t, const at::Tensor& content) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == content.size(0) && t.size(1) == content.size(1), name,
              " must have shape [N, C] = [", content.size(0), ", ", content.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == content.scalar_type(), name,
              " must be a CPU tensor of dtype ", content.scalar_type());
}

void check_eps(double eps) {
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
}

at::Tensor kernel_layout(const at::Tensor& t) {
  return has_kernel_layout(t) ? t : t.contiguous();
}

// Outputs keep the layout of empty_like(input); a dense layout other than NCHW or
// channels_last is computed contiguously and copied over.
template <typename F>
void write_into(const at::Tensor& out, const F& compute) {
  if (has_kernel_layout(out)) {
    compute(out);
  } else {
    at::Tensor tmp = empty_cached(out.sizes(), out.options());
    compute(tmp);
    out.copy_(tmp);
  }
}

at::ScalarType acc_type_of(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor adain_fwd(const at::Tensor& content, const at::Tensor& style_mean, const at::Tensor& style_std,
                     double eps) {
  check_feature_map("content", content, content);
  check_style_vector("style_mean", style_mean, content);
  check_style_vector("style_std", style_std, content);
  check_eps(eps);
  const at::Tensor x = kernel_layout(content);
  const at::Tensor mean_y = style_mean.to(acc_type_of(content)).contiguous();
  const at::Tensor std_y = style_std.to(acc_type_of(content)).contiguous();
  at::Tensor out = empty_like_cached(content);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_fwd", [&] {
    using A = acc_t<scalar_t>;
    write_into(out, [&](const at::Tensor& o) {
      adain_forward_kernel<scalar_t>(x, mean_y.data_ptr<A>(), std_y.data_ptr<A>(), nullptr, o, eps);
    });
  });
  return out;
}

at::Tensor adain_from_style_fwd(const at::Tensor& content, const at::Tensor& style, double eps) {
  check_feature_map("content", content, content);
  check_feature_map("style", style, content);
  check_eps(eps);
  const at::Tensor x = kernel_layout(content), s = kernel_layout(style);
  at::Tensor out = empty_like_cached(content);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_from_style_fwd", [&] {
    using A = acc_t<scalar_t>;
    write_into(out, [&](const at::Tensor& o) {
      adain_forward_kernel<scalar_t, A>(x, nullptr, nullptr, &s, o, eps);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_bwd(const at::Tensor& grad_out, const at::Tensor& content,
                                                         const at::Tensor& style_mean,
                                                         const at::Tensor& style_std, double eps) {
  check_feature_map("content", content, content);
  check_feature_map("grad_out", grad_out, content);
  TORCH_CHECK(grad_out.sizes() == content.sizes(), "grad_out must have the shape of content");
  check_style_vector("style_mean", style_mean, content);
  check_style_vector("style_std", style_std, content);
  check_eps(eps);
  const at::Tensor g = kernel_layout(grad_out), x = kernel_layout(content);
  const at::Tensor std_y = style_std.to(acc_type_of(content)).contiguous();
  at::Tensor grad_content = empty_like_cached(content);
  at::Tensor grad_mean = at::empty_like(std_y), grad_std = at::empty_like(std_y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_bwd", [&] {
    using A = acc_t<scalar_t>;
    write_into(grad_content, [&](const at::Tensor& o) {
      adain_backward_kernel<scalar_t>(g, x, std_y.data_ptr<A>(), o, grad_mean.data_ptr<A>(),
                                      grad_std.data_ptr<A>(), eps);
    });
  });
  return {grad_content, grad_mean.to(style_mean.scalar_type()), grad_std.to(style_std.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> adain_from_style_bwd(const at::Tensor& grad_out, const at::Tensor& content,
                                                        const at::Tensor& style, double eps) {
  check_feature_map("content", content, content);
  check_feature_map("grad_out", grad_out, content);
  TORCH_CHECK(grad_out.sizes() == content.sizes(), "grad_out must have the shape of content");
  check_feature_map("style", style, content);
  check_eps(eps);
  const at::Tensor g = kernel_layout(grad_out), x = kernel_layout(content), s = kernel_layout(style);
  const auto acc_opts = content.options().dtype(acc_type_of(content));
  at::Tensor mean_s = at::empty({content.size(0), content.size(1)}, acc_opts);
  at::Tensor std_s = at::empty_like(mean_s), grad_mean = at::empty_like(mean_s), grad_std = at::empty_like(mean_s);
  at::Tensor grad_content = empty_like_cached(content), grad_style = empty_like_cached(style);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_from_style_bwd", [&] {
    using A = acc_t<scalar_t>;
    style_stats_kernel<scalar_t>(s, mean_s.data_ptr<A>(), std_s.data_ptr<A>(), eps);
    write_into(grad_content, [&](const at::Tensor& o) {
      adain_backward_kernel<scalar_t>(g, x, std_s.data_ptr<A>(), o, grad_mean.data_ptr<A>(),
                                      grad_std.data_ptr<A>(), eps);
    });
    write_into(grad_style, [&](const at::Tensor& o) {
      style_backward_kernel<scalar_t>(s, mean_s.data_ptr<A>(), std_s.data_ptr<A>(), grad_mean.data_ptr<A>(),
                                      grad_std.data_ptr<A>(), o);
    });
  });
  return {grad_content, grad_style};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) {
  m.impl("adain_fwd", &adain_fwd);
  m.impl("adain_bwd", &adain_bwd);
  m.impl("adain_from_style_fwd", &adain_from_style_fwd);
  m.impl("adain_from_style_bwd", &adain_from_style_bwd);
}

}  // namespace fastgen
