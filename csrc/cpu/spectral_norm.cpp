// Spectral-norm power iteration on the CPU: one pass over W per iteration, no pass for sigma.
//
// With t = W v, u = t / max(|t|, eps) and s = W^T u = (sum_i t_i W_i) / max(|t|, eps),
// each row W_i is read once: its dot product with v gives t_i, and while the row is
// still in cache t_i * W_i is added to a per-thread partial of s. Then
// v = s / max(|s|, eps), and sigma = u^T W v = s^T v = |s|^2 / max(|s|, eps), so sigma
// needs no third matrix-vector product.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "accumulate.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace fastgen {
namespace {

constexpr int64_t kRowBlock = 4;  // rows per step: v is read once for four dot products

// t[r] = W_r . v for the `rows` rows at w (row stride n), then s += sum_r t[r] * W_r.
// A full block computes its four dot products in one loop: v is read once, and the
// four accumulators are independent chains, so the adds do not wait on each other.
template <typename T, typename A>
void rows_step(const T* w, int64_t rows, int64_t n, const A* v, A* t, A* s) {
  if (rows == kRowBlock) {
    const T *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    A d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t j = 0; j < n; ++j) {
      d0 += static_cast<A>(w0[j]) * v[j];
      d1 += static_cast<A>(w1[j]) * v[j];
      d2 += static_cast<A>(w2[j]) * v[j];
      d3 += static_cast<A>(w3[j]) * v[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
      s[j] += d0 * static_cast<A>(w0[j]) + d1 * static_cast<A>(w1[j]) + d2 * static_cast<A>(w2[j]) +
              d3 * static_cast<A>(w3[j]);
    t[0] = d0, t[1] = d1, t[2] = d2, t[3] = d3;
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = w + r * n;
    A dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += static_cast<A>(row[j]) * v[j];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] += dot * static_cast<A>(row[j]);
    t[r] = dot;
  }
}

template <typename A>
A norm(const A* x, int64_t n) {
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * x[i];
  return std::sqrt(acc);
}

// Runs the iterations on u [m], v [n] (accumulation type, updated in place); returns sigma.
template <typename T, typename A = acc_t<T>>
A power_iteration(const T* w, int64_t m, int64_t n, A* u, A* v, int64_t iterations, A eps) {
  const int64_t threads = at::get_num_threads();
  std::vector<A> partials(threads * n);
  std::vector<A> s(n);
  // Each thread's rows should be worth the wake-up: ~64k elements at least.
  const int64_t grain = std::max<int64_t>(kRowBlock, 65536 / std::max<int64_t>(n, 1));
  A sigma = 0;
  for (int64_t it = 0; it < iterations; ++it) {
    std::fill(partials.begin(), partials.end(), A(0));
    at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
      A* part = partials.data() + at::get_thread_num() * n;
      for (int64_t r = begin; r < end; r += kRowBlock)
        rows_step(w + r * n, std::min(kRowBlock, end - r), n, v, u + r, part);
    });
    std::copy(partials.begin(), partials.begin() + n, s.begin());
    for (int64_t p = 1; p < threads; ++p)
      for (int64_t j = 0; j < n; ++j) s[j] += partials[p * n + j];
    const A t_scale = A(1) / std::max(norm(u, m), eps);  // u holds t = W v here
    for (int64_t i = 0; i < m; ++i) u[i] *= t_scale;
    for (int64_t j = 0; j < n; ++j) s[j] *= t_scale;
    const A s_norm = norm(s.data(), n);
    const A s_scale = A(1) / std::max(s_norm, eps);
    for (int64_t j = 0; j < n; ++j) v[j] = s[j] * s_scale;
    sigma = s_norm * s_norm * s_scale;
  }
  return sigma;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spectral_norm_step(const at::Tensor& weight_mat, const at::Tensor& u,
                                                                  const at::Tensor& v, int64_t n_power_iterations,
                                                                  double eps) {
  TORCH_CHECK(weight_mat.dim() == 2 && weight_mat.numel() > 0, "weight_mat must be a non-empty 2-D tensor, got ",
              weight_mat.sizes());
  const int64_t m = weight_mat.size(0), n = weight_mat.size(1);
  TORCH_CHECK(u.dim() == 1 && u.size(0) == m, "u must have shape [", m, "], got ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, "v must have shape [", n, "], got ", v.sizes());
  TORCH_CHECK(weight_mat.device().is_cpu() && u.device().is_cpu() && v.device().is_cpu(),
              "spectral_norm_step: all tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == weight_mat.scalar_type() && v.scalar_type() == weight_mat.scalar_type(),
              "u and v must have the dtype of weight_mat");
  TORCH_CHECK(n_power_iterations >= 1, "n_power_iterations must be >= 1, got ", n_power_iterations);
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
  const at::Tensor w = weight_mat.contiguous();
  const at::ScalarType acc = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor u_acc = u.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor v_acc = v.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor sigma;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "spectral_norm_step", [&] {
    using A = acc_t<scalar_t>;
    const A s = power_iteration<scalar_t>(w.const_data_ptr<scalar_t>(), m, n, u_acc.data_ptr<A>(),
                                          v_acc.data_ptr<A>(), n_power_iterations, static_cast<A>(eps));
    sigma = at::scalar_tensor(s, w.options());
  });
  return {sigma, u_acc.to(u.scalar_type()), v_acc.to(v.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) {
  m.impl("spectral_norm_step", &spectral_norm_step);
}

}  // namespace fastgen
