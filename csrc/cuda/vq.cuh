// Launcher for the VQ nearest-codebook search in vq.cu. Torch-free, so vq.cu builds with plain
// nvcc; csrc/cuda/bindings.cpp validates tensors, allocates the outputs and turns them into these
// arguments.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// For each row z_i of z [n, d] and the codebook [k, d] (both contiguous, row-major; k >= 1):
//
//   indices[i]   = argmin_j |z_i - e_j|^2, the lowest j among equal minima (as torch.argmin)
//   distances[i] = |z_i - e_indices[i]|^2, summed from the difference (so never negative)
//
// The spec is fastgen/ops/vq/reference.py. The N x K distance matrix is never built: each thread
// block keeps a running (min, argmin) for its rows over codebook tiles. Inputs must be finite
// (the Python layer checks): a NaN score never wins, so a row whose every score is NaN gets code 0.
//
// T is float or double and is also the accumulation type (half types never reach this backend).
// The kernel goes on `stream` with no host synchronization; n = 0 launches nothing. Returns
// cudaErrorInvalidValue for k < 1 or a negative size, else the launch error or cudaSuccess.
template <typename T>
cudaError_t vq_nearest_l2_cuda(const T* z, const T* codebook, int64_t n, int64_t k, int64_t d,
                               int64_t* indices, T* distances, cudaStream_t stream);

}  // namespace fastgen
