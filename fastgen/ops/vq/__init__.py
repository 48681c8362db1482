"""VQ nearest-codebook search (``fastgen::vq_nearest_l2``) and codebook statistics (``fastgen::vq_cluster_stats``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.ops import _checks as checks
from fastgen.ops._library import (
    OpSpec,
    cpp_backend,
    cuda_backend,
    define,
    only_dtypes,
    to_accumulation_dtype,
    triton_backend,
)
from fastgen.ops.vq.reference import vq_cluster_stats_ref, vq_nearest_l2_backward_ref, vq_nearest_l2_ref

_TRITON = "fastgen.ops.vq.triton"

VQ_NEAREST_L2 = define(OpSpec(
    name="vq_nearest_l2",
    schema="(Tensor z, Tensor codebook) -> (Tensor, Tensor)",
    reference=vq_nearest_l2_ref,
    fake=lambda z, codebook: (z.new_empty(z.shape[0], dtype=torch.int64), z.new_empty(z.shape[0])),
    backends=(cpp_backend("vq_nearest_l2"),
              triton_backend(_TRITON, "vq_nearest_l2"),
              cuda_backend("vq_nearest_l2", only_dtypes(torch.float32, torch.float64))),
    no_grad_outputs=(0,),  # the indices
    backward_outputs=(0,),
    backward=OpSpec(
        name="vq_nearest_l2_backward",
        schema="(Tensor grad_distances, Tensor z, Tensor codebook, Tensor indices) -> (Tensor, Tensor)",
        reference=vq_nearest_l2_backward_ref,
        fake=lambda grad_distances, z, codebook, indices: (torch.empty_like(z), torch.empty_like(codebook)),
        no_grad_inputs=("indices",),
    ),
))

VQ_CLUSTER_STATS = define(OpSpec(
    name="vq_cluster_stats",
    schema="(Tensor z, Tensor indices, int codebook_size) -> (Tensor, Tensor)",
    reference=vq_cluster_stats_ref,
    fake=lambda z, indices, codebook_size: (
        z.new_empty(codebook_size, dtype=to_accumulation_dtype(z[:0]).dtype),
        z.new_empty(codebook_size, z.shape[1], dtype=to_accumulation_dtype(z[:0]).dtype)),
    backends=(cpp_backend("vq_cluster_stats"),),
    no_grad_inputs=("z", "indices"),
))

METRICS = ("l2", "cosine")


def _check_matrix(name: str, t: object, expected: str) -> None:
    checks.tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D {expected}, got shape {tuple(t.shape)}")
    checks.float_dtype(name, t)


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not checks.all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf: its nearest codebook entry is undefined")


def check_inputs(z: object, codebook: object, metric: object = "l2") -> None:
    """Shape, dtype, device, metric and finiteness checks shared by the op and VectorQuantizer."""
    _check_matrix("z", z, "[N, D]")
    _check_matrix("codebook", codebook, "[K, D]")
    if codebook.shape[0] == 0:
        raise ValueError("codebook must have at least one entry (K >= 1), got shape "
                         f"{tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z and codebook must have the same dimension D: z is {tuple(z.shape)}, "
                         f"codebook is {tuple(codebook.shape)}")
    checks.like("codebook", codebook, "z", z)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    _check_finite("z", z)
    _check_finite("codebook", codebook)


def vq_nearest(z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", *,
               impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest codebook entry of every row of z [N, D] among codebook [K, D]: (indices, distances).

    ``metric="l2"``: indices = argmin_k |z_n - e_k|^2 and distances the squared L2 distance to it.
    ``metric="cosine"``: both sides are L2-normalized first; distances = 1 - cos(z_n, e_k) (in [0, 2]).
    Ties go to the lowest index, as ``torch.argmin``. ``indices`` is int64 and carries no gradient;
    ``distances`` (in z's dtype) is differentiable with respect to z and codebook, the indices held
    fixed. float16 and bfloat16 are computed in float32. N = 0 gives empty results; K = 0, a D
    mismatch, or NaN / Inf in either input raises ValueError. The fused kernels never build the
    N x K distance matrix.
    """
    check_inputs(z, codebook, metric)
    if metric == "cosine":
        # On unit vectors |z - e|^2 = 2 - 2 cos: the same argmin, and half of it is 1 - cos.
        z, codebook = F.normalize(z, dim=1), F.normalize(codebook, dim=1)
    if z.shape[0] == 0:
        return z.new_empty(0, dtype=torch.int64), z.new_empty(0)
    indices, distances = VQ_NEAREST_L2.call(z, codebook, impl=impl)
    return indices, (distances / 2 if metric == "cosine" else distances)


def vq_cluster_stats(z: torch.Tensor, indices: torch.Tensor, codebook_size: int, *,
                     impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """How many rows of z [N, D] chose each of ``codebook_size`` codes, and the sum of those rows:
    (counts [K], sums [K, D]), in float32 for half inputs. The EMA codebook update's statistics, in
    one pass over z (a fused scatter-add on the CPU). No gradient."""
    _check_matrix("z", z, "[N, D]")
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.shape != z.shape[:1]:
        raise ValueError(f"indices must be an int64 tensor of shape [{z.shape[0]}], got "
                         f"{getattr(indices, 'dtype', type(indices).__name__)} {tuple(getattr(indices, 'shape', ()))}")
    checks.positive_int("codebook_size", codebook_size)
    if indices.numel() and not torch.compiler.is_compiling():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= codebook_size:
            raise ValueError(f"indices must be in [0, {codebook_size}), got values in [{low}, {high}]")
    return VQ_CLUSTER_STATS.call(z, indices, codebook_size, impl=impl)
