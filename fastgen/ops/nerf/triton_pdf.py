"""Triton ``fastgen::sample_pdf``: NeRF's inverse-CDF sampling, one program per block of rays.

A program loads its rays' weights as a [BLOCK_R, BLOCK_S1] tile and builds the CDF there as the
reference does (the float32 prefixes accumulated in float64 and rounded, divided by the last: see
reference.py); entries past S become +inf so that they never count. Then, BLOCK_N samples at a
time, it compares every u with the whole CDF in one [BLOCK_R, BLOCK_N, BLOCK_S1] block: the count
of values <= u is searchsorted(right=True), the largest such value is cdf[below] and the smallest
other one cdf[above] (the CDF is non-decreasing), so no gather from registers is needed; the edges
bins[below], bins[above] are loaded from memory. O(S n) comparisons per ray, which a GPU hides
for NeRF's S (64-128); CDFs longer than MAX_CDF values are left to the other backends.

Under ``TRITON_INTERPRET=1`` it runs on CPU tensors (the tests). Without a GPU here, the GPU path has
only been compiled ahead of time (float32 and float64, sm_80 and sm_90, BLOCK_S1 = 64); it has not
been run or timed.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

MAX_CDF = 1024  # S + 1 values of one ray's CDF held in registers
_BLOCK_R = 4
_TILE = 8192  # elements of the comparison block


@triton.jit
def _sample_pdf_kernel(bins_ptr, w_ptr, u_ptr, out_ptr, R, S, N, u_row_stride,
                       BLOCK_R: tl.constexpr, BLOCK_S1: tl.constexpr, BLOCK_N: tl.constexpr):
    """bins [R, S + 1], weights [R, S], out [R, N] contiguous; u row r at u_ptr + r * u_row_stride."""
    T: tl.constexpr = w_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    ks = tl.arange(0, BLOCK_S1)
    real = (ks >= 1) & (ks <= S)  # cdf[k] for k in 1..S sums the weights 0..k-1
    w = tl.load(w_ptr + rows[:, None] * S + (ks[None, :] - 1), mask=row_mask[:, None] & real[None, :], other=0)
    pdf = tl.where(real[None, :], w + 1e-5, 0).to(tl.float64)
    cdf = tl.cumsum(pdf, axis=1).to(T)
    total = tl.max(cdf, axis=1)  # = cdf[S]: padding adds zeros
    total = tl.where(row_mask, total, 1)
    cdf = cdf / total[:, None]
    cdf = tl.where((ks <= S)[None, :], cdf, float("inf"))
    bins_rows = bins_ptr + rows * (S + 1)
    for n0 in range(0, N, BLOCK_N):
        js = n0 + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (js < N)[None, :]
        u = tl.load(u_ptr + rows[:, None] * u_row_stride + js[None, :], mask=mask, other=0)
        le = cdf[:, None, :] <= u[:, :, None]
        inds = tl.sum(le.to(tl.int32), axis=2)
        cdf_below = tl.max(tl.where(le, cdf[:, None, :], 0), axis=2)
        cdf_above = tl.min(tl.where(le, float("inf"), cdf[:, None, :]), axis=2)
        cdf_above = tl.where(inds > S, cdf_below, cdf_above)  # above = S = below
        below = tl.maximum(inds - 1, 0)
        above = tl.minimum(inds, S)
        bins_below = tl.load(bins_rows[:, None] + below, mask=mask, other=0)
        bins_above = tl.load(bins_rows[:, None] + above, mask=mask, other=0)
        denom = cdf_above - cdf_below
        denom = tl.where(denom < 1e-5, 1, denom).to(T)
        t = (u - cdf_below) / denom
        tl.store(out_ptr + rows[:, None] * N + js[None, :], bins_below + t * (bins_above - bins_below), mask=mask)


@triton_op("fastgen::sample_pdf_triton", mutates_args={})
def sample_pdf(bins: Tensor, weights: Tensor, u: Tensor | None, n_samples: int) -> Tensor:
    rays, s = weights.shape
    out = torch.empty(rays, n_samples, dtype=weights.dtype, device=weights.device)
    if rays == 0:
        return out
    if u is None:  # one shared row: the reference's linspace, bit for bit
        u_rows, u_row_stride = torch.linspace(0.0, 1.0, n_samples, dtype=weights.dtype, device=weights.device), 0
    else:
        u_rows, u_row_stride = u.contiguous(), n_samples
    block_s1 = triton.next_power_of_2(s + 1)
    block_n = max(1, min(triton.next_power_of_2(n_samples), _TILE // (_BLOCK_R * block_s1)))
    wrap_triton(_sample_pdf_kernel)[(triton.cdiv(rays, _BLOCK_R),)](
        bins.contiguous(), weights.contiguous(), u_rows, out, rays, s, n_samples, u_row_stride,
        BLOCK_R=_BLOCK_R, BLOCK_S1=block_s1, BLOCK_N=block_n)
    return out
