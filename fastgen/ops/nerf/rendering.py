"""Volume rendering ops on packed rays: ``fastgen::volume_render_weights`` and the fused
``fastgen::volume_render`` (spec: ``reference.py``; public API: ``fastgen.nerf.rendering``).

Both take samples packed by ray, [N] (rgbs [N, C]), with ``packed_info`` [R, 2] int64 rows
(start, count), the starts being the exclusive cumulative sum of the counts (the batched [R, S]
layout is the packed one with every count S). t_starts and t_ends get no gradient (nerfacc's
convention: the sampler's intervals are constants of the rendering).

Backends: the C++ CPU kernels, Triton (CUDA; CPU tensors under ``TRITON_INTERPRET=1``) and CUDA,
float32 and float64 (``fastgen.nerf`` computes half inputs in float32). The C++ kernels check
sample values themselves (NaN sigmas, t_end < t_start) as they read them; the reference and the
Triton launcher check them in Python first (``check_sample_values``). With early termination the
C++ kernel never reads the samples past the stop, so it does not check them either.
"""
from __future__ import annotations

import torch

from fastgen.ops import _checks as checks
from fastgen.ops._library import OpSpec, cpp_backend, cuda_backend, define, only_dtypes, triton_backend
from fastgen.ops.nerf.reference import (
    volume_render_backward_ref,
    volume_render_ref,
    volume_render_weights_backward_ref,
    volume_render_weights_ref,
)

_TRITON = "fastgen.ops.nerf.triton_rendering"
_FLOATS = only_dtypes(torch.float32, torch.float64)


def check_sample_values(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor) -> None:
    """NaN sigmas and negative intervals are errors (skipped while tracing)."""
    if torch.compiler.is_compiling() or not sigmas.numel():
        return
    if bool(torch.isnan(sigmas).any()):
        raise ValueError(f"sigmas contains NaN (first at sample {int(torch.isnan(sigmas).nonzero()[0, 0])})")
    bad = ~(t_ends >= t_starts)  # NaN intervals too
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"t_ends must be >= t_starts, got t_start = {float(t_starts[i])} and "
                         f"t_end = {float(t_ends[i])} at sample {i}")


def _weights_reference(sigmas, t_starts, t_ends, packed_info):
    check_sample_values(sigmas, t_starts, t_ends)
    return volume_render_weights_ref(sigmas, t_starts, t_ends, packed_info)


def _render_reference(sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps):
    check_sample_values(sigmas, t_starts, t_ends)
    return volume_render_ref(sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps)


VOLUME_RENDER_WEIGHTS = define(OpSpec(
    name="volume_render_weights",
    schema="(Tensor sigmas, Tensor t_starts, Tensor t_ends, Tensor packed_info) -> (Tensor, Tensor, Tensor)",
    reference=_weights_reference,
    fake=lambda sigmas, t_starts, t_ends, packed_info: tuple(sigmas.new_empty(sigmas.shape) for _ in range(3)),
    backends=(cpp_backend("volume_render_weights", _FLOATS),
              triton_backend(_TRITON, "volume_render_weights", _FLOATS),
              cuda_backend("volume_render_weights", _FLOATS)),
    no_grad_inputs=("t_starts", "t_ends", "packed_info"),
    backward_inputs=("t_starts", "t_ends", "packed_info"),
    backward_outputs=(0, 1, 2),
    backward=OpSpec(
        name="volume_render_weights_backward",
        schema="(Tensor grad_weights, Tensor grad_trans, Tensor grad_alphas, Tensor t_starts, Tensor t_ends, "
               "Tensor packed_info, Tensor weights, Tensor trans, Tensor alphas) -> Tensor",
        reference=volume_render_weights_backward_ref,
        fake=lambda grad_weights, *args: grad_weights.new_empty(grad_weights.shape),
        backends=(cpp_backend("volume_render_weights_backward", _FLOATS),
                  triton_backend(_TRITON, "volume_render_weights_backward", _FLOATS),
                  cuda_backend("volume_render_weights_backward", _FLOATS)),
        no_grad_inputs=("t_starts", "t_ends", "packed_info"),
    ),
))

VOLUME_RENDER = define(OpSpec(
    name="volume_render",
    schema="(Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor packed_info, "
           "float early_stop_eps) -> (Tensor, Tensor, Tensor)",
    reference=_render_reference,
    fake=lambda sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps: (
        sigmas.new_empty(packed_info.shape[0], rgbs.shape[1]), sigmas.new_empty(packed_info.shape[0], 1),
        sigmas.new_empty(packed_info.shape[0], 1)),
    backends=(cpp_backend("volume_render", _FLOATS),
              triton_backend(_TRITON, "volume_render", _FLOATS),
              cuda_backend("volume_render", _FLOATS)),
    no_grad_inputs=("t_starts", "t_ends", "packed_info"),
    backward=OpSpec(
        name="volume_render_backward",
        schema="(Tensor grad_colors, Tensor grad_opacities, Tensor grad_depths, Tensor sigmas, Tensor rgbs, "
               "Tensor t_starts, Tensor t_ends, Tensor packed_info, float early_stop_eps) -> (Tensor, Tensor)",
        reference=volume_render_backward_ref,
        fake=lambda grad_colors, grad_opacities, grad_depths, sigmas, rgbs, *args: (
            sigmas.new_empty(sigmas.shape), rgbs.new_empty(rgbs.shape)),
        backends=(cpp_backend("volume_render_backward", _FLOATS),
                  triton_backend(_TRITON, "volume_render_backward", _FLOATS),
                  cuda_backend("volume_render_backward", _FLOATS)),
        no_grad_inputs=("t_starts", "t_ends", "packed_info"),
    ),
))


def check_packed_inputs(sigmas: object, t_starts: object, t_ends: object, packed_info: object,
                        rgbs: object = None, check_tiling: bool = True) -> None:
    """Types, shapes, dtypes and devices of packed inputs, and (outside tracing, with ``check_tiling``)
    that packed_info tiles the samples in order. ``rgbs`` [N, C] when given."""
    checks.tensor("sigmas", sigmas)
    checks.float_dtype("sigmas", sigmas)
    if sigmas.dim() != 1:
        raise ValueError(f"sigmas must be 1-D [N] in the packed layout, got shape {tuple(sigmas.shape)}")
    for name, t in (("t_starts", t_starts), ("t_ends", t_ends)):
        checks.tensor(name, t)
        checks.like(name, t, "sigmas", sigmas)
        if t.shape != sigmas.shape:
            raise ValueError(f"{name} must have the shape of sigmas {tuple(sigmas.shape)}, got {tuple(t.shape)}")
    if rgbs is not None:
        checks.tensor("rgbs", rgbs)
        checks.like("rgbs", rgbs, "sigmas", sigmas)
        if rgbs.dim() != 2 or rgbs.shape[0] != sigmas.shape[0]:
            raise ValueError(f"rgbs must be [N, C] with N = {sigmas.shape[0]} (the samples), "
                             f"got shape {tuple(rgbs.shape)}")
    checks.tensor("packed_info", packed_info)
    if packed_info.dtype != torch.int64 or packed_info.dim() != 2 or packed_info.shape[1] != 2:
        raise ValueError(f"packed_info must be int64 [R, 2] (start, count), got {packed_info.dtype} "
                         f"{tuple(packed_info.shape)}")
    if packed_info.device != sigmas.device:
        raise ValueError(f"packed_info must be on the device of sigmas ({sigmas.device}), got {packed_info.device}")
    if torch.compiler.is_compiling() or not check_tiling:
        return
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    if bool((counts < 0).any()) or int(counts.sum()) != sigmas.shape[0] or not torch.equal(
            starts, counts.cumsum(0) - counts):
        raise ValueError(f"packed_info must hold (start, count) rows with counts >= 0 summing to N = "
                         f"{sigmas.shape[0]} and starts = exclusive cumsum of the counts (rays in order)")
