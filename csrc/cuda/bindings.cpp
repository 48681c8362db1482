// CUDA implementations of the fastgen_C ops (schemas in csrc/registration.cpp): validate,
// allocate outputs, and call the torch-free launchers in adain.cu, spectral_norm.cu, vq.cu, the NeRF
// kernels and gram_matrix.cu.
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

// NeRF ray marching (csrc/cuda/ray_marching.cu): ray-box intersection and occupancy-grid marching,
// count-then-fill as the CPU kernel (csrc/cpu/ray_marching.cpp).
#include "ray_marching.cuh"

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> ray_aabb_intersect_cuda_op(const at::Tensor& rays_o,
                                                                          const at::Tensor& rays_d,
                                                                          const at::Tensor& aabbs, double near_plane,
                                                                          double far_plane, double miss_value) {
  TORCH_CHECK(rays_o.is_cuda() && rays_d.device() == rays_o.device() && aabbs.device() == rays_o.device(),
              "ray_aabb_intersect: rays_o, rays_d and aabbs must be on one CUDA device");
  TORCH_CHECK(rays_o.dim() == 2 && rays_o.size(1) == 3 && rays_d.sizes() == rays_o.sizes(),
              "ray_aabb_intersect: rays_o and rays_d must be [n, 3], got ", rays_o.sizes(), " and ", rays_d.sizes());
  TORCH_CHECK(aabbs.dim() == 2 && aabbs.size(1) == 6, "ray_aabb_intersect: aabbs must be [m, 6], got ",
              aabbs.sizes());
  TORCH_CHECK((rays_o.scalar_type() == at::kFloat || rays_o.scalar_type() == at::kDouble) &&
                  rays_d.scalar_type() == rays_o.scalar_type() && aabbs.scalar_type() == rays_o.scalar_type(),
              "ray_aabb_intersect: rays_o, rays_d and aabbs must all be float32 or all float64");
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const at::Tensor o = rays_o.contiguous(), d = rays_d.contiguous(), boxes = aabbs.contiguous();
  const int64_t n = o.size(0), m = boxes.size(0);
  at::Tensor t_mins = at::empty({n, m}, o.options());
  at::Tensor t_maxs = at::empty({n, m}, o.options());
  at::Tensor hits = at::empty({n, m}, o.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "ray_aabb_intersect", [&] {
    const cudaError_t err = fastgen::ray_aabb_intersect_cuda<scalar_t>(
        o.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), n, m,
        static_cast<scalar_t>(near_plane), static_cast<scalar_t>(far_plane), static_cast<scalar_t>(miss_value),
        t_mins.data_ptr<scalar_t>(), t_maxs.data_ptr<scalar_t>(), hits.data_ptr<bool>(),
        at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "ray_aabb_intersect: CUDA kernel launch failed: ", cudaGetErrorString(err));
  });
  return {t_mins, t_maxs, hits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> occupancy_grid_march_cuda_op(
    const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& binaries, at::ArrayRef<double> roi_aabb, double step_size, double cone_angle,
    int64_t max_samples) {
  TORCH_CHECK(rays_o.is_cuda() && rays_d.device() == rays_o.device() && t_starts.device() == rays_o.device() &&
                  t_ends.device() == rays_o.device() && binaries.device() == rays_o.device(),
              "occupancy_grid_march: all tensors must be on one CUDA device");
  TORCH_CHECK(rays_o.dim() == 2 && rays_o.size(1) == 3 && rays_d.sizes() == rays_o.sizes(),
              "occupancy_grid_march: rays_o and rays_d must be [n, 3], got ", rays_o.sizes(), " and ",
              rays_d.sizes());
  const int64_t n = rays_o.size(0);
  TORCH_CHECK(t_starts.dim() == 1 && t_starts.size(0) == n && t_ends.sizes() == t_starts.sizes(),
              "occupancy_grid_march: t_starts and t_ends must be [", n, "]");
  TORCH_CHECK(binaries.dim() == 4 && binaries.scalar_type() == at::kBool && binaries.size(0) >= 1,
              "occupancy_grid_march: binaries must be bool [levels, rx, ry, rz], got ", binaries.sizes());
  TORCH_CHECK(roi_aabb.size() == 6, "occupancy_grid_march: roi_aabb must have 6 values");
  TORCH_CHECK(step_size > 0 && cone_angle >= 0, "occupancy_grid_march: step_size must be > 0 and cone_angle >= 0");
  TORCH_CHECK(rays_o.scalar_type() == rays_d.scalar_type() &&
                  (rays_o.scalar_type() == at::kFloat || rays_o.scalar_type() == at::kDouble),
              "occupancy_grid_march: rays_o and rays_d must both be float32 or float64");
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const at::Tensor bins = binaries.contiguous();
  constexpr int64_t B = fastgen::kOccupancyBlock;
  int64_t blocks[3], pad[6];
  for (int a = 0; a < 3; ++a) {
    blocks[a] = (bins.size(a + 1) + B - 1) / B;
    pad[4 - 2 * a] = 0;  // constant_pad_nd pads the last dim first
    pad[5 - 2 * a] = blocks[a] * B - bins.size(a + 1);
  }
  const at::Tensor block_occupied =
      at::constant_pad_nd(bins.to(at::kByte), pad)
          .view({bins.size(0), blocks[0], B, blocks[1], B, blocks[2], B})
          .amax({2, 4, 6})
          .contiguous();
  fastgen::OccupancyGridView grid{bins.data_ptr<bool>(),
                                  block_occupied.data_ptr<uint8_t>(),
                                  bins.size(0),
                                  {bins.size(1), bins.size(2), bins.size(3)},
                                  {blocks[0], blocks[1], blocks[2]},
                                  {roi_aabb[0], roi_aabb[1], roi_aabb[2], roi_aabb[3], roi_aabb[4], roi_aabb[5]}};
  const at::Tensor o = rays_o.to(at::kDouble).contiguous(), d = rays_d.to(at::kDouble).contiguous();
  const at::Tensor t0 = t_starts.to(at::kDouble).contiguous(), t1 = t_ends.to(at::kDouble).contiguous();
  at::Tensor counts = at::zeros({n}, o.options().dtype(at::kLong));
  cudaError_t err = fastgen::occupancy_grid_march_count_cuda(grid, o.data_ptr<double>(), d.data_ptr<double>(),
                                                             t0.data_ptr<double>(), t1.data_ptr<double>(), n,
                                                             step_size, cone_angle, counts.data_ptr<int64_t>(), stream);
  TORCH_CHECK(err == cudaSuccess, "occupancy_grid_march: CUDA kernel launch failed: ", cudaGetErrorString(err));
  const at::Tensor ends_at = at::cumsum(counts, 0);
  const int64_t total = n ? ends_at[n - 1].item<int64_t>() : 0;  // the one host sync: the output size
  TORCH_CHECK(total <= max_samples, "occupancy_grid_march: the rays take ", total, " samples, more than max_samples=",
              max_samples, "; raise render_step_size, march fewer rays at a time, or raise max_samples");
  const at::Tensor offsets = ends_at - counts;
  at::Tensor ray_indices = at::empty({total}, o.options().dtype(at::kLong));
  at::Tensor starts = at::empty({total}, rays_o.options());
  at::Tensor ends = at::empty({total}, rays_o.options());
  if (total == 0) return {ray_indices, starts, ends};
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "occupancy_grid_march", [&] {
    err = fastgen::occupancy_grid_march_fill_cuda<scalar_t>(
        grid, o.data_ptr<double>(), d.data_ptr<double>(), t0.data_ptr<double>(), t1.data_ptr<double>(), n, step_size,
        cone_angle, offsets.data_ptr<int64_t>(), ray_indices.data_ptr<int64_t>(), starts.data_ptr<scalar_t>(),
        ends.data_ptr<scalar_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "occupancy_grid_march: CUDA kernel launch failed: ", cudaGetErrorString(err));
  });
  return {ray_indices, starts, ends};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CUDA, m) {
  m.impl("ray_aabb_intersect", TORCH_FN(ray_aabb_intersect_cuda_op));
  m.impl("occupancy_grid_march", TORCH_FN(occupancy_grid_march_cuda_op));
}

// ---- NeRF hierarchical sampling (sample_pdf.cu): checks, the output and the CDF workspace, then the launcher ----

#include <optional>

#include "../sample_pdf_checks.h"
#include "sample_pdf.cuh"

namespace {

at::Tensor sample_pdf_cuda_op(const at::Tensor& bins, const at::Tensor& weights, const std::optional<at::Tensor>& u,
                              int64_t n_samples) {
  TORCH_CHECK(weights.is_cuda() && bins.is_cuda() && bins.device() == weights.device(),
              "sample_pdf: the CUDA kernel needs bins and weights on one CUDA device, got ", bins.device(), " and ",
              weights.device());
  const int64_t rays = weights.size(0), s = fastgen::check_sample_pdf_inputs(bins, weights, n_samples, "CUDA");
  const c10::cuda::CUDAGuard guard(weights.device());
  at::Tensor u_rows;
  if (u.has_value()) {
    TORCH_CHECK(u->device() == weights.device() && u->scalar_type() == weights.scalar_type() && u->dim() == 2 &&
                    u->size(0) == rays && u->size(1) == n_samples,
                "sample_pdf: u must be [R, n_samples] = [", rays, ", ", n_samples, "] on weights' device and dtype, got ",
                u->sizes(), " ", u->scalar_type(), " on ", u->device());
    u_rows = u->contiguous();
  } else {
    u_rows = at::linspace(0.0, 1.0, n_samples, weights.options());  // one row, shared: stride 0
  }
  const at::Tensor b = bins.contiguous(), w = weights.contiguous();
  at::Tensor out = at::empty({rays, n_samples}, w.options());
  at::Tensor cdf = at::empty({rays, s + 1}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "sample_pdf", [&] {
    const cudaError_t err = fastgen::sample_pdf_cuda<scalar_t>(
        b.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), u_rows.data_ptr<scalar_t>(), u.has_value() ? n_samples : 0,
        rays, s, n_samples, cdf.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "sample_pdf: CUDA kernel launch failed: ", cudaGetErrorString(err));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CUDA, m) { m.impl("sample_pdf", TORCH_FN(sample_pdf_cuda_op)); }

// ---- NeRF volume rendering (volume_rendering.cu): packed rays, schemas in csrc/registration.cpp ----
#include "volume_rendering.cuh"

namespace {

void check_volume_render_tensor(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like,
                                at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == like.scalar_type() && t.sizes() == shape, op, ": ",
              name, " must be ", like.scalar_type(), " ", shape, " on ", like.device(), ", got ", t.scalar_type(), " ",
              t.sizes(), " on ", t.device());
}

// sigmas [N] (CUDA, float32 or float64), t_starts / t_ends like it, packed_info int64 [R, 2] on its
// device. That the rows tile [0, N) in order is checked by the Python layer (here it would sync).
void check_volume_render_samples(const char* op, const at::Tensor& sigmas, const at::Tensor& t_starts,
                                 const at::Tensor& t_ends, const at::Tensor& packed_info) {
  TORCH_CHECK(sigmas.is_cuda(), op, ": the CUDA kernels need CUDA tensors, got ", sigmas.device());
  TORCH_CHECK(sigmas.scalar_type() == at::kFloat || sigmas.scalar_type() == at::kDouble, op,
              ": the CUDA kernels take float32 or float64, got ", sigmas.scalar_type());
  TORCH_CHECK(sigmas.dim() == 1, op, ": sigmas must be 1-D [N], got ", sigmas.sizes());
  check_volume_render_tensor(op, t_starts, "t_starts", sigmas, sigmas.sizes());
  check_volume_render_tensor(op, t_ends, "t_ends", sigmas, sigmas.sizes());
  TORCH_CHECK(packed_info.device() == sigmas.device() && packed_info.scalar_type() == at::kLong &&
                  packed_info.dim() == 2 && packed_info.size(1) == 2,
              op, ": packed_info must be int64 [R, 2] on ", sigmas.device(), ", got ", packed_info.scalar_type(), " ",
              packed_info.sizes(), " on ", packed_info.device());
}

void check_volume_render_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volume_render_weights_cuda_op(const at::Tensor& sigmas,
                                                                             const at::Tensor& t_starts,
                                                                             const at::Tensor& t_ends,
                                                                             const at::Tensor& packed_info) {
  check_volume_render_samples("volume_render_weights", sigmas, t_starts, t_ends, packed_info);
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const at::Tensor s = sigmas.contiguous(), t0 = t_starts.contiguous(), t1 = t_ends.contiguous();
  const at::Tensor info = packed_info.contiguous();
  at::Tensor weights = at::empty_like(s), trans = at::empty_like(s), alphas = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "volume_render_weights", [&] {
    check_volume_render_launch("volume_render_weights", fastgen::volume_render_weights_cuda<scalar_t>(
        s.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(), t1.data_ptr<scalar_t>(), info.data_ptr<int64_t>(),
        info.size(0), weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>(),
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return {weights, trans, alphas};
}

at::Tensor volume_render_weights_backward_cuda_op(const at::Tensor& grad_weights, const at::Tensor& grad_trans,
                                                  const at::Tensor& grad_alphas, const at::Tensor& t_starts,
                                                  const at::Tensor& t_ends, const at::Tensor& packed_info,
                                                  const at::Tensor& weights, const at::Tensor& trans,
                                                  const at::Tensor& alphas) {
  constexpr const char* op = "volume_render_weights_backward";
  check_volume_render_samples(op, weights, t_starts, t_ends, packed_info);
  check_volume_render_tensor(op, grad_weights, "grad_weights", weights, weights.sizes());
  check_volume_render_tensor(op, grad_trans, "grad_trans", weights, weights.sizes());
  check_volume_render_tensor(op, grad_alphas, "grad_alphas", weights, weights.sizes());
  check_volume_render_tensor(op, trans, "trans", weights, weights.sizes());
  check_volume_render_tensor(op, alphas, "alphas", weights, weights.sizes());
  const c10::cuda::CUDAGuard guard(weights.device());
  const at::Tensor gw = grad_weights.contiguous(), gt = grad_trans.contiguous(), ga = grad_alphas.contiguous();
  const at::Tensor t0 = t_starts.contiguous(), t1 = t_ends.contiguous(), info = packed_info.contiguous();
  const at::Tensor w = weights.contiguous(), tr = trans.contiguous(), al = alphas.contiguous();
  at::Tensor grad_sigmas = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), op, [&] {
    check_volume_render_launch(op, fastgen::volume_render_weights_backward_cuda<scalar_t>(
        gw.data_ptr<scalar_t>(), gt.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(),
        t1.data_ptr<scalar_t>(), info.data_ptr<int64_t>(), info.size(0), w.data_ptr<scalar_t>(),
        tr.data_ptr<scalar_t>(), al.data_ptr<scalar_t>(), grad_sigmas.data_ptr<scalar_t>(),
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return grad_sigmas;
}

void check_volume_render_rgbs(const char* op, const at::Tensor& rgbs, const at::Tensor& sigmas,
                              double early_stop_eps) {
  TORCH_CHECK(rgbs.dim() == 2 && rgbs.size(1) >= 1, op, ": rgbs must be [N, C] with C >= 1, got ", rgbs.sizes());
  check_volume_render_tensor(op, rgbs, "rgbs", sigmas, {sigmas.size(0), rgbs.size(1)});
  TORCH_CHECK(early_stop_eps >= 0, op, ": early_stop_eps must be >= 0, got ", early_stop_eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> volume_render_cuda_op(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                                                     const at::Tensor& t_starts,
                                                                     const at::Tensor& t_ends,
                                                                     const at::Tensor& packed_info,
                                                                     double early_stop_eps) {
  check_volume_render_samples("volume_render", sigmas, t_starts, t_ends, packed_info);
  check_volume_render_rgbs("volume_render", rgbs, sigmas, early_stop_eps);
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const at::Tensor s = sigmas.contiguous(), c = rgbs.contiguous(), t0 = t_starts.contiguous();
  const at::Tensor t1 = t_ends.contiguous(), info = packed_info.contiguous();
  const int64_t n_rays = info.size(0), channels = c.size(1);
  at::Tensor colors = at::empty({n_rays, channels}, s.options());
  at::Tensor opacities = at::empty({n_rays, 1}, s.options()), depths = at::empty({n_rays, 1}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "volume_render", [&] {
    check_volume_render_launch("volume_render", fastgen::volume_render_cuda<scalar_t>(
        s.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(), t1.data_ptr<scalar_t>(),
        info.data_ptr<int64_t>(), n_rays, channels, static_cast<scalar_t>(early_stop_eps),
        colors.data_ptr<scalar_t>(), opacities.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return {colors, opacities, depths};
}

std::tuple<at::Tensor, at::Tensor> volume_render_backward_cuda_op(
    const at::Tensor& grad_colors, const at::Tensor& grad_opacities, const at::Tensor& grad_depths,
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& packed_info, double early_stop_eps) {
  constexpr const char* op = "volume_render_backward";
  check_volume_render_samples(op, sigmas, t_starts, t_ends, packed_info);
  check_volume_render_rgbs(op, rgbs, sigmas, early_stop_eps);
  const int64_t n_rays = packed_info.size(0), channels = rgbs.size(1);
  check_volume_render_tensor(op, grad_colors, "grad_colors", sigmas, {n_rays, channels});
  check_volume_render_tensor(op, grad_opacities, "grad_opacities", sigmas, {n_rays, 1});
  check_volume_render_tensor(op, grad_depths, "grad_depths", sigmas, {n_rays, 1});
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const at::Tensor gc = grad_colors.contiguous(), go = grad_opacities.contiguous(), gd = grad_depths.contiguous();
  const at::Tensor s = sigmas.contiguous(), c = rgbs.contiguous(), t0 = t_starts.contiguous();
  const at::Tensor t1 = t_ends.contiguous(), info = packed_info.contiguous();
  at::Tensor grad_sigmas = at::empty_like(s), grad_rgbs = at::empty_like(c);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), op, [&] {
    check_volume_render_launch(op, fastgen::volume_render_backward_cuda<scalar_t>(
        gc.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
        c.data_ptr<scalar_t>(), t0.data_ptr<scalar_t>(), t1.data_ptr<scalar_t>(), info.data_ptr<int64_t>(), n_rays,
        channels, static_cast<scalar_t>(early_stop_eps), grad_sigmas.data_ptr<scalar_t>(),
        grad_rgbs.data_ptr<scalar_t>(), at::cuda::getCurrentCUDAStream().stream()));
  });
  return {grad_sigmas, grad_rgbs};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CUDA, m) {
  m.impl("volume_render_weights", TORCH_FN(volume_render_weights_cuda_op));
  m.impl("volume_render_weights_backward", TORCH_FN(volume_render_weights_backward_cuda_op));
  m.impl("volume_render", TORCH_FN(volume_render_cuda_op));
  m.impl("volume_render_backward", TORCH_FN(volume_render_backward_cuda_op));
}

// ---- Gram matrices (gram_matrix.cu): contiguous copies in, contiguous outputs ----
#include "gram_matrix.cuh"

namespace {

void check_gram_features(const at::Tensor& features) {
  TORCH_CHECK(features.is_cuda(), "gram_matrix: the CUDA kernels need CUDA tensors, got ", features.device());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
              "gram_matrix: the CUDA kernels take float32 or float64, got ", features.scalar_type());
  TORCH_CHECK(features.dim() == 3 && features.numel() > 0, "gram_matrix: features must be a non-empty [B, C, N], got ",
              features.sizes());
}

void check_gram_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "gram_matrix: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor gram_matrix_fwd_cuda_op(const at::Tensor& features) {
  check_gram_features(features);
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor f = features.contiguous();
  const int64_t b = f.size(0), c = f.size(1), n = f.size(2);
  at::Tensor gram = at::empty({b, c, c}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "gram_matrix_fwd", [&] {
    check_gram_launch(fastgen::gram_matrix_forward_cuda<scalar_t>(
        f.data_ptr<scalar_t>(), gram.data_ptr<scalar_t>(), b, c, n, at::cuda::getCurrentCUDAStream().stream()));
  });
  return gram;
}

at::Tensor gram_matrix_bwd_cuda_op(const at::Tensor& grad_out, const at::Tensor& features) {
  check_gram_features(features);
  const int64_t b = features.size(0), c = features.size(1), n = features.size(2);
  TORCH_CHECK(grad_out.device() == features.device() && grad_out.scalar_type() == features.scalar_type() &&
                  grad_out.sizes() == at::IntArrayRef({b, c, c}),
              "gram_matrix: grad_out must be ", features.scalar_type(), " [", b, ", ", c, ", ", c, "] on ",
              features.device(), ", got ", grad_out.scalar_type(), " ", grad_out.sizes(), " on ", grad_out.device());
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor g = grad_out.contiguous(), f = features.contiguous();
  at::Tensor grad_features = at::empty({b, c, n}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "gram_matrix_bwd", [&] {
    check_gram_launch(fastgen::gram_matrix_backward_cuda<scalar_t>(
        g.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), grad_features.data_ptr<scalar_t>(), b, c, n,
        at::cuda::getCurrentCUDAStream().stream()));
  });
  return grad_features;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CUDA, m) {
  m.impl("gram_matrix_fwd", TORCH_FN(gram_matrix_fwd_cuda_op));
  m.impl("gram_matrix_bwd", TORCH_FN(gram_matrix_bwd_cuda_op));
}
