// Launchers for the Gram-matrix CUDA kernels in gram_matrix.cu. Torch-free, so gram_matrix.cu builds
// with plain nvcc; csrc/cuda/bindings.cpp validates tensors and turns them into these arguments.
//
// T is float or double (also the accumulation type). Every tensor is contiguous. Each launcher runs
// on `stream` and returns cudaGetLastError() after the launch.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// gram[b] = features[b] features[b]^T for features [B, C, N], gram [B, C, C]; only the tiles on and
// below the diagonal are computed, each stored twice (mirrored).
template <typename T>
cudaError_t gram_matrix_forward_cuda(const T* features, T* gram, int64_t B, int64_t C, int64_t N,
                                     cudaStream_t stream);

// grad_features[b] = (grad_gram[b] + grad_gram[b]^T) features[b], grad_features [B, C, N].
template <typename T>
cudaError_t gram_matrix_backward_cuda(const T* grad_gram, const T* features, T* grad_features, int64_t B,
                                      int64_t C, int64_t N, cudaStream_t stream);

}  // namespace fastgen
