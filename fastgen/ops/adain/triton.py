"""Triton AdaIN kernels: one program per (n, c) plane, looping over it in BLOCK-sized chunks.

A plane is addressed as ``base + hw * stride_hw``, which covers contiguous and
channels_last tensors (and any layout whose H and W merge into one strided
index); other layouts go through a contiguous copy. Statistics accumulate in
float32 (float64 for float64 inputs), the variance as a centered second pass,
and every output is rounded once to the input dtype.

Each launcher is a ``torch.library.triton_op`` so ``torch.compile`` traces into
its kernel. Under ``TRITON_INTERPRET=1`` the kernels also take CPU tensors.
"""
# No `from __future__ import annotations` here: Triton reads `eps: tl.float64` as a
# real annotation (a string would leave eps a float32 argument on the GPU).
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

_MAX_BLOCK = 2048


@triton.jit
def _plane_stats(x, stride, m, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Mean and biased variance of the plane at pointer ``x``: a sum, then a centered sum of squares."""
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, m, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        total += tl.load(x + idx.to(tl.int64) * stride, mask=idx < m, other=0).to(ACC)
    mean = tl.sum(total, 0) / m
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, m, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        v = tl.load(x + idx.to(tl.int64) * stride, mask=idx < m, other=0).to(ACC)
        d = tl.where(idx < m, v - mean, 0)
        total += d * d
    return mean, tl.sum(total, 0) / m


@triton.jit
def _affine_write(src, src_stride, dst, dst_stride, m, center, scale, shift,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    """dst = (src - center) * scale + shift over one plane."""
    for start in range(0, m, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        hw = idx.to(tl.int64)
        v = tl.load(src + hw * src_stride, mask=idx < m, other=0).to(ACC)
        tl.store(dst + hw * dst_stride, ((v - center) * scale + shift).to(dst.dtype.element_ty), mask=idx < m)


@triton.jit
def _grad_content(g, g_stride, x, x_stride, gx, gx_stride, m, mean, rstd, std_y,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Writes d content of one plane; returns d mean_y = sum(g) and d std_y = sum(g * xhat)."""
    sum_g = tl.zeros([BLOCK], ACC)
    sum_gxhat = tl.zeros([BLOCK], ACC)
    for start in range(0, m, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        hw = idx.to(tl.int64)
        # Masked lanes load g = 0, so they add nothing to either sum.
        gv = tl.load(g + hw * g_stride, mask=idx < m, other=0).to(ACC)
        xv = tl.load(x + hw * x_stride, mask=idx < m, other=0).to(ACC)
        sum_g += gv
        sum_gxhat += gv * (xv - mean) * rstd
    grad_mean = tl.sum(sum_g, 0)
    grad_std = tl.sum(sum_gxhat, 0)
    scale = std_y * rstd
    mean_g = grad_mean / m
    mean_gxhat = grad_std / m
    for start in range(0, m, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        hw = idx.to(tl.int64)
        gv = tl.load(g + hw * g_stride, mask=idx < m, other=0).to(ACC)
        xhat = (tl.load(x + hw * x_stride, mask=idx < m, other=0).to(ACC) - mean) * rstd
        tl.store(gx + hw * gx_stride, (scale * (gv - mean_g - xhat * mean_gxhat)).to(gx.dtype.element_ty),
                 mask=idx < m)
    return grad_mean, grad_std


# In the kernels below, (s*n, s*c, s*) are a tensor's strides over N, C and the merged
# H*W index; C is the channel count, M (MS) the content (style) plane size; ACC is the
# accumulation dtype. eps arrives as float64 so float64 inputs see it unrounded: var + eps
# and its square root are scalar float64 math (once per plane), rounded to ACC before the
# per-element work.

@triton.jit
def _adain_fwd_kernel(x_ptr, mean_y_ptr, std_y_ptr, out_ptr, C, M, eps: tl.float64,
                      sxn, sxc, sx, son, soc, so, BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    n = pid // C
    c = pid % C
    x = x_ptr + n * sxn + c * sxc
    mean, var = _plane_stats(x, sx, M, ACC, BLOCK)
    scale = (1 / tl.sqrt(var + eps)).to(ACC) * tl.load(std_y_ptr + pid).to(ACC)
    _affine_write(x, sx, out_ptr + n * son + c * soc, so, M, mean, scale,
                  tl.load(mean_y_ptr + pid).to(ACC), ACC, BLOCK)


@triton.jit
def _adain_from_style_fwd_kernel(x_ptr, s_ptr, out_ptr, C, M, MS, eps: tl.float64,
                                 sxn, sxc, sx, ssn, ssc, ss, son, soc, so, BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    n = pid // C
    c = pid % C
    x = x_ptr + n * sxn + c * sxc
    mean_s, var_s = _plane_stats(s_ptr + n * ssn + c * ssc, ss, MS, ACC, BLOCK)
    mean, var = _plane_stats(x, sx, M, ACC, BLOCK)
    scale = (1 / tl.sqrt(var + eps)).to(ACC) * tl.sqrt(var_s + eps).to(ACC)
    _affine_write(x, sx, out_ptr + n * son + c * soc, so, M, mean, scale, mean_s, ACC, BLOCK)


@triton.jit
def _adain_bwd_kernel(g_ptr, x_ptr, std_y_ptr, gx_ptr, grad_mean_ptr, grad_std_ptr, C, M,
                      eps: tl.float64, sgn, sgc, sg, sxn, sxc, sx, sgxn, sgxc, sgx,
                      BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    n = pid // C
    c = pid % C
    x = x_ptr + n * sxn + c * sxc
    mean, var = _plane_stats(x, sx, M, ACC, BLOCK)
    rstd = (1 / tl.sqrt(var + eps)).to(ACC)
    grad_mean, grad_std = _grad_content(g_ptr + n * sgn + c * sgc, sg, x, sx, gx_ptr + n * sgxn + c * sgxc,
                                        sgx, M, mean, rstd, tl.load(std_y_ptr + pid).to(ACC), ACC, BLOCK)
    tl.store(grad_mean_ptr + pid, grad_mean.to(grad_mean_ptr.dtype.element_ty))
    tl.store(grad_std_ptr + pid, grad_std.to(grad_std_ptr.dtype.element_ty))


@triton.jit
def _adain_from_style_bwd_kernel(g_ptr, x_ptr, s_ptr, gx_ptr, gs_ptr, C, M, MS, eps: tl.float64,
                                 sgn, sgc, sg, sxn, sxc, sx, ssn, ssc, ss, sgxn, sgxc, sgx,
                                 sgsn, sgsc, sgs, BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    n = pid // C
    c = pid % C
    x = x_ptr + n * sxn + c * sxc
    s = s_ptr + n * ssn + c * ssc
    mean_s, var_s = _plane_stats(s, ss, MS, ACC, BLOCK)
    std_s = tl.sqrt(var_s + eps).to(ACC)
    mean, var = _plane_stats(x, sx, M, ACC, BLOCK)
    rstd = (1 / tl.sqrt(var + eps)).to(ACC)
    grad_mean, grad_std = _grad_content(g_ptr + n * sgn + c * sgc, sg, x, sx, gx_ptr + n * sgxn + c * sgxc,
                                        sgx, M, mean, rstd, std_s, ACC, BLOCK)
    # d style = (d mean_y + d std_y * (s - mean_s) / std_s) / MS
    _affine_write(s, ss, gs_ptr + n * sgsn + c * sgsc, sgs, MS, mean_s, grad_std / (std_s * MS),
                  grad_mean / MS, ACC, BLOCK)


def _hw_stride(t: Tensor) -> int | None:
    """The one stride that walks t's H x W planes in (h, w) order; None when H and W don't merge."""
    _, _, h, w = t.shape
    _, _, stride_h, stride_w = t.stride()
    if w == 1:
        return stride_h
    if h == 1 or stride_h == w * stride_w:
        return stride_w
    return None


def _strides(t: Tensor) -> tuple[int, int, int]:
    """The (N, C, H*W) strides of a tensor whose H and W merge."""
    return t.stride(0), t.stride(1), _hw_stride(t)


def _planes(t: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """t, or a contiguous copy when its H and W don't merge, with its (N, C, H*W) strides."""
    if _hw_stride(t) is None:
        t = t.contiguous()
    return t, _strides(t)


def _output_like(t: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.empty_like(t)`` and the buffer the kernel writes: the output itself, or a
    contiguous one when the output's H and W don't merge (see ``_copy_back``)."""
    out = torch.empty_like(t)
    return out, (out if _hw_stride(out) is not None else torch.empty(t.shape, dtype=t.dtype, device=t.device))


def _copy_back(out: Tensor, buf: Tensor) -> Tensor:
    return out if buf is out else out.copy_(buf)


def _config(m: int) -> dict:
    block = min(triton.next_power_of_2(m), _MAX_BLOCK)
    return {"BLOCK": block, "num_warps": min(max(block // 256, 1), 8)}


@triton_op("fastgen::adain_fwd_triton", mutates_args={})
def adain_fwd(content: Tensor, style_mean: Tensor, style_std: Tensor, eps: float) -> Tensor:
    n, c, h, w = content.shape
    x, x_strides = _planes(content)
    out, buf = _output_like(content)
    wrap_triton(_adain_fwd_kernel)[(n * c,)](
        x, style_mean.contiguous(), style_std.contiguous(), buf, c, h * w, eps,
        *x_strides, *_strides(buf), **_config(h * w))
    return _copy_back(out, buf)


@triton_op("fastgen::adain_bwd_triton", mutates_args={})
def adain_bwd(grad_out: Tensor, content: Tensor, style_mean: Tensor, style_std: Tensor,
              eps: float) -> tuple[Tensor, Tensor, Tensor]:
    n, c, h, w = content.shape
    g, g_strides = _planes(grad_out)
    x, x_strides = _planes(content)
    grad_content, buf = _output_like(content)
    grad_mean = torch.empty((n, c), dtype=content.dtype, device=content.device)
    grad_std = torch.empty_like(grad_mean)
    wrap_triton(_adain_bwd_kernel)[(n * c,)](
        g, x, style_std.contiguous(), buf, grad_mean, grad_std, c, h * w, eps,
        *g_strides, *x_strides, *_strides(buf), **_config(h * w))
    return _copy_back(grad_content, buf), grad_mean, grad_std


@triton_op("fastgen::adain_from_style_fwd_triton", mutates_args={})
def adain_from_style_fwd(content: Tensor, style: Tensor, eps: float) -> Tensor:
    n, c, h, w = content.shape
    m_style = style.shape[2] * style.shape[3]
    x, x_strides = _planes(content)
    s, s_strides = _planes(style)
    out, buf = _output_like(content)
    wrap_triton(_adain_from_style_fwd_kernel)[(n * c,)](
        x, s, buf, c, h * w, m_style, eps, *x_strides, *s_strides, *_strides(buf),
        **_config(max(h * w, m_style)))
    return _copy_back(out, buf)


@triton_op("fastgen::adain_from_style_bwd_triton", mutates_args={})
def adain_from_style_bwd(grad_out: Tensor, content: Tensor, style: Tensor,
                         eps: float) -> tuple[Tensor, Tensor]:
    n, c, h, w = content.shape
    m_style = style.shape[2] * style.shape[3]
    g, g_strides = _planes(grad_out)
    x, x_strides = _planes(content)
    s, s_strides = _planes(style)
    grad_content, content_buf = _output_like(content)
    grad_style, style_buf = _output_like(style)
    wrap_triton(_adain_from_style_bwd_kernel)[(n * c,)](
        g, x, s, content_buf, style_buf, c, h * w, m_style, eps,
        *g_strides, *x_strides, *s_strides, *_strides(content_buf), *_strides(style_buf),
        **_config(max(h * w, m_style)))
    return _copy_back(grad_content, content_buf), _copy_back(grad_style, style_buf)
