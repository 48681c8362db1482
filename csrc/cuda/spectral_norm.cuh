// Launcher for the spectral-norm power iteration in spectral_norm.cu. Torch-free, so
// spectral_norm.cu builds with plain nvcc; csrc/cuda/bindings.cpp validates tensors, allocates the
// outputs and the workspace, and turns them into these arguments.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// Elements of T that spectral_norm_step_cuda needs as workspace for an m x n weight. It depends
// on the shape alone (not on the device), so the blocks, and with them the order of every sum,
// are the same on every GPU.
int64_t spectral_norm_workspace_size(int64_t m, int64_t n);

// n_power_iterations (>= 1) steps of u = normalize(W v), v = normalize(W^T u), with
// normalize(a) = a / max(|a|, eps), then sigma = u^T W v; the spec is
// fastgen/ops/spectral_norm/reference.py. weight is W, a contiguous row-major m x n matrix
// (m, n >= 1); v [n] is the starting vector. The starting u is no argument: the first step
// overwrites it without reading it. Writes sigma (one element), u_out [m] and v_out [n], none of
// which may overlap weight, v or the workspace.
//
// T is float or double and is also the accumulation type. The kernels go on `stream` with no host
// synchronization; returns the first launch error, or cudaSuccess.
template <typename T>
cudaError_t spectral_norm_step_cuda(const T* weight, const T* v, T* sigma, T* u_out, T* v_out,
                                    T* workspace, int64_t m, int64_t n,
                                    int64_t n_power_iterations, double eps, cudaStream_t stream);

}  // namespace fastgen
