// Launchers for the AdaIN CUDA kernels in adain.cu. Torch-free, so adain.cu builds with plain
// nvcc; csrc/cuda/bindings.cpp validates tensors and turns them into these arguments.
//
// Every launcher takes float or double (the accumulation type too), launches one thread block per
// (n, c) plane on `stream`, and returns cudaGetLastError() after the launch.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgen {

// N x C planes of HW elements: element i of plane (n, c) is at
// data[n * n_stride + c * c_stride + i * hw_stride]. H and W merge into the one index i because
// stride_h == W * stride_w in both NCHW and channels_last.
template <typename T>
struct Planes {
  T* data;
  int64_t n_stride, c_stride, hw_stride;
};

// out = (content - mean) * rstd * style_std + style_mean, with mean and rstd = 1 / sqrt(var + eps)
// of each content plane. style_mean and style_std are contiguous [N, C].
template <typename T>
cudaError_t adain_forward_cuda(Planes<const T> content, const T* style_mean, const T* style_std,
                               Planes<T> out, int64_t N, int64_t C, int64_t HW, double eps,
                               cudaStream_t stream);

// Gradients of adain_forward_cuda. grad_style_mean and grad_style_std are contiguous [N, C]; the
// style mean itself does not enter any gradient, so it is not an argument.
template <typename T>
cudaError_t adain_backward_cuda(Planes<const T> grad_out, Planes<const T> content,
                                const T* style_std, Planes<T> grad_content, T* grad_style_mean,
                                T* grad_style_std, int64_t N, int64_t C, int64_t HW, double eps,
                                cudaStream_t stream);

// adain_forward_cuda with style_mean and style_std = sqrt(var + eps) taken from each style plane
// of style_HW elements, in the same kernel.
template <typename T>
cudaError_t adain_from_style_forward_cuda(Planes<const T> content, Planes<const T> style,
                                          Planes<T> out, int64_t N, int64_t C, int64_t HW,
                                          int64_t style_HW, double eps, cudaStream_t stream);

// Gradients of adain_from_style_forward_cuda for content and style.
template <typename T>
cudaError_t adain_from_style_backward_cuda(Planes<const T> grad_out, Planes<const T> content,
                                           Planes<const T> style, Planes<T> grad_content,
                                           Planes<T> grad_style, int64_t N, int64_t C, int64_t HW,
                                           int64_t style_HW, double eps, cudaStream_t stream);

}  // namespace fastgen
