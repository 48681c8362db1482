"""Fast ops, each a ``fastgen::`` custom op with a plain-torch reference."""
from fastgen.ops._library import BackendUnavailableError
from fastgen.ops.adain import adain, adain_from_style
from fastgen.ops.cpu_cache import cpu_cache_clear, cpu_cache_info, cpu_cache_set_limit
from fastgen.ops import nerf  # noqa: F401  (registers the NeRF ops; their API is fastgen.nerf)
from fastgen.ops.fid import sqrtm, trace_sqrt_product
from fastgen.ops.gram import gram_matrix
from fastgen.ops.spectral_norm import spectral_norm_step
from fastgen.ops.vq import vq_cluster_stats, vq_nearest

__all__ = ["BackendUnavailableError", "adain", "adain_from_style", "cpu_cache_clear", "cpu_cache_info",
           "cpu_cache_set_limit", "gram_matrix", "spectral_norm_step", "sqrtm", "trace_sqrt_product",
           "vq_cluster_stats", "vq_nearest"]
