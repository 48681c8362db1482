"""Triton spectral-norm power iteration: one pass over W per iteration, none for sigma.

Per iteration, with t = W v:

* ``_rows_kernel``: each program takes blocks of BLOCK_M rows; for a block it computes
  t for those rows, then, while the block is still in cache, adds sum_i t_i W_i into
  its own row of a partials buffer [programs, N];
* ``_sum_partials_kernel``: r = W^T t, the partials summed over programs in a fixed
  order, so the result is deterministic (no atomics);
* ``_finalize_kernel`` (one program): u = t / max(|t|, eps), s = r / max(|t|, eps) = W^T u,
  v = s / max(|s|, eps) and sigma = u^T W v = s^T v = |s|^2 / max(|s|, eps).

Everything accumulates in float32 (float64 for float64 inputs), the running u and v
included, and the outputs are rounded once to the input dtype, as the reference does.

The launcher is a ``torch.library.triton_op`` so ``torch.compile`` traces into its
kernels. Under ``TRITON_INTERPRET=1`` the kernels also take CPU tensors.
"""
# No `from __future__ import annotations` here: Triton reads `eps: tl.float64` as a
# real annotation (a string would leave eps a float32 argument on the GPU).
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

# Rows per block: every block adds one partial row of N accumulation-dtype values,
# so taller blocks mean less partial traffic but fewer programs on short matrices.
_BLOCK_M = 16
_BLOCK_N = 128
# At most this many partial rows: taller matrices give each program several blocks,
# which keeps the sum over programs (and the partials' memory) bounded.
_MAX_PROGRAMS = 256
_MAX_BLOCK = 1024


@triton.jit
def _rows_kernel(w_ptr, v_ptr, t_ptr, part_ptr, M, N, stride_wm, stride_v,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """t = W v for this program's row blocks, and part[pid] = sum over those rows of t_i W_i."""
    ACC: tl.constexpr = t_ptr.dtype.element_ty
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    part = part_ptr + pid.to(tl.int64) * N
    # Blocks pid, pid + programs, ...; programs <= the block count, so every program has one.
    for i in range(0, tl.cdiv(tl.cdiv(M, BLOCK_M) - pid, programs)):
        rows = (pid + i * programs) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wm
        t = tl.zeros([BLOCK_M], ACC)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_mask = cols < N
            v = tl.load(v_ptr + cols.to(tl.int64) * stride_v, mask=col_mask, other=0).to(ACC)
            w = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0).to(ACC)
            t += tl.sum(w * v[None, :], 1)
        tl.store(t_ptr + rows, t, mask=row_mask)
        # Second sweep over the same rows, just read, so W comes from cache rather than
        # memory. The program's first block finds no partial row yet: the masked load reads 0.
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_mask = cols < N
            w = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0).to(ACC)
            prev = tl.load(part + cols, mask=col_mask & (i > 0), other=0)
            tl.store(part + cols, prev + tl.sum(w * t[:, None], 0), mask=col_mask)


@triton.jit
def _sum_partials_kernel(part_ptr, r_ptr, N, programs, BLOCK: tl.constexpr):
    """r = the partial rows summed in program order, over this program's columns."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    part = part_ptr + cols
    r = tl.zeros([BLOCK], r_ptr.dtype.element_ty)
    for _ in range(programs):
        r += tl.load(part, mask=mask, other=0)
        part += N  # pointer arithmetic: no int32 product programs * N to overflow
    tl.store(r_ptr + cols, r, mask=mask)


@triton.jit
def _sum_squares(x_ptr, n, scale, BLOCK: tl.constexpr):
    """sum((x / scale)^2) over x[0:n]."""
    total = tl.zeros([BLOCK], x_ptr.dtype.element_ty)
    for start in range(0, n, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + idx, mask=idx < n, other=0) / scale
        total += x * x
    return tl.sum(total, 0)


@triton.jit
def _finalize_kernel(t_ptr, r_ptr, u_ptr, v_ptr, sigma_ptr, M, N, eps: tl.float64, BLOCK: tl.constexpr):
    """u = t / max(|t|, eps), v = s / max(|s|, eps) with s = r / max(|t|, eps), sigma = s^T v.

    u and v may be t and r themselves: each element is read before it is overwritten.
    """
    ACC: tl.constexpr = t_ptr.dtype.element_ty
    # eps arrives as float64 so float64 inputs see it unrounded; the max is taken in
    # float64 and rounded to ACC, which keeps eps above zero for half-precision inputs.
    t_denom = tl.maximum(tl.sqrt(_sum_squares(t_ptr, M, 1, BLOCK)), eps).to(ACC)
    # r = W^T W v is about sigma^2 |v|: scaling it to s before squaring keeps the sum of
    # squares (about sigma^2, like the reference's) from overflowing float32 first.
    s_norm = tl.sqrt(_sum_squares(r_ptr, N, t_denom, BLOCK))
    s_denom = tl.maximum(s_norm, eps).to(ACC)
    for start in range(0, M, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        t = tl.load(t_ptr + idx, mask=idx < M, other=0)
        tl.store(u_ptr + idx, (t / t_denom).to(u_ptr.dtype.element_ty), mask=idx < M)
    for start in range(0, N, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        s = tl.load(r_ptr + idx, mask=idx < N, other=0) / t_denom
        tl.store(v_ptr + idx, (s / s_denom).to(v_ptr.dtype.element_ty), mask=idx < N)
    tl.store(sigma_ptr, (s_norm * s_norm / s_denom).to(sigma_ptr.dtype.element_ty))


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 8)


@triton_op("fastgen::spectral_norm_step_triton", mutates_args={})
def spectral_norm_step(weight_mat: Tensor, u: Tensor, v: Tensor, n_power_iterations: int,
                       eps: float) -> tuple[Tensor, Tensor, Tensor]:
    m, n = weight_mat.shape
    w = weight_mat if weight_mat.stride(1) == 1 else weight_mat.contiguous()
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    sigma = weight_mat.new_empty(())
    u_new, v_new = torch.empty_like(u), torch.empty_like(v)
    # Like the C++ kernel, u's buffer holds t = W v until the finalize normalizes it in
    # place, and v's holds r = W^T t; both are the outputs themselves when those are
    # already in the accumulation dtype. u is never read: power iteration starts from W v.
    t = u_new if u.dtype == acc else torch.empty(m, dtype=acc, device=u.device)
    v_acc = v_new if v.dtype == acc else torch.empty(n, dtype=acc, device=v.device)
    block_m = min(triton.next_power_of_2(m), _BLOCK_M)
    block_n = min(triton.next_power_of_2(n), _BLOCK_N)
    programs = min(triton.cdiv(m, block_m), _MAX_PROGRAMS)
    partials = torch.empty((programs, n), dtype=acc, device=w.device)
    reduce_block = min(triton.next_power_of_2(n), _MAX_BLOCK)
    final_block = min(triton.next_power_of_2(max(m, n)), _MAX_BLOCK)
    # The first iteration reads v as given (its dtype, its stride); later ones the
    # accumulation-dtype v left by the previous finalize.
    v_in, v_stride = v, v.stride(0)
    for iteration in range(n_power_iterations):
        wrap_triton(_rows_kernel)[(programs,)](
            w, v_in, t, partials, m, n, w.stride(0), v_stride,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_num_warps(block_m * block_n))
        wrap_triton(_sum_partials_kernel)[(triton.cdiv(n, reduce_block),)](
            partials, v_acc, n, programs, BLOCK=reduce_block, num_warps=_num_warps(reduce_block))
        # Only the last iteration rounds v to its own dtype; earlier ones keep it in acc.
        v_out = v_new if iteration == n_power_iterations - 1 else v_acc
        wrap_triton(_finalize_kernel)[(1,)](
            t, v_acc, u_new, v_out, sigma, m, n, eps, BLOCK=final_block, num_warps=_num_warps(final_block))
        v_in, v_stride = v_acc, 1
    return sigma, u_new, v_new
