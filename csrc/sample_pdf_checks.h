// Argument checks shared by the CPU kernel (csrc/cpu/sample_pdf.cpp) and the CUDA binding
// (csrc/cuda/bindings.cpp) of fastgen_C::sample_pdf; `kernel` names the caller in the messages.
#pragma once

#include <ATen/ATen.h>

namespace fastgen {

// bins [R, S + 1] and weights [R, S] of one float dtype, n_samples >= 1; returns S.
inline int64_t check_sample_pdf_inputs(const at::Tensor& bins, const at::Tensor& weights, int64_t n_samples,
                                       const char* kernel) {
  TORCH_CHECK(weights.dim() == 2 && weights.size(1) >= 1, "sample_pdf: weights must be [R, S] with S >= 1, got ",
              weights.sizes());
  const int64_t rays = weights.size(0), s = weights.size(1);
  TORCH_CHECK(bins.dim() == 2 && bins.size(0) == rays && bins.size(1) == s + 1,
              "sample_pdf: bins must be [R, S + 1] = [", rays, ", ", s + 1, "], got ", bins.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble, "sample_pdf: the ",
              kernel, " kernel takes float32 or float64, got ", weights.scalar_type());
  TORCH_CHECK(bins.scalar_type() == weights.scalar_type(), "sample_pdf: bins must have weights' dtype (",
              weights.scalar_type(), "), got ", bins.scalar_type());
  TORCH_CHECK(n_samples >= 1, "sample_pdf: n_samples must be >= 1, got ", n_samples);
  return s;
}

}  // namespace fastgen
