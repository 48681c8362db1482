// CUDA implementations of the fastgen_C ops (schemas in csrc/registration.cpp): validate,
// allocate outputs, and call the torch-free launchers in adain.cu, spectral_norm.cu and vq.cu.
#include <climits>
#include <tuple>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "adain.cuh"
#include "spectral_norm.cuh"
#include "vq.cuh"

namespace {

bool has_plane_layout(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The kernels index NCHW and channels_last; anything else is copied to NCHW first.
at::Tensor with_plane_layout(const at::Tensor& t) {
  return has_plane_layout(t) ? t : t.contiguous();
}

template <typename T>
fastgen::Planes<T> planes(const at::Tensor& t) {
  // Torch ignores the stride of a size-1 dim, so with W == 1 the merged H*W index steps by stride(2).
  const int64_t hw_stride = t.size(3) > 1 ? t.stride(3) : t.stride(2);
  return {t.data_ptr<std::remove_const_t<T>>(), t.stride(0), t.stride(1), hw_stride};
}

// empty_like(like) keeps the caller's layout, as the contract asks. When that layout is not one
// the kernels index, they write an NCHW buffer that finish() copies into the result.
struct Output {
  at::Tensor result, buffer;

  explicit Output(const at::Tensor& like)
      : result(at::empty_like(like)),
        buffer(has_plane_layout(result) ? result : at::empty(like.sizes(), like.options())) {}

  at::Tensor finish() {
    if (!buffer.is_same(result)) result.copy_(buffer);
    return result;
  }
};

void check_content(const at::Tensor& content, double eps) {
  TORCH_CHECK(content.is_cuda(), "adain: the CUDA kernels need CUDA tensors, got ",
              content.device());
  TORCH_CHECK(content.dim() == 4, "adain: content must be [N, C, H, W], got ", content.sizes());
  TORCH_CHECK(content.size(0) * content.size(1) <= INT_MAX,
              "adain: N * C must fit in a CUDA grid (one block per plane), got ",
              content.size(0) * content.size(1));
  TORCH_CHECK(eps > 0, "adain: eps must be positive, got ", eps);
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& content) {
  TORCH_CHECK(t.device() == content.device() && t.scalar_type() == content.scalar_type(),
              "adain: ", name, " must match content's device and dtype (", content.device(), ", ",
              content.scalar_type(), "), got ", t.device(), ", ", t.scalar_type());
}

// style_mean / style_std: [N, C].
void check_stat(const at::Tensor& t, const char* name, const at::Tensor& content) {
  check_like(t, name, content);
  TORCH_CHECK(t.sizes() == content.sizes().slice(0, 2), "adain: ", name, " must be [N, C] = ",
              content.sizes().slice(0, 2), ", got ", t.sizes());
}

// style: [N, C, Hs, Ws], any spatial size.
void check_style(const at::Tensor& style, const at::Tensor& content) {
  check_like(style, "style", content);
  TORCH_CHECK(style.dim() == 4 && style.sizes().slice(0, 2) == content.sizes().slice(0, 2),
              "adain: style must be [N, C, Hs, Ws] with content's N, C = ",
              content.sizes().slice(0, 2), ", got ", style.sizes());
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& content) {
  check_like(grad_out, "grad_out", content);
  TORCH_CHECK(grad_out.sizes() == content.sizes(), "adain: grad_out must have content's shape ",
              content.sizes(), ", got ", grad_out.sizes());
}

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "adain: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

int64_t plane_size(const at::Tensor& t) { return t.size(2) * t.size(3); }

at::Tensor adain_fwd(const at::Tensor& content, const at::Tensor& style_mean,
                     const at::Tensor& style_std, double eps) {
  check_content(content, eps);
  check_stat(style_mean, "style_mean", content);
  check_stat(style_std, "style_std", content);
  const c10::cuda::CUDAGuard guard(content.device());
  const at::Tensor x = with_plane_layout(content);
  const at::Tensor mean_y = style_mean.contiguous(), std_y = style_std.contiguous();
  Output out(content);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adain_fwd", [&] {
    check_launch(fastgen::adain_forward_cuda<scalar_t>(
        planes<const scalar_t>(x), mean_y.data_ptr<scalar_t>(), std_y.data_ptr<scalar_t>(),
        planes<scalar_t>(out.buffer), x.size(0), x.size(1), plane_size(x), eps,
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return out.finish();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_bwd(const at::Tensor& grad_out,
                                                         const at::Tensor& content,
                                                         const at::Tensor& style_mean,
                                                         const at::Tensor& style_std, double eps) {
  check_content(content, eps);
  check_grad_out(grad_out, content);
  check_stat(style_mean, "style_mean", content);
  check_stat(style_std, "style_std", content);
  const c10::cuda::CUDAGuard guard(content.device());
  const at::Tensor g = with_plane_layout(grad_out), x = with_plane_layout(content);
  const at::Tensor std_y = style_std.contiguous();
  Output grad_content(content);
  at::Tensor grad_mean = at::empty({x.size(0), x.size(1)}, x.options());
  at::Tensor grad_std = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adain_bwd", [&] {
    check_launch(fastgen::adain_backward_cuda<scalar_t>(
        planes<const scalar_t>(g), planes<const scalar_t>(x), std_y.data_ptr<scalar_t>(),
        planes<scalar_t>(grad_content.buffer), grad_mean.data_ptr<scalar_t>(),
        grad_std.data_ptr<scalar_t>(), x.size(0), x.size(1), plane_size(x), eps,
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return {grad_content.finish(), grad_mean, grad_std};
}

at::Tensor adain_from_style_fwd(const at::Tensor& content, const at::Tensor& style, double eps) {
  check_content(content, eps);
  check_style(style, content);
  const c10::cuda::CUDAGuard guard(content.device());
  const at::Tensor x = with_plane_layout(content), s = with_plane_layout(style);
  Output out(content);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adain_from_style_fwd", [&] {
    check_launch(fastgen::adain_from_style_forward_cuda<scalar_t>(
        planes<const scalar_t>(x), planes<const scalar_t>(s), planes<scalar_t>(out.buffer),
        x.size(0), x.size(1), plane_size(x), plane_size(s), eps,
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return out.finish();
}

std::tuple<at::Tensor, at::Tensor> adain_from_style_bwd(const at::Tensor& grad_out,
                                                        const at::Tensor& content,
                                                        const at::Tensor& style, double eps) {
  check_content(content, eps);
  check_grad_out(grad_out, content);
  check_style(style, content);
  const c10::cuda::CUDAGuard guard(content.device());
  const at::Tensor g = with_plane_layout(grad_out), x = with_plane_layout(content),
                   s = with_plane_layout(style);
  Output grad_content(content), grad_style(style);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adain_from_style_bwd", [&] {
    check_launch(fastgen::adain_from_style_backward_cuda<scalar_t>(
        planes<const scalar_t>(g), planes<const scalar_t>(x), planes<const scalar_t>(s),
        planes<scalar_t>(grad_content.buffer), planes<scalar_t>(grad_style.buffer), x.size(0),
        x.size(1), plane_size(x), plane_size(s), eps, at::cuda::getCurrentCUDAStream().stream()));
  });
  return {grad_content.finish(), grad_style.finish()};
}

void check_spectral_norm_inputs(const at::Tensor& weight_mat, const at::Tensor& u,
                                const at::Tensor& v, int64_t n_power_iterations, double eps) {
  TORCH_CHECK(weight_mat.is_cuda(), "spectral_norm_step: the CUDA kernels need CUDA tensors, got ",
              weight_mat.device());
  TORCH_CHECK(weight_mat.dim() == 2 && weight_mat.numel() > 0,
              "spectral_norm_step: weight_mat must be a non-empty 2-D tensor, got ",
              weight_mat.sizes());
  TORCH_CHECK(weight_mat.scalar_type() == at::kFloat || weight_mat.scalar_type() == at::kDouble,
              "spectral_norm_step: the CUDA kernels take float32 or float64, got ",
              weight_mat.scalar_type());
  const int64_t m = weight_mat.size(0), n = weight_mat.size(1);
  TORCH_CHECK(u.dim() == 1 && u.size(0) == m, "spectral_norm_step: u must have shape [", m,
              "], got ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, "spectral_norm_step: v must have shape [", n,
              "], got ", v.sizes());
  for (const at::Tensor* t : {&u, &v}) {
    TORCH_CHECK(t->device() == weight_mat.device() && t->scalar_type() == weight_mat.scalar_type(),
                "spectral_norm_step: u and v must match weight_mat's device and dtype (",
                weight_mat.device(), ", ", weight_mat.scalar_type(), "), got ", t->device(), ", ",
                t->scalar_type());
  }
  TORCH_CHECK(n_power_iterations >= 1, "spectral_norm_step: n_power_iterations must be >= 1, got ",
              n_power_iterations);
  TORCH_CHECK(eps > 0, "spectral_norm_step: eps must be positive, got ", eps);
}

// u's value is not read: the first power-iteration step overwrites it (its shape, dtype and device
// are still checked, as the schema's other backends do).
std::tuple<at::Tensor, at::Tensor, at::Tensor> spectral_norm_step(const at::Tensor& weight_mat,
                                                                  const at::Tensor& u,
                                                                  const at::Tensor& v,
                                                                  int64_t n_power_iterations,
                                                                  double eps) {
  check_spectral_norm_inputs(weight_mat, u, v, n_power_iterations, eps);
  const c10::cuda::CUDAGuard guard(weight_mat.device());
  const at::Tensor w = weight_mat.contiguous(), v_in = v.contiguous();
  const int64_t m = w.size(0), n = w.size(1);
  at::Tensor sigma = at::empty({}, w.options());
  at::Tensor u_new = at::empty({m}, w.options()), v_new = at::empty({n}, w.options());
  at::Tensor workspace = at::empty({fastgen::spectral_norm_workspace_size(m, n)}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "spectral_norm_step", [&] {
    const cudaError_t err = fastgen::spectral_norm_step_cuda<scalar_t>(
        w.data_ptr<scalar_t>(), v_in.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(),
        u_new.data_ptr<scalar_t>(), v_new.data_ptr<scalar_t>(), workspace.data_ptr<scalar_t>(), m,
        n, n_power_iterations, eps, at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "spectral_norm_step: CUDA kernel launch failed: ",
                cudaGetErrorString(err));
  });
  return {sigma, u_new, v_new};
}

void check_vq_inputs(const at::Tensor& z, const at::Tensor& codebook) {
  TORCH_CHECK(z.is_cuda() && codebook.is_cuda(),
              "vq_nearest_l2: the CUDA kernel needs CUDA tensors, got ", z.device(), " and ",
              codebook.device());
  TORCH_CHECK(z.device() == codebook.device(), "vq_nearest_l2: codebook must be on z's device (",
              z.device(), "), got ", codebook.device());
  TORCH_CHECK(z.dim() == 2, "vq_nearest_l2: z must be 2-D [N, D], got ", z.sizes());
  TORCH_CHECK(codebook.dim() == 2, "vq_nearest_l2: codebook must be 2-D [K, D], got ",
              codebook.sizes());
  TORCH_CHECK(z.size(1) == codebook.size(1),
              "vq_nearest_l2: z and codebook must have the same dimension D, got ", z.sizes(),
              " and ", codebook.sizes());
  TORCH_CHECK(codebook.size(0) >= 1,
              "vq_nearest_l2: codebook must have at least one entry (K >= 1), got ",
              codebook.sizes());
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              "vq_nearest_l2: the CUDA kernel takes float32 or float64, got ", z.scalar_type());
  TORCH_CHECK(codebook.scalar_type() == z.scalar_type(),
              "vq_nearest_l2: codebook must have z's dtype (", z.scalar_type(), "), got ",
              codebook.scalar_type());
}

// (indices int64 [N], distances [N] in z's dtype); the kernel never builds the N x K matrix.
std::tuple<at::Tensor, at::Tensor> vq_nearest_l2(const at::Tensor& z, const at::Tensor& codebook) {
  check_vq_inputs(z, codebook);
  const c10::cuda::CUDAGuard guard(z.device());
  const at::Tensor zc = z.contiguous(), ec = codebook.contiguous();
  const int64_t n = zc.size(0), k = ec.size(0), d = zc.size(1);
  at::Tensor indices = at::empty({n}, zc.options().dtype(at::kLong));
  at::Tensor distances = at::empty({n}, zc.options());
  if (n == 0) return {indices, distances};
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "vq_nearest_l2", [&] {
    const cudaError_t err = fastgen::vq_nearest_l2_cuda<scalar_t>(
        zc.data_ptr<scalar_t>(), ec.data_ptr<scalar_t>(), n, k, d, indices.data_ptr<int64_t>(),
        distances.data_ptr<scalar_t>(), at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "vq_nearest_l2: CUDA kernel launch failed: ",
                cudaGetErrorString(err));
  });
  return {indices, distances};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CUDA, m) {
  m.impl("adain_fwd", TORCH_FN(adain_fwd));
  m.impl("adain_bwd", TORCH_FN(adain_bwd));
  m.impl("adain_from_style_fwd", TORCH_FN(adain_from_style_fwd));
  m.impl("adain_from_style_bwd", TORCH_FN(adain_from_style_bwd));
  m.impl("spectral_norm_step", TORCH_FN(spectral_norm_step));
  m.impl("vq_nearest_l2", TORCH_FN(vq_nearest_l2));
}
