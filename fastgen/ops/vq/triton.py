"""Triton VQ nearest-codebook search: a fused argmin that never builds the N x K distance matrix.

``_nearest_kernel``: each program takes BLOCK_N rows of z and walks the codebook in BLOCK_K
tiles. For a tile it forms the scores |e_k|^2 - 2 z_n . e_k (same argmin as |z_n - e_k|^2),
summing over D in BLOCK_D chunks (masked, so any D works), and folds the tile into a running
(min, argmin) per row:

* within a tile, the lowest code among the equal minima;
* across tiles, a strict ``<``, so an equal minimum in a later tile keeps the earlier code.

Together that is torch.argmin's tie rule: the lowest index. Once the codebook is done, the same
program reads its rows' chosen codes again and writes |z_n - e_idx|^2 from the difference, so
the distance is never negative (no cancellation as in the scores).

Accumulation is float32 for float32, float16 and bfloat16 inputs, float64 for float64. The
z . e products use ``tl.dot`` (fp32 accumulation; half inputs go to it as they are, their
products are exact in fp32) except for float64, which takes an elementwise product and a sum:
``tl.dot`` does not take fp64 on every target.

float32 dots run at ``input_precision="ieee"``: Triton's default on NVIDIA is TF32, whose
10-bit mantissa (relative error ~1e-3) would pick a farther code wherever two codes are close.
"tf32x3" (three TF32 MMAs, about fp32 accuracy) would be faster on tensor cores, but it has not
been checked against the near-tie tests on a GPU, so it is not used.

The launcher is a ``torch.library.triton_op`` so ``torch.compile`` traces into its kernel.
Under ``TRITON_INTERPRET=1`` the kernel also takes CPU tensors (bfloat16 then goes to the dot as
float32, see ``_interpreting``). Without a GPU here, the GPU path has only been compiled ahead of
time for sm_80 and sm_90, for every dtype; it has not been run or timed.
"""
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

# tl.dot needs every block dimension >= 16 on NVIDIA GPUs.
_MIN_DOT = 16
# float32 / half: a [BLOCK_N, BLOCK_K] score tile per step, dots of BLOCK_D-wide chunks, 8 warps.
# Compiled (never run: no GPU here) for sm_90 these need no spills, at most 162 registers a thread
# for float32 and 128 for the half types; BLOCK_D = 64 spilled float32's several-chunk loop.
_BLOCK_N = 64
_BLOCK_K = 64
_BLOCK_D = 32
_WARPS = 8
# float64 multiplies elementwise into a [BLOCK_N, BLOCK_K, BLOCK_D] block before summing over D:
# keep that block small (4096 elements; at most 128 registers on sm_90 with 4 warps).
_BLOCK_N_F64 = 16
_BLOCK_K_F64 = 16
_BLOCK_D_F64 = 16
_WARPS_F64 = 4
_FP32_DOT_PRECISION = "ieee"


@triton.jit
def _tile_dots(z, e, acc, USE_DOT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
               ACC: tl.constexpr):
    """acc + z @ e^T for z [BLOCK_N, BLOCK_D] and e [BLOCK_K, BLOCK_D], in ACC."""
    if USE_DOT:
        if DOT_F32:
            z = z.to(tl.float32)
            e = e.to(tl.float32)
        acc = tl.dot(z, tl.trans(e), acc, input_precision=PRECISION, out_dtype=ACC)
    else:
        acc += tl.sum(z.to(ACC)[:, None, :] * e.to(ACC)[None, :, :], 2)
    return acc


@triton.jit
def _nearest_kernel(z_ptr, e_ptr, idx_ptr, dist_ptr, N, K, D,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                    ONE_D_TILE: tl.constexpr, USE_DOT: tl.constexpr, DOT_F32: tl.constexpr,
                    PRECISION: tl.constexpr):
    """z [N, D] and e [K, D] contiguous; writes idx [N] (int64) and dist [N] (z's dtype)."""
    ACC: tl.constexpr = tl.float64 if z_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    z_rows = z_ptr + rows.to(tl.int64)[:, None] * D
    dims = tl.arange(0, BLOCK_D)
    if ONE_D_TILE:
        # All of D in one chunk: the rows' z stays in registers for the whole codebook.
        z_tile = tl.load(z_rows + dims[None, :], mask=row_mask[:, None] & (dims < D)[None, :], other=0)

    best = tl.full([BLOCK_N], float("inf"), ACC)
    best_idx = tl.zeros([BLOCK_N], tl.int64)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_mask = codes < K
        e_rows = e_ptr + codes.to(tl.int64)[:, None] * D
        dots = tl.zeros([BLOCK_N, BLOCK_K], ACC)
        norms = tl.zeros([BLOCK_K], ACC)
        if ONE_D_TILE:
            e = tl.load(e_rows + dims[None, :], mask=code_mask[:, None] & (dims < D)[None, :], other=0)
            ef = e.to(ACC)
            norms += tl.sum(ef * ef, 1)
            dots = _tile_dots(z_tile, e, dots, USE_DOT, DOT_F32, PRECISION, ACC)
        else:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + dims
                col_mask = cols < D
                z = tl.load(z_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0)
                e = tl.load(e_rows + cols[None, :], mask=code_mask[:, None] & col_mask[None, :], other=0)
                ef = e.to(ACC)
                norms += tl.sum(ef * ef, 1)
                dots = _tile_dots(z, e, dots, USE_DOT, DOT_F32, PRECISION, ACC)
        scores = norms[None, :] - 2 * dots
        scores = tl.where(code_mask[None, :], scores, float("inf"))
        tile_min = tl.min(scores, 1)
        # The lowest code among the tile's equal minima (codes past K are never below K).
        tile_idx = tl.min(tl.where(scores == tile_min[:, None], codes[None, :], K), 1).to(tl.int64)
        better = tile_min < best  # strict: a tie with an earlier tile keeps the earlier code
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_idx, best_idx)

    # Distances from the difference to the chosen code, in ACC.
    chosen = e_ptr + best_idx[:, None] * D
    total = tl.zeros([BLOCK_N], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + dims
        mask = row_mask[:, None] & (cols < D)[None, :]
        diff = (tl.load(z_rows + cols[None, :], mask=mask, other=0).to(ACC)
                - tl.load(chosen + cols[None, :], mask=mask, other=0).to(ACC))
        total += tl.sum(diff * diff, 1)
    tl.store(idx_ptr + rows, best_idx, mask=row_mask)
    tl.store(dist_ptr + rows, total.to(dist_ptr.dtype.element_ty), mask=row_mask)


def _interpreting() -> bool:
    # The interpreter holds bfloat16 as raw uint16 bits and its tl.dot multiplies those bits as
    # integers, so there bfloat16 goes to the dot as float32: the same products (a product of two
    # bfloat16 values is exact in float32) and the same float32 sums.
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block(size: int, cap: int, floor: int) -> int:
    return max(min(triton.next_power_of_2(size), cap), floor)


@triton_op("fastgen::vq_nearest_l2_triton", mutates_args={})
def vq_nearest_l2(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    n, d = z.shape
    k = codebook.shape[0]
    z_c, e_c = z.contiguous(), codebook.contiguous()
    indices = torch.empty(n, dtype=torch.int64, device=z.device)
    distances = torch.empty(n, dtype=z.dtype, device=z.device)
    if n == 0:
        return indices, distances
    if z.dtype == torch.float64:
        use_dot, floor, warps = False, 1, _WARPS_F64
        caps = (_BLOCK_N_F64, _BLOCK_K_F64, _BLOCK_D_F64)
    else:
        use_dot, floor, warps = True, _MIN_DOT, _WARPS
        caps = (_BLOCK_N, _BLOCK_K, _BLOCK_D)
    block_n, block_k, block_d = (_block(size, cap, floor) for size, cap in zip((n, k, d), caps))
    # D = 0 is one masked chunk: every distance is 0 and code 0 wins (all scores are 0).
    one_d_tile = d <= block_d
    wrap_triton(_nearest_kernel)[(triton.cdiv(n, block_n),)](
        z_c, e_c, indices, distances, n, k, d,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, ONE_D_TILE=one_d_tile,
        USE_DOT=use_dot, DOT_F32=z.dtype == torch.bfloat16 and _interpreting(),
        PRECISION=_FP32_DOT_PRECISION, num_warps=warps)
    return indices, distances
