// The torch-facing glue of fastgen._C: op schemas, and an empty Python module whose
// import runs the static registrations (kernels register themselves per device in
// csrc/cpu/*.cpp and, in a CUDA build, csrc/cuda/bindings.cpp).
#include <Python.h>
#include <torch/library.h>

#include "cpu/output_cache.h"

TORCH_LIBRARY(fastgen_C, m) {
  m.def("adain_fwd(Tensor content, Tensor style_mean, Tensor style_std, float eps) -> Tensor");
  m.def("adain_bwd(Tensor grad_out, Tensor content, Tensor style_mean, Tensor style_std, float eps)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("adain_from_style_fwd(Tensor content, Tensor style, float eps) -> Tensor");
  m.def("adain_from_style_bwd(Tensor grad_out, Tensor content, Tensor style, float eps) -> (Tensor, Tensor)");
  m.def("spectral_norm_step(Tensor weight_mat, Tensor u, Tensor v, int n_power_iterations, float eps)"
        " -> (Tensor, Tensor, Tensor)");
  // One training step of a spectrally normalized layer, updating the buffers u, v in place
  // (see csrc/cpu/spectral_norm.cpp): sigma, or weight / sigma.
  m.def("spectral_norm_layer_sigma(Tensor weight, Tensor(a!) u, Tensor(b!) v, int dim, int n_power_iterations,"
        " float eps, float sigma_floor) -> Tensor");
  m.def("spectral_norm_layer_weight(Tensor weight, Tensor(a!) u, Tensor(b!) v, int dim, int n_power_iterations,"
        " float eps, float sigma_floor) -> Tensor");

  // VQ (csrc/cpu/vq.cpp): nearest codebook entry by squared L2 distance, (indices, distances);
  // and the EMA statistics of a codebook, (counts [K], sums [K, D]).
  m.def("vq_nearest_l2(Tensor z, Tensor codebook) -> (Tensor, Tensor)");
  m.def("vq_cluster_stats(Tensor z, Tensor indices, int codebook_size) -> (Tensor, Tensor)");

  // Gram matrices (csrc/cpu/gram_matrix.cpp): G = F F^T [B, C, C] of features [B, C, N], unnormalized;
  // the backward is (dG + dG^T) F.
  m.def("gram_matrix_fwd(Tensor features) -> Tensor");
  m.def("gram_matrix_bwd(Tensor grad_out, Tensor features) -> Tensor");

  // FID (csrc/cpu/symmetrize.cpp): (A + A^T) / 2 of [..., n, n] and its check's
  // stats [..., 2] = (max |A - A^T|, max |(A + A^T) / 2|), in one pass.
  m.def("symmetrize_checked(Tensor a) -> (Tensor, Tensor)");

  m.def("cpu_cache_info() -> int[]", &fastgen::cpu_cache_info);
  m.def("cpu_cache_clear() -> ()", &fastgen::cpu_cache_clear);
  m.def("cpu_cache_set_limit(int megabytes) -> ()", &fastgen::cpu_cache_set_limit);

  // NeRF ray marching (csrc/cpu/ray_marching.cpp): ray-box intersection (t_mins, t_maxs, hits) and
  // the samples of rays through a multi-level occupancy grid (ray_indices, t_starts, t_ends).
  m.def("ray_aabb_intersect(Tensor rays_o, Tensor rays_d, Tensor aabbs, float near_plane, float far_plane,"
        " float miss_value) -> (Tensor, Tensor, Tensor)");
  m.def("occupancy_grid_march(Tensor rays_o, Tensor rays_d, Tensor t_starts, Tensor t_ends, Tensor binaries,"
        " float[] roi_aabb, float step_size, float cone_angle, int max_samples) -> (Tensor, Tensor, Tensor)");

  // NeRF hierarchical sampling (csrc/cpu/sample_pdf.cpp): inverse-CDF samples [R, n_samples] of
  // weights [R, S] over edges bins [R, S + 1]; u = None is linspace(0, 1, n_samples).
  m.def("sample_pdf(Tensor bins, Tensor weights, Tensor? u, int n_samples) -> Tensor");

  // NeRF volume rendering (csrc/cpu/volume_rendering.cpp), packed rays: per-sample (weights, trans,
  // alphas) from densities; and fused compositing with early ray termination, (colors [R, C],
  // opacities [R, 1], depths [R, 1]); each with its backward.
  m.def("volume_render_weights(Tensor sigmas, Tensor t_starts, Tensor t_ends, Tensor packed_info)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("volume_render_weights_backward(Tensor grad_weights, Tensor grad_trans, Tensor grad_alphas,"
        " Tensor t_starts, Tensor t_ends, Tensor packed_info, Tensor weights, Tensor trans, Tensor alphas) -> Tensor");
  m.def("volume_render(Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor packed_info,"
        " float early_stop_eps) -> (Tensor, Tensor, Tensor)");
  m.def("volume_render_backward(Tensor grad_colors, Tensor grad_opacities, Tensor grad_depths, Tensor sigmas,"
        " Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor packed_info, float early_stop_eps) -> (Tensor, Tensor)");
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastgen native kernels (ops under torch.ops.fastgen_C)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
