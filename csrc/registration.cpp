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

  m.def("cpu_cache_info() -> int[]", &fastgen::cpu_cache_info);
  m.def("cpu_cache_clear() -> ()", &fastgen::cpu_cache_clear);
  m.def("cpu_cache_set_limit(int megabytes) -> ()", &fastgen::cpu_cache_set_limit);
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastgen native kernels (ops under torch.ops.fastgen_C)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
