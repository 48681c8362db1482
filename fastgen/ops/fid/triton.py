"""Triton coupled Newton-Schulz matrix square root: batched matmuls with the iteration fused in.

With Y0 = A / |A|_F and Z0 = I, every iteration is two launches over a batch of n x n matrices:

* ``_step_kernel``: T = 1.5 I - 0.5 Z Y, and for every output tile the sum of squares of
  Z Y - I (summed per matrix in torch: |I - Z Y|_F, the convergence test);
* ``_pair_kernel``: Y <- Y T and Z <- T Z in one launch (the first grid axis picks the product).

After the loop X = Y |A|_F^1/2, and ``_step_kernel`` again gives |X X - A|_F / |A|_F, from the
tile sums of squares of (X X - A) / |A|_F (scaled first, so large A cannot overflow them).

Products are ``tl.dot`` over [BLOCK, BLOCK_K] x [BLOCK_K, BLOCK] tiles, masked for any n, and
accumulate in the input dtype. float32 dots run at ``input_precision="ieee"``: TF32's 10-bit
mantissa (relative error ~1e-3) would stall the iteration far above its default tolerance
sqrt(eps). float64 dots compile (checked ahead of time, no GPU here) to fp64 MMA on sm_80, sm_90
and sm_100 and to FMA elsewhere.

Host syncs: the reference reads |I - Z Y|_F back every iteration. Here the norms of up to
``_CHECK_EVERY`` iterations are read back at once, so a GPU keeps its launch queue full; the loop
stops at the first check that finds an iteration where every matrix had converged. That runs
up to ``_CHECK_EVERY - 1`` iterations more than the reference (never past ``max_iter``); past
convergence an iteration only brings Y and Z closer to the fixed point, so X agrees with the
reference to the tolerance, not bitwise.

The launcher is a plain function, not a ``torch.library.triton_op``: its iteration count is
decided on the host from the data, so torch.compile could not trace it anyway; it sees
``fastgen::sqrtm_newton_schulz`` through that op's fake kernel. Under ``TRITON_INTERPRET=1`` the
kernels also take CPU tensors. Without a GPU here the kernels have only run in the interpreter
and been compiled ahead of time; they have not been run or timed on a GPU.
"""
import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgen.ops.fid.reference import newton_schulz_scale

# tl.dot needs every block dimension >= 16 on NVIDIA GPUs.
_MIN_BLOCK = 16
# Output tiles of up to 64 x 64, the shared dimension in chunks of 32, 8 warps. Compiled ahead of
# time for sm_80 and sm_90, neither kernel spills (at most 122 registers a thread for float32, 160
# for float64); with 4 warps both dtypes hit 255 registers and spill.
_MAX_BLOCK = 64
_MAX_BLOCK_K = 32
_WARPS = 8
_CHECK_EVERY = 4
_PRECISION = "ieee"


@triton.jit
def _tile_product(a_ptr, b_ptr, n, rows, cols, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """A[rows, :] @ B[:, cols] for row-major n x n A and B, in their dtype (out-of-range entries 0)."""
    ACC: tl.constexpr = a_ptr.dtype.element_ty
    acc = tl.zeros([rows.shape[0], cols.shape[0]], ACC)
    row_ok = rows < n
    col_ok = cols < n
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * n
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < n
        a = tl.load(a_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(b_ptr + ks.to(tl.int64)[:, None] * n + cols[None, :], mask=k_ok[:, None] & col_ok[None, :],
                    other=0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _step_kernel(a_ptr, b_ptr, c_ptr, ref_ptr, ref_norm_ptr, sq_ptr, n, alpha, beta,
                 AGAINST_REF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    """C = alpha A B + beta I, and sq[matrix, tile] = the tile's sum of E^2 with E = A B - I, or
    E = (A B - REF) / ref_norm[matrix] when AGAINST_REF. Grid: (matrices, row tiles, column tiles)."""
    matrix = tl.program_id(0).to(tl.int64)
    offset = matrix * n * n
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    acc = _tile_product(a_ptr + offset, b_ptr + offset, n, rows, cols, BLOCK_K, PRECISION)
    mask = (rows < n)[:, None] & (cols < n)[None, :]
    eye = tl.where((rows[:, None] == cols[None, :]) & mask, 1.0, 0.0).to(acc.dtype)
    out = rows.to(tl.int64)[:, None] * n + cols[None, :]
    tl.store(c_ptr + offset + out, alpha * acc + beta * eye, mask=mask)
    if AGAINST_REF:
        err = (acc - tl.load(ref_ptr + offset + out, mask=mask, other=0)) / tl.load(ref_norm_ptr + matrix)
    else:
        err = acc - eye  # out-of-range entries are 0 in both
    tile = tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
    tl.store(sq_ptr + matrix * tl.num_programs(1) * tl.num_programs(2) + tile, tl.sum(tl.sum(err * err, 1), 0))


@triton.jit
def _pair_kernel(y_ptr, t_ptr, z_ptr, y_out_ptr, z_out_ptr, n, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Y_out = Y T (even programs on axis 0) and Z_out = T Z (odd ones). Grid: (2 x matrices, row
    tiles, column tiles)."""
    offset = (tl.program_id(0) // 2).to(tl.int64) * n * n
    if tl.program_id(0) % 2 == 0:
        a_ptr, b_ptr, c_ptr = y_ptr, t_ptr, y_out_ptr
    else:
        a_ptr, b_ptr, c_ptr = t_ptr, z_ptr, z_out_ptr
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    acc = _tile_product(a_ptr + offset, b_ptr + offset, n, rows, cols, BLOCK_K, PRECISION)
    mask = (rows < n)[:, None] & (cols < n)[None, :]
    tl.store(c_ptr + offset + rows.to(tl.int64)[:, None] * n + cols[None, :], acc, mask=mask)


def _block(n: int, cap: int) -> int:
    return max(min(triton.next_power_of_2(n), cap), _MIN_BLOCK)


def sqrtm_newton_schulz(a: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    """(X, |X X - A|_F / |A|_F) for a [..., n, n] float32 or float64, as ``sqrtm_newton_schulz_ref``."""
    n = a.shape[-1]
    mats = a.reshape(-1, n, n).contiguous()
    batch = mats.shape[0]
    if batch == 0:  # no matrices: nothing to launch, and no norms to check
        return torch.empty_like(a, memory_format=torch.contiguous_format), a.new_empty(a.shape[:-2])
    block, block_k = _block(n, _MAX_BLOCK), _block(n, _MAX_BLOCK_K)
    tiles = triton.cdiv(n, block)
    config = {"BLOCK": block, "BLOCK_K": block_k, "PRECISION": _PRECISION, "num_warps": _WARPS}
    scale = newton_schulz_scale(mats)
    y = mats / scale
    z = torch.eye(n, dtype=a.dtype, device=a.device).repeat(batch, 1, 1)
    t, y_next, z_next = torch.empty_like(y), torch.empty_like(y), torch.empty_like(y)
    # Tile sums of squares of Z Y - I for the iterations since the last check.
    sq = torch.empty((_CHECK_EVERY, batch, tiles * tiles), dtype=a.dtype, device=a.device)
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        pending = 0
        for iteration in range(max_iter):
            # alpha and beta go in as float32, exact for these values. The ref arguments are
            # unused without AGAINST_REF: any pointer of the dtype will do.
            _step_kernel[(batch, tiles, tiles)](z, y, t, t, t, sq[pending], n, -0.5, 1.5, AGAINST_REF=False,
                                                **config)
            _pair_kernel[(2 * batch, tiles, tiles)](y, t, z, y_next, z_next, n, **config)
            y, y_next, z, z_next = y_next, y, z_next, z
            pending += 1
            if pending == _CHECK_EVERY and iteration < max_iter - 1:  # after the last, nothing to stop
                worst = sq[:pending].sum(-1).amax(-1).sqrt()  # |I - Z Y|_F of the batch's worst matrix
                if bool((worst <= tol).any()):  # one sync; NaN never passes
                    break
                pending = 0
        x = y * scale.sqrt()
        residual_sq = sq[0]
        _step_kernel[(batch, tiles, tiles)](x, x, t, mats, scale, residual_sq, n, 1.0, 0.0, AGAINST_REF=True,
                                            **config)
    return x.reshape(a.shape), residual_sq.sum(-1).sqrt().reshape(a.shape[:-2])
