// Launcher for NeRF's hierarchical sampling in sample_pdf.cu. Torch-free, so sample_pdf.cu builds
// with plain nvcc; csrc/cuda/bindings.cpp validates tensors, allocates the output and the workspace.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// For each ray r of bins [rays, s + 1] (sorted edges) and weights [rays, s] (>= 0), all contiguous:
//
//   cdf = [0, cumsum(weights + 1e-5)] / its last value     (prefixes accumulated in double)
//   out[r, j] = the inverse CDF at u[r * u_row_stride + j], j < n: the interval located by
//               searchsorted(cdf, u, right=True), linearly interpolated between its edges
//
// The spec is fastgen/ops/nerf/reference_pdf.py. u_row_stride = 0 shares one row of u (the
// deterministic linspace) among all rays. `cdf_workspace` holds rays * (s + 1) values of T.
// T is float or double. One thread per ray; the kernel goes on `stream` with no host
// synchronization; rays = 0 launches nothing. Returns cudaErrorInvalidValue for s < 1, n < 1 or a
// negative size, else the launch error or cudaSuccess.
template <typename T>
cudaError_t sample_pdf_cuda(const T* bins, const T* weights, const T* u, int64_t u_row_stride, int64_t rays,
                            int64_t s, int64_t n, T* cdf_workspace, T* out, cudaStream_t stream);

}  // namespace fastgen
