// Eigenvalues (no vectors) of a dense symmetric matrix, by a two-stage tridiagonal reduction:
//
//   1. dense -> band of bandwidth kBand: Householder QR of each kBand-wide panel below the band and
//      a two-sided compact-WY update of the trailing matrix, all in MKL gemms on tensor views
//      (the one-stage reduction spends half its flops in memory-bound matrix-vector products);
//   2. band -> tridiagonal by bulge chasing with reflectors of length kBand on a packed band that
//      stays in cache, sweeps pipelined over the threads;
//   3. eigenvalues of the tridiagonal by root-free (Pal-Walker-Kahan) implicit QL.
//
// Only the lower triangle of the input is read. A matrix whose largest entry is outside
// [2^-200, 2^200] is first scaled by a power of two (exact), which keeps the squares of stage 1
// and the products of stage 3 far from overflow and underflow without guarded norms.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "output_cache.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fastgen {
namespace {

// Bandwidth of stage 1. Stage 1's gemms get more efficient with a wider band, stage 2's cost
// grows linearly with it (6 n^2 b flops).
constexpr int64_t kBand = 32;
// Row blocks of stage 1's symmetric products (a multiple of kBand). The blocks are aligned to
// absolute indices so that their diagonal squares, kept full, stay full as the trailing matrix
// shrinks by kBand rows per panel.
constexpr int64_t kRowBlock = 256;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// Spins until counter >= target; yields after a while, as the thread it waits for may have lost
// its core.
void wait_until(const std::atomic<int64_t>& counter, int64_t target) {
  for (int64_t spins = 0; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

// With a single vector accumulator a long dot product waits on the latency of each add: keep
// kDotLanes partial sums (four AVX-512 registers).
constexpr int64_t kDotLanes = 32;

inline double dot(const double* x, const double* y, int64_t len) {
  double partial[kDotLanes] = {};
  int64_t i = 0;
  for (; i + kDotLanes <= len; i += kDotLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kDotLanes; ++k) partial[k] += x[i + k] * y[i + k];
  }
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < kDotLanes; ++k) s += partial[k];
#pragma omp simd reduction(+ : s)
  for (int64_t k = i; k < len; ++k) s += x[k] * y[k];
  return s;
}

inline void axpy(double alpha, const double* x, double* y, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) y[i] += alpha * x[i];
}

// Householder reflector H = I - tau v v^T with H x = beta e_1, v[0] = 1. On return x holds
// (beta, v[1:]). The caller's scaling keeps |x| far from overflow and underflow.
double make_reflector(double* x, int64_t len) {
  const double tail = dot(x + 1, x + 1, len - 1);
  if (tail == 0) return 0;
  const double alpha = x[0];
  const double beta = -std::copysign(std::sqrt(alpha * alpha + tail), alpha);
  const double scale = 1 / (alpha - beta);
#pragma omp simd
  for (int64_t i = 1; i < len; ++i) x[i] *= scale;
  x[0] = beta;
  return (beta - alpha) / beta;
}

// ---------------------------------------------------------------------------------------------
// Stage 1: dense -> band.

// Below this many rows a panel QR is not worth a second thread.
constexpr int64_t kParallelQrRows = 256;

// Householder QR of the panel P (m x b) held transposed in vt (row j = column j of P, b x m
// view with unit stride along m). On return row j holds the reflector v_j (explicit: zeros
// before j, 1 at j), r (b x b) holds R and t (b x b) the upper triangular T of
// Q = H_0 ... H_{b-1} = I - V T V^T.
//
// Column-wise (the panel stays in L2) and multithreaded by columns: thread s owns the columns
// l = s mod shares, applies each reflector to them and, when it owns column j + 1, computes
// reflector j + 1 as soon as H_j is applied to that column; `published` counts the reflectors
// ready for the others.
void panel_qr(const at::Tensor& vt, at::Tensor& r, at::Tensor& t) {
  const int64_t b = vt.size(0), m = vt.size(1), ld = vt.stride(0);
  double* pt = vt.data_ptr<double>();
  std::vector<double> tau(b, 0.0);
  auto reflect = [&](int64_t j) {
    if (j < m - 1) tau[j] = make_reflector(pt + j * ld + j, m - j);
  };
  auto apply = [&](int64_t j, int64_t l) {  // H_j to column l, v_j[0] = 1 implicit
    if (tau[j] == 0) return;
    const double* v = pt + j * ld + j;
    double* y = pt + l * ld + j;
    const int64_t len = m - j;
    const double h = tau[j] * (y[0] + dot(v + 1, y + 1, len - 1));
    y[0] -= h;
    axpy(-h, v + 1, y + 1, len - 1);
  };
  const int64_t steps = std::min(b, m - 1);  // reflectors that can be nontrivial
  const int64_t shares = m >= kParallelQrRows ? std::min<int64_t>(at::get_num_threads(), b) : 1;
  std::atomic<int64_t> published{0};
  at::parallel_for(0, shares, 1, [&](int64_t share_begin, int64_t share_end) {
    auto owns = [&](int64_t l) { return l % shares >= share_begin && l % shares < share_end; };
    if (owns(0) && steps > 0) {
      reflect(0);
      published.store(1, std::memory_order_release);
    }
    for (int64_t j = 0; j < steps; ++j) {
      wait_until(published, j + 1);
      for (int64_t l = j + 1; l < b; ++l) {
        if (!owns(l)) continue;
        apply(j, l);
        if (l == j + 1 && l < steps) {
          reflect(l);
          published.store(l + 1, std::memory_order_release);
        }
      }
    }
  });
  double* rp = r.data_ptr<double>();
  std::fill(rp, rp + b * b, 0.0);
  for (int64_t j = 0; j < b; ++j) {
    double* row = pt + j * ld;
    for (int64_t i = 0; i <= j && i < m; ++i) rp[i * b + j] = row[i];
    std::fill(row, row + std::min(j, m), 0.0);
    if (j < m) row[j] = 1;
  }
  // T by the forward recurrence T[:j, j] = -tau_j T[:j, :j] G[:j, j], T[j, j] = tau_j, from the
  // Gram matrix G = V^T V.
  const at::Tensor gram = at::mm(vt, vt.t());
  const double* g = gram.const_data_ptr<double>();
  double* tp = t.data_ptr<double>();
  std::fill(tp, tp + b * b, 0.0);
  for (int64_t j = 0; j < b; ++j) {
    tp[j * b + j] = tau[j];
    if (tau[j] == 0) continue;
    for (int64_t i = 0; i < j; ++i) {
      double s = 0;
      for (int64_t l = i; l < j; ++l) s += tp[i * b + l] * g[l * b + j];
      tp[i * b + j] = -tau[j] * s;
    }
  }
}

// coef = [-M^T / 2, T^T] (b x 2b) with M = T^T Z T, from Z = V^T X and T (b x b, row-major).
void form_w_coefficients(const double* z, const double* t, int64_t b, double* coef) {
  std::vector<double> zt(b * b, 0.0), m(b * b, 0.0);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t l = 0; l < b; ++l) axpy(z[i * b + l], t + l * b, zt.data() + i * b, b);
  for (int64_t l = 0; l < b; ++l)
    for (int64_t i = 0; i < b; ++i) axpy(t[l * b + i], zt.data() + l * b, m.data() + i * b, b);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < b; ++j) {
      coef[i * 2 * b + j] = -0.5 * m[j * b + i];
      coef[i * 2 * b + b + j] = t[j * b + i];
    }
}

// Reduces the symmetric matrix in the lower triangle of `a` (n x n, contiguous, overwritten) to
// lower bandwidth b: on return the lower band of `a` holds the band matrix; entries outside it
// are garbage.
void reduce_to_band(at::Tensor& a, int64_t b) {
  const int64_t n = a.size(0);
  double* A = a.data_ptr<double>();
  for (int64_t i0 = 0; i0 < n; i0 += kRowBlock) {
    const int64_t i1 = std::min(n, i0 + kRowBlock);
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = i + 1; j < i1; ++j) A[i * n + j] = A[j * n + i];
  }
  const at::TensorOptions opts = a.options();
  // vw = [V^T; W^T] and wv = [W^T; V^T] (2b x m), the factors of the rank-2b update.
  at::Tensor vw = at::empty({2 * b, n}, opts), wv = at::empty({2 * b, n}, opts);
  at::Tensor r = at::empty({b, b}, opts), t = at::empty({b, b}, opts), z = at::empty({b, b}, opts),
             coef = at::empty({b, 2 * b}, opts);
  for (int64_t c = 0; n - c - b >= 2; c += b) {
    const int64_t r0 = c + b, m = n - r0;
    at::Tensor vt = vw.narrow(0, 0, b).narrow(1, 0, m), wt = vw.narrow(0, b, b).narrow(1, 0, m);
    // The panel, transposed: row j gathers column c + j (the rows of A it crosses stay in L2).
    double* pt = vt.data_ptr<double>();
    for (int64_t j = 0; j < b; ++j)
      for (int64_t i = 0; i < m; ++i) pt[j * n + i] = A[(r0 + i) * n + c + j];
    panel_qr(vt, r, t);
    // The panel becomes (R; 0); only R, inside the band, is read again.
    const double* rp = r.data_ptr<double>();
    for (int64_t i = 0; i < std::min(b, m); ++i)
      for (int64_t j = 0; j < b; ++j) A[(r0 + i) * n + c + j] = rp[i * b + j];

    // X^T = V^T A22, into the rows of W^T, from the lower triangle by absolute row blocks: block
    // I contributes its rows [r0, I1) (diagonal square included, kept full) to X^T[:, I] and its
    // strictly lower part, transposed, to X^T[:, :I0].
    for (int64_t i0 = r0, i1; i0 < n; i0 = i1) {
      i1 = std::min(n, (i0 / kRowBlock + 1) * kRowBlock);
      const at::Tensor rows = a.narrow(0, i0, i1 - i0);
      at::Tensor x_block = wt.narrow(1, i0 - r0, i1 - i0);
      at::mm_out(x_block, vt.narrow(1, 0, i1 - r0), rows.narrow(1, r0, i1 - r0).t());
      if (i0 > r0)
        wt.narrow(1, 0, i0 - r0).addmm_(vt.narrow(1, i0 - r0, i1 - i0), rows.narrow(1, r0, i0 - r0));
    }
    // Q^T A22 Q = A22 - V W^T - W V^T with W = X T - V M / 2, M = T^T V^T X T, in one product:
    // W^T = [-M^T / 2, T^T] [V^T; X^T].
    at::mm_out(z, vt, wt.t());
    form_w_coefficients(z.const_data_ptr<double>(), t.const_data_ptr<double>(), b, coef.data_ptr<double>());
    at::Tensor w_rows = wv.narrow(0, 0, b).narrow(1, 0, m);
    at::mm_out(w_rows, coef, vw.narrow(1, 0, m));
    wt.copy_(w_rows);
    wv.narrow(0, b, b).narrow(1, 0, m).copy_(vt);
    for (int64_t i0 = r0, i1; i0 < n; i0 = i1) {
      i1 = std::min(n, (i0 / kRowBlock + 1) * kRowBlock);
      a.narrow(0, i0, i1 - i0)
          .narrow(1, r0, i1 - r0)
          .addmm_(vw.narrow(1, i0 - r0, i1 - i0).t(), wv.narrow(1, 0, i1 - r0), 1, -1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: band -> tridiagonal.

// Lower band in packed columns: element (i, j), j <= i < j + ld, at p[j * ld + i - j]. ld = 2b
// holds the band (i - j <= b) and the fill (i - j < 2b) that a sweep leaves behind.
struct PackedBand {
  double* p;
  int64_t n, b, ld;
  double* at(int64_t i, int64_t j) const { return p + j * ld + (i - j); }
};

// Step k of a sweep (Lang's scheme, as in LAPACK's two-stage dsytrd), s = j + 1 + k b: the
// reflector from x (column j for k = 0, else column s - b), rows [s, s + len), annihilates x
// below its first row; it is applied from the left to the rest of the previous step's block
// (columns (s - b, s)), two-sided to the diagonal block D (rows and columns [s, s + len)), and
// from the right to the rows [s + b, s + b + rows) below D. That block fills in; the next step
// annihilates its first column only, the next sweeps the rest. kLen > 0 fixes len = rows = kLen
// at compile time for the full steps that make up nearly all the work.
template <int64_t kLen>
void chase_step(const PackedBand& band, int64_t s, double* x, bool first, int64_t len_arg, int64_t rows_arg) {
  const int64_t b = band.b, len = kLen > 0 ? kLen : len_arg, rows = kLen > 0 ? kLen : rows_arg;
  const double tau = make_reflector(x, len);
  if (tau == 0) return;
  double v[2 * kBand], y[2 * kBand], u[2 * kBand];
  v[0] = 1;
  for (int64_t r = 1; r < len; ++r) {
    v[r] = x[r];
    x[r] = 0;
  }
  if (!first)
    for (int64_t c = s - b + 1; c < s; ++c) {
      double* col = band.at(s, c);
      axpy(-tau * dot(v, col, len), v, col, len);
    }
  // D (lower triangle): y = tau D v, y -= tau/2 (y.v) v, D -= v y^T + y v^T. Column i of D is
  // addressed from row s (p[r], r >= i) so that every loop runs over the whole block, masked.
  for (int64_t r = 0; r < len; ++r) y[r] = 0;
  for (int64_t i = 0; i < len; ++i) {
    const double* p = band.at(s + i, s + i) - i;
    const double vi = v[i];
    double ui = 0;
#pragma omp simd reduction(+ : ui)
    for (int64_t r = 0; r < len; ++r) {
      const double lr = r >= i ? p[r] : 0.0;
      y[r] += vi * lr;
      ui += lr * v[r];
    }
    u[i] = ui - p[i] * vi;  // the diagonal is in both L v and L^T v
  }
  double yv = 0;
#pragma omp simd reduction(+ : yv)
  for (int64_t r = 0; r < len; ++r) {
    y[r] = tau * (y[r] + u[r]);
    yv += y[r] * v[r];
  }
  axpy(-0.5 * tau * yv, v, y, len);
  for (int64_t i = 0; i < len; ++i) {
    double* p = band.at(s + i, s + i) - i;
    const double vi = v[i], yi = y[i];
#pragma omp simd
    for (int64_t r = 0; r < len; ++r)
      if (r >= i) p[r] -= v[r] * yi + y[r] * vi;
  }
  if (rows <= 0) return;
  for (int64_t r = 0; r < rows; ++r) y[r] = 0;
  for (int64_t i = 0; i < len; ++i) axpy(v[i], band.at(s + b, s + i), y, rows);
  for (int64_t i = 0; i < len; ++i) axpy(-tau * v[i], y, band.at(s + b, s + i), rows);
}

// Band (lower bandwidth b, packed) -> tridiagonal, in place, by n - 2 sweeps. Step k of sweep j
// touches columns [s - b, s + b) and rows [s, s + 2b): it overlaps steps k .. k + 2 of sweep j - 1
// and nothing later. Each thread takes the same share of consecutive steps of every sweep, so
// the band a thread works on stays in its cache and threads hand over only at the seams;
// `done[j]` counts the finished steps of sweep j.
void band_to_tridiagonal(const PackedBand& band) {
  const int64_t n = band.n, b = band.b, sweeps = n - 2;
  if (sweeps <= 0) return;
  auto steps = [&](int64_t j) { return (n - j - 2 + b - 1) / b; };  // s = j + 1 + k b < n - 1
  std::vector<std::atomic<int64_t>> done(sweeps);
  for (auto& d : done) d.store(0, std::memory_order_relaxed);
  const int64_t shares = at::get_num_threads();
  at::parallel_for(0, shares, 1, [&](int64_t share_begin, int64_t share_end) {
    for (int64_t j = 0; j < sweeps; ++j) {
      const int64_t count = steps(j);
      for (int64_t k = count * share_begin / shares; k < count * share_end / shares; ++k) {
        if (j > 0) wait_until(done[j - 1], std::min(k + 3, steps(j - 1)));
        wait_until(done[j], k);
        const int64_t s = j + 1 + k * b, len = std::min(b, n - s), rows = std::min(b, n - s - b);
        double* x = k == 0 ? band.at(s, j) : band.at(s, s - b);
        if (b == kBand && len == kBand && rows == kBand) {
          chase_step<kBand>(band, s, x, k == 0, len, rows);
        } else {
          chase_step<0>(band, s, x, k == 0, len, rows);
        }
        done[j].store(k + 1, std::memory_order_release);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Stage 3: eigenvalues of the symmetric tridiagonal (d, e) by implicit QL with the root-free
// Pal-Walker-Kahan update on e^2; d is overwritten with the eigenvalues, unsorted.
constexpr double kSafeLow = 0x1p-900, kSafeHigh = 0x1p900;

void tridiagonal_eigenvalues(double* d, const double* e, int64_t n) {
  if (n <= 1) return;
  std::vector<double> e2(n);
  for (int64_t i = 0; i + 1 < n; ++i) e2[i] = e[i] * e[i];
  e2[n - 1] = 0;
  const double eps2 = std::pow(std::numeric_limits<double>::epsilon() / 2, 2);
  const double tiny = std::numeric_limits<double>::min();
  int64_t iterations = 0;
  for (int64_t l = 0; l < n; ++l) {
    for (;;) {
      int64_t m = l;
      while (m < n - 1 && e2[m] > eps2 * std::abs(d[m] * d[m + 1]) + tiny) ++m;
      if (m == l) break;
      TORCH_CHECK(++iterations <= 30 * n, "symmetric_eigvalsh: the tridiagonal QL iteration did not converge");
      // Shift: the eigenvalue of the leading 2 x 2 nearer d[l].
      const double rte = std::sqrt(e2[l]);
      double sigma = (d[l + 1] - d[l]) / (2 * rte);
      sigma = d[l] - rte / (sigma + std::copysign(std::hypot(sigma, 1.0), sigma));
      double c = 1, s = 0, gamma = d[m] - sigma, p = gamma * gamma;
      for (int64_t i = m - 1; i >= l; --i) {
        const double bb = e2[i], r = p + bb, alpha = d[i], rp = r * p;
        if (i != m - 1) e2[i + 1] = s * r;
        const double old_gamma = gamma;
        if (rp > kSafeLow && rp < kSafeHigh) {
          // c = p / r, s = bb / r, gamma = c (alpha - sigma) - s gamma, p = gamma^2 / c with a
          // single division, which halves the latency of the chain through p.
          const double inv = 1 / rp, num = p * (alpha - sigma) - bb * old_gamma, pinv = p * inv;
          c = p * pinv;
          s = bb * pinv;
          gamma = num * pinv;
          p = num * num * inv;
        } else {
          const double old_c = c;
          c = p / r;
          s = bb / r;
          gamma = c * (alpha - sigma) - s * old_gamma;
          p = c != 0 ? gamma * gamma / c : old_c * bb;
        }
        d[i + 1] = old_gamma + (alpha - gamma);
      }
      e2[l] = s * p;
      d[l] = sigma + gamma;
    }
  }
}

// ---------------------------------------------------------------------------------------------

// Eigenvalues, ascending, of the symmetric matrix in the lower triangle of a (n x n float64).
at::Tensor eigvalsh_double(const at::Tensor& a) {
  const int64_t n = a.size(0);
  at::Tensor out = at::empty({n}, a.options());
  if (n == 0) return out;
  const at::Tensor src = a.contiguous();
  const double* S = src.const_data_ptr<double>();
  // The work matrix comes from fastgen's buffer cache: repeated calls then skip the page
  // faults of a fresh n x n allocation.
  at::Tensor w = empty_cached({n, n}, a.options());
  double* W = w.data_ptr<double>();
  // One pass copies the lower triangle and finds its largest magnitude; rows go in pairs
  // (i, n - 1 - i), n + 1 elements a pair, so that the threads get equal shares.
  double amax = 0, nonfinite = 0;
  std::mutex merge;
  at::parallel_for(0, (n + 1) / 2, 64, [&](int64_t begin, int64_t end) {
    double part_max = 0, part_nonfinite = 0;  // x * 0 is NaN exactly for infinite and NaN x
    auto copy_row = [&](int64_t i) {
#pragma omp simd reduction(max : part_max) reduction(+ : part_nonfinite)
      for (int64_t j = 0; j <= i; ++j) {
        const double x = S[i * n + j];
        W[i * n + j] = x;
        part_max = std::max(part_max, std::abs(x));
        part_nonfinite += x * 0.0;
      }
    };
    for (int64_t pair = begin; pair < end; ++pair) {
      copy_row(pair);
      if (n - 1 - pair != pair) copy_row(n - 1 - pair);
    }
    const std::lock_guard<std::mutex> lock(merge);
    amax = std::max(amax, part_max);
    nonfinite += part_nonfinite;
  });
  if (std::isnan(nonfinite)) return out.fill_(std::numeric_limits<double>::quiet_NaN());
  if (amax == 0) return out.zero_();
  // Outside [2^-200, 2^200] the largest entry is brought to [1/2, 1) by a power of two (exact
  // but for subnormals), so that products of four entries in stage 3 stay in range.
  int exponent = 0;
  if (amax < 0x1p-200 || amax > 0x1p200) {
    std::frexp(amax, &exponent);
    const double scale = std::ldexp(1.0, -exponent);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) W[i * n + j] *= scale;
  }

  const int64_t b = std::min(kBand, std::max<int64_t>(n - 1, 1));
  reduce_to_band(w, b);
  std::vector<double> packed(n * 2 * b, 0.0);
  const PackedBand band{packed.data(), n, b, 2 * b};
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = j; i <= std::min(n - 1, j + b); ++i) *band.at(i, j) = W[i * n + j];
  band_to_tridiagonal(band);
  double* d = out.data_ptr<double>();
  std::vector<double> e(std::max<int64_t>(n - 1, 1));
  for (int64_t j = 0; j < n; ++j) d[j] = *band.at(j, j);
  for (int64_t j = 0; j + 1 < n; ++j) e[j] = *band.at(j + 1, j);
  tridiagonal_eigenvalues(d, e.data(), n);
  std::sort(d, d + n);
  if (exponent != 0) out.mul_(std::ldexp(1.0, exponent));
  return out;
}

at::Tensor symmetric_eigvalsh(const at::Tensor& a) {
  TORCH_CHECK(a.dim() == 2, "symmetric_eigvalsh: expected a 2-D matrix, got shape ", a.sizes());
  TORCH_CHECK(a.size(0) == a.size(1), "symmetric_eigvalsh: expected a square matrix, got shape ", a.sizes());
  TORCH_CHECK(a.scalar_type() == at::kDouble || a.scalar_type() == at::kFloat,
              "symmetric_eigvalsh: expected float64 or float32, got ", a.scalar_type());
  TORCH_CHECK(a.device().is_cpu(), "symmetric_eigvalsh: expected a CPU tensor, got ", a.device());
  // float32 runs in float64 and is rounded once at the end.
  return eigvalsh_double(a.to(at::kDouble)).to(a.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) { m.impl("symmetric_eigvalsh", &symmetric_eigvalsh); }

}  // namespace fastgen
