"""Triton Gram-matrix kernels: the forward computes only the tiles on and below the diagonal.

Forward: one program per (lower-triangle tile, sample). It accumulates a BLOCK x BLOCK tile of
F F^T with ``tl.dot`` over N and stores it twice, at (i, j) and mirrored at (j, i), so half the
multiply-adds of a general product. Backward: dF = (dG + dG^T) F, a tiled product whose A tile is
read from dG at (i, k) and (k, i) and summed on load, so the symmetric matrix is never stored.

Float32 products follow ``torch.backends.cuda.matmul.allow_tf32`` (off by default: exact float32,
as torch.bmm). Accumulation is float32 (float64 for float64). Each launcher is a
``torch.library.triton_op`` so ``torch.compile`` traces into its kernel. Under ``TRITON_INTERPRET=1``
the kernels also take CPU tensors.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton


@triton.jit
def _lower_tile(t):
    """(i, j) with j <= i of the t-th tile of the lower triangle, row by row: t = i (i + 1) / 2 + j."""
    i = ((tl.sqrt(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    # The float square root may land one off for large t: correct it with integer arithmetic.
    i = tl.where(i * (i + 1) // 2 > t, i - 1, i)
    i = tl.where((i + 1) * (i + 2) // 2 <= t, i + 1, i)
    return i, t - i * (i + 1) // 2


@triton.jit
def _gram_fwd_kernel(f_ptr, g_ptr, C, N, sfb, sfc, sfn, sgb, sgr, sgc,
                     BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if f_ptr.dtype.element_ty == tl.float64 else tl.float32
    ti, tj = _lower_tile(tl.program_id(0))
    b = tl.program_id(1).to(tl.int64)
    rows = ti * BLOCK + tl.arange(0, BLOCK)
    cols = tj * BLOCK + tl.arange(0, BLOCK)
    f = f_ptr + b * sfb
    acc = tl.zeros([BLOCK, BLOCK], ACC)
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(f + rows[:, None].to(tl.int64) * sfc + ks[None, :].to(tl.int64) * sfn,
                    mask=(rows[:, None] < C) & (ks[None, :] < N), other=0)
        # F^T tile [BLOCK_K, BLOCK] read straight from F: rows of the j block along the columns.
        bt = tl.load(f + cols[None, :].to(tl.int64) * sfc + ks[:, None].to(tl.int64) * sfn,
                     mask=(cols[None, :] < C) & (ks[:, None] < N), other=0)
        acc += tl.dot(a, bt, input_precision=PRECISION, out_dtype=ACC)
    out = acc.to(g_ptr.dtype.element_ty)
    g = g_ptr + b * sgb
    r64 = rows.to(tl.int64)
    c64 = cols.to(tl.int64)
    inside = (rows[:, None] < C) & (cols[None, :] < C)
    tl.store(g + r64[:, None] * sgr + c64[None, :] * sgc, out, mask=inside)
    if ti != tj:  # the mirror image above the diagonal: element (r, c) of the tile also goes to G[c, r]
        tl.store(g + c64[None, :] * sgr + r64[:, None] * sgc, out, mask=inside)


@triton.jit
def _gram_bwd_kernel(dg_ptr, f_ptr, df_ptr, C, N, sgb, sgr, sgc, sfb, sfc, sfn, sdb, sdc, sdn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if f_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    b = tl.program_id(2).to(tl.int64)
    dg = dg_ptr + b * sgb
    f = f_ptr + b * sfb
    r64 = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    for k0 in range(0, C, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k64 = ks.to(tl.int64)
        in_a = (rows[:, None] < C) & (ks[None, :] < C)
        s = (tl.load(dg + r64[:, None] * sgr + k64[None, :] * sgc, mask=in_a, other=0).to(ACC)
             + tl.load(dg + k64[None, :] * sgr + r64[:, None] * sgc, mask=in_a, other=0).to(ACC))
        fk = tl.load(f + k64[:, None] * sfc + cols[None, :] * sfn,
                     mask=(ks[:, None] < C) & (cols[None, :] < N), other=0).to(ACC)
        acc += tl.dot(s, fk, input_precision=PRECISION, out_dtype=ACC)
    tl.store(df_ptr + b * sdb + r64[:, None] * sdc + cols[None, :] * sdn, acc.to(df_ptr.dtype.element_ty),
             mask=(rows[:, None] < C) & (cols[None, :] < N))


def _precision(t: Tensor) -> str:
    tf32 = t.dtype == torch.float32 and t.is_cuda and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "ieee"


def _block(t: Tensor, gpu: int) -> int:
    # The interpreter (CPU tensors) runs each program in numpy: small tiles keep the tests quick.
    return gpu if t.is_cuda else 16


@triton_op("fastgen::gram_matrix_fwd_triton", mutates_args={})
def gram_matrix_fwd(features: Tensor) -> Tensor:
    b, c, n = features.shape
    gram = torch.empty((b, c, c), dtype=features.dtype, device=features.device)
    block = _block(features, 64)
    tiles = triton.cdiv(c, block)
    wrap_triton(_gram_fwd_kernel)[(tiles * (tiles + 1) // 2, b)](
        features, gram, c, n, *features.stride(), *gram.stride(),
        BLOCK=block, BLOCK_K=_block(features, 32), PRECISION=_precision(features), num_warps=4)
    return gram


@triton_op("fastgen::gram_matrix_bwd_triton", mutates_args={})
def gram_matrix_bwd(grad_out: Tensor, features: Tensor) -> Tensor:
    b, c, n = features.shape
    grad = torch.empty((b, c, n), dtype=features.dtype, device=features.device)
    block_m, block_n = _block(features, 64), _block(features, 64)
    grid = (triton.cdiv(c, block_m), triton.cdiv(n, block_n), b)
    wrap_triton(_gram_bwd_kernel)[grid](
        grad_out, features, grad, c, n, *grad_out.stride(), *features.stride(), *grad.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=_block(features, 32), PRECISION=_precision(features),
        num_warps=4)
    return grad
