// Spectral-norm power iteration on the CPU: one pass over W per iteration, no pass for sigma.
//
// With t = W v, u = t / max(|t|, eps) and s = W^T u = (sum_i t_i W_i) / max(|t|, eps),
// each row W_i is read once: its dot product with v gives t_i, and while the row is
// still in cache t_i * W_i is added to a per-thread partial of s. Then
// v = s / max(|s|, eps), and sigma = u^T W v = s^T v = |s|^2 / max(|s|, eps), so sigma
// needs no third matrix-vector product.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "accumulate.h"

#include <algorithm>
#include <cmath>
#include <functional>
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
  // Threads start past ~128k elements, each taking 64k or more (parallel_for splits a range into
  // at most range / grain chunks): below that a thread wake-up costs more than the pass.
  const int64_t grain = std::max<int64_t>(kRowBlock, 131072 / std::max<int64_t>(n, 1));
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

// Power iteration on the matrix view of a weight: sigma (in the accumulation type) and the new
// u, v (in u's and v's dtype). Argument checks are the caller's.
struct StepResult {
  double sigma;
  at::Tensor u, v;
};

StepResult step(const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v, int64_t n_power_iterations,
                double eps) {
  const int64_t m = weight_mat.size(0), n = weight_mat.size(1);
  const at::Tensor w = weight_mat.contiguous();
  const at::ScalarType acc = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor u_acc = u.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor v_acc = v.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  double sigma = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "spectral_norm_step", [&] {
    using A = acc_t<scalar_t>;
    sigma = power_iteration<scalar_t>(w.const_data_ptr<scalar_t>(), m, n, u_acc.data_ptr<A>(), v_acc.data_ptr<A>(),
                                      n_power_iterations, static_cast<A>(eps));
  });
  return {sigma, u_acc.to(u.scalar_type()), v_acc.to(v.scalar_type())};
}

void check_step_args(const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v,
                     int64_t n_power_iterations, double eps) {
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
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spectral_norm_step(const at::Tensor& weight_mat, const at::Tensor& u,
                                                                  const at::Tensor& v, int64_t n_power_iterations,
                                                                  double eps) {
  check_step_args(weight_mat, u, v, n_power_iterations, eps);
  StepResult r = step(weight_mat, u, v, n_power_iterations, eps);
  return {at::scalar_tensor(r.sigma, weight_mat.options()), r.u, r.v};
}

// ---- One training step of a spectrally normalized layer, with its autograd in C++ ----
//
// fastgen.nn.spectral_norm's training forward in plain eager mode on the CPU. Inside a model,
// between large convolutions that evict the caches, every small ATen op or Python call costs
// 10-20 us, so what matters on small layers is how many there are: torch's parametrization makes
// about ten, the op path of fastgen.nn as many. Here the whole step is one op and one autograd
// node, working on raw pointers: the power iteration on W viewed as [size(dim), -1] from the
// buffers u, v, which it updates in place, then sigma = max(u'^T W v', floor) rounded to the
// weight's dtype (floor = the module's eps, at least the dtype's smallest normal) and
// d sigma / d W = u' v'^T where sigma is not clamped, else 0 (the Python path's results).
// `spectral_norm_layer_sigma` returns sigma (for layer(x, W) / sigma), `spectral_norm_layer_weight`
// returns W / sigma.

// u v^T laid out as the weight: the matrix view [size(dim), -1] moved back.
at::Tensor outer_as_weight(const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight, int64_t dim) {
  return at::outer(u, v).view(weight.movedim(dim, 0).sizes()).movedim(0, dim);
}

// A new contiguous CPU tensor, without a trip through the dispatcher.
at::Tensor new_tensor(at::IntArrayRef sizes, at::ScalarType dtype) { return at::detail::empty_cpu(sizes, dtype); }

// The weight as a contiguous [size(dim), -1] matrix: the weight itself when dim = 0 (no op).
at::Tensor weight_matrix(const at::Tensor& weight, int64_t dim) {
  if (dim == 0 && weight.is_contiguous()) return weight;
  return weight.movedim(dim, 0).flatten(1).contiguous();
}

struct LayerStep {
  double sigma;  // in the weight's dtype, clamped
  bool clamped;
  at::Tensor u, v;  // copies of the updated buffers, for backward
};

template <typename T>
LayerStep layer_step_typed(const T* w, int64_t m, int64_t n, const at::Tensor& u_buf, const at::Tensor& v_buf,
                           int64_t n_power_iterations, double eps, double sigma_floor) {
  using A = acc_t<T>;
  T* ub = u_buf.data_ptr<T>();
  T* vb = v_buf.data_ptr<T>();
  std::vector<A> u(ub, ub + m), v(vb, vb + n);
  const A sigma = power_iteration<T>(w, m, n, u.data(), v.data(), n_power_iterations, static_cast<A>(eps));
  // c10::ValueError reaches Python as ValueError, as the Python path raises.
  TORCH_CHECK_VALUE(std::isfinite(sigma), "weight contains NaN or Inf: its spectral norm is not finite");
  std::copy(u.begin(), u.end(), ub);
  std::copy(v.begin(), v.end(), vb);
  u_buf.unsafeGetTensorImpl()->bump_version();
  v_buf.unsafeGetTensorImpl()->bump_version();
  LayerStep r{0, false, new_tensor({m}, u_buf.scalar_type()), new_tensor({n}, v_buf.scalar_type())};
  std::copy(ub, ub + m, r.u.data_ptr<T>());
  std::copy(vb, vb + n, r.v.data_ptr<T>());
  const double rounded = static_cast<double>(static_cast<T>(sigma));
  r.clamped = rounded < sigma_floor;
  r.sigma = r.clamped ? static_cast<double>(static_cast<T>(sigma_floor)) : rounded;
  return r;
}

LayerStep layer_step(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim,
                     int64_t n_power_iterations, double eps, double sigma_floor) {
  TORCH_CHECK(weight.dim() >= 2 && weight.numel() > 0, "weight must be non-empty with at least 2 dimensions, got ",
              weight.sizes());
  TORCH_CHECK(dim >= 0 && dim < weight.dim(), "dim must be in [0, ", weight.dim(), "), got ", dim);
  const int64_t m = weight.size(dim), n = weight.numel() / m;
  TORCH_CHECK(weight.device().is_cpu() && u.device().is_cpu() && v.device().is_cpu(),
              "spectral_norm_layer: all tensors must be on the CPU");
  TORCH_CHECK(u.dim() == 1 && u.size(0) == m && u.is_contiguous(), "u must be a contiguous [", m, "], got ",
              u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n && v.is_contiguous(), "v must be a contiguous [", n, "], got ",
              v.sizes());
  TORCH_CHECK(u.scalar_type() == weight.scalar_type() && v.scalar_type() == weight.scalar_type(),
              "u and v must have the dtype of weight");
  TORCH_CHECK(n_power_iterations >= 1, "n_power_iterations must be >= 1, got ", n_power_iterations);
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
  const at::Tensor weight_mat = weight_matrix(weight, dim);
  LayerStep r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_layer", [&] {
    r = layer_step_typed<scalar_t>(weight_mat.const_data_ptr<scalar_t>(), m, n, u, v, n_power_iterations, eps,
                                   sigma_floor);
  });
  return r;
}

template <typename T>
void divide(const T* w, int64_t numel, double sigma, T* out) {
  using A = acc_t<T>;
  const A s = static_cast<A>(sigma);
  at::parallel_for(0, numel, 131072, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(static_cast<A>(w[i]) / s);
  });
}

// W / sigma, as the Python path's weight / sigma (a division in the accumulation type, rounded once).
at::Tensor weight_over_sigma(const at::Tensor& weight, double sigma) {
  if (!weight.is_contiguous()) return at::div(weight, at::scalar_tensor(sigma, weight.options()));
  at::Tensor out = new_tensor(weight.sizes(), weight.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_layer_divide", [&] {
    divide<scalar_t>(weight.const_data_ptr<scalar_t>(), weight.numel(), sigma, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor sigma_tensor(double sigma, at::ScalarType dtype) {
  at::Tensor out = new_tensor({}, dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "spectral_norm_layer_sigma", [&] {
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(sigma);
  });
  return out;
}

// out = g / sigma - (<g, w> / sigma^2) u v^T for a contiguous [m, n] matrix: one pass for the
// dot product, one for the output.
template <typename T>
void fused_weight_backward(const T* g, const T* w, T sigma, const T* u, const T* v, int64_t m, int64_t n, T* out) {
  constexpr int64_t kBlock = 4096;  // summed in T with vector lanes, then into a double
  const double dot = at::parallel_reduce(
      0, m * n, 131072, 0.0,
      [&](int64_t begin, int64_t end, double acc) {
        for (int64_t b = begin; b < end; b += kBlock) {
          const T *gb = g + b, *wb = w + b;
          T part = 0;
#pragma omp simd reduction(+ : part)
          for (int64_t i = 0; i < std::min(kBlock, end - b); ++i) part += gb[i] * wb[i];
          acc += part;
        }
        return acc;
      },
      std::plus<double>());
  const T c = static_cast<T>(dot) / (sigma * sigma);
  // Threads only past ~128k elements: below that a wake-up costs more than the pass.
  at::parallel_for(0, m, std::max<int64_t>(1, 131072 / n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T cu = c * u[i];
      const T* gi = g + i * n;
      T* oi = out + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) oi[j] = gi[j] / sigma - cu * v[j];
    }
  });
}

// out = g u v^T for a contiguous [m, n] matrix.
template <typename T>
void fused_sigma_backward(T g, const T* u, const T* v, int64_t m, int64_t n, T* out) {
  at::parallel_for(0, m, std::max<int64_t>(1, 131072 / n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T gu = g * u[i];
      T* oi = out + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) oi[j] = gu * v[j];
    }
  });
}

// The fused backward loops take float and double [m, n] matrices (dim 0), and no create_graph: a
// double backward needs the gradient built from differentiable ATen ops.
bool fused_backward_applies(const at::Tensor& grad, const at::Tensor& weight, int64_t dim) {
  return !at::GradMode::is_enabled() && dim == 0 && grad.is_contiguous() && weight.is_contiguous() &&
         grad.scalar_type() == weight.scalar_type() &&
         (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Which output the op returns: W / sigma, or sigma.
template <bool kDivideWeight>
at::Tensor layer_output(const at::Tensor& weight, const LayerStep& r) {
  return kDivideWeight ? weight_over_sigma(weight, r.sigma) : sigma_tensor(r.sigma, weight.scalar_type());
}

template <bool kDivideWeight>
at::Tensor layer_grad(const at::Tensor& grad, const at::Tensor& weight, double sigma, bool clamped,
                      const at::Tensor& u, const at::Tensor& v, int64_t dim) {
  const at::Tensor sigma_t = at::scalar_tensor(sigma, weight.options());
  if (kDivideWeight) {
    if (clamped) return grad / sigma_t;
    if (!fused_backward_applies(grad, weight, dim))
      return grad / sigma_t - (grad * weight).sum() / (sigma_t * sigma_t) * outer_as_weight(u, v, weight, dim);
    at::Tensor out = new_tensor(weight.sizes(), weight.scalar_type());
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spectral_norm_layer_weight_backward", [&] {
      fused_weight_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                      static_cast<scalar_t>(sigma), u.const_data_ptr<scalar_t>(),
                                      v.const_data_ptr<scalar_t>(), u.size(0), v.size(0), out.data_ptr<scalar_t>());
    });
    return out;
  }
  if (clamped) return at::zeros_like(weight);
  if (!fused_backward_applies(grad, weight, dim)) return grad * outer_as_weight(u, v, weight, dim);
  at::Tensor out = new_tensor(weight.sizes(), weight.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spectral_norm_layer_sigma_backward", [&] {
    fused_sigma_backward<scalar_t>(*grad.const_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(),
                                   v.const_data_ptr<scalar_t>(), u.size(0), v.size(0), out.data_ptr<scalar_t>());
  });
  return out;
}

template <bool kDivideWeight>
struct SpectralNormLayerStep : torch::autograd::Function<SpectralNormLayerStep<kDivideWeight>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& u,
                               const at::Tensor& v, int64_t dim, int64_t n_power_iterations, double eps,
                               double sigma_floor) {
    LayerStep r = layer_step(weight, u, v, dim, n_power_iterations, eps, sigma_floor);
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["sigma"] = r.sigma;
    ctx->saved_data["clamped"] = r.clamped;
    ctx->save_for_backward({weight, r.u, r.v});
    return {layer_output<kDivideWeight>(weight, r)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_weight;
    if (grads[0].defined())
      grad_weight = layer_grad<kDivideWeight>(grads[0], saved[0], ctx->saved_data["sigma"].toDouble(),
                                              ctx->saved_data["clamped"].toBool(), saved[1], saved[2],
                                              ctx->saved_data["dim"].toInt());
    return {grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <bool kDivideWeight>
at::Tensor layer_step_autograd(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim,
                               int64_t n_power_iterations, double eps, double sigma_floor) {
  return SpectralNormLayerStep<kDivideWeight>::apply(weight, u, v, dim, n_power_iterations, eps, sigma_floor)[0];
}

// Below autograd (inference mode): the same step, no graph.
template <bool kDivideWeight>
at::Tensor layer_step_no_grad(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim,
                              int64_t n_power_iterations, double eps, double sigma_floor) {
  return layer_output<kDivideWeight>(weight, layer_step(weight, u, v, dim, n_power_iterations, eps, sigma_floor));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) {
  m.impl("spectral_norm_step", &spectral_norm_step);
  m.impl("spectral_norm_layer_sigma", &layer_step_no_grad<false>);
  m.impl("spectral_norm_layer_weight", &layer_step_no_grad<true>);
}

TORCH_LIBRARY_IMPL(fastgen_C, AutogradCPU, m) {
  m.impl("spectral_norm_layer_sigma", &layer_step_autograd<false>);
  m.impl("spectral_norm_layer_weight", &layer_step_autograd<true>);
}

}  // namespace fastgen
