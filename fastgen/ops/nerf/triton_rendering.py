"""Triton volume rendering on packed rays (the spec is ``reference.py``).

One program per ray walks its samples in chunks of BLOCK: within a chunk the exclusive sum of
tau = sigma * delta is a ``tl.cumsum``, so T_i = exp(-(tau before the chunk + exclusive sum)), as the
reference computes it.

* ``volume_render_weights``: weights, trans, alphas; its backward walks the chunks in reverse with
  the running sum of gw_k w_k + gT_k T_k over the later samples (a reverse ``tl.cumsum`` within a chunk).
* ``volume_render``: colors, opacities, depths; the ray stops at K, the first sample with T < eps (the
  ``end`` carried across chunks), and loads past it are masked off, so they read no memory.
  Its backward finds K and the total tau of samples < K with the same forward pass, then walks the
  chunks in reverse: the inclusive prefix P_{i+1} = total - (tau from i + 1 to K), and the suffix sum
  of w_k v_k, both from reverse cumsums, so no per-sample temporary is written.

Computes in the input dtype (float32 or float64; the Python layer upcasts half). The launchers are
``torch.library.triton_op``s so torch.compile traces into them. Sample values (NaN sigmas, negative
intervals) are checked in Python before the launch, which syncs with the device. Without a GPU here,
these kernels have only run under ``TRITON_INTERPRET=1``; they have not been compiled for or timed on a GPU.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from fastgen.ops.nerf.rendering import check_sample_values

_BLOCK = 64  # samples per chunk
_WARPS = 2


@triton.jit
def _chunk_tau(sigma_ptr, t0_ptr, t1_ptr, start, offs, mask):
    s = tl.load(sigma_ptr + start + offs, mask=mask, other=0)
    t0 = tl.load(t0_ptr + start + offs, mask=mask, other=0)
    t1 = tl.load(t1_ptr + start + offs, mask=mask, other=0)
    return s * (t1 - t0), t0, t1


@triton.jit
def _weights_fwd_kernel(sigma_ptr, t0_ptr, t1_ptr, info_ptr, w_ptr, trans_ptr, alpha_ptr, BLOCK: tl.constexpr):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(info_ptr + 2 * ray)
    count = tl.load(info_ptr + 2 * ray + 1)
    before = tl.zeros([], sigma_ptr.dtype.element_ty)  # tau of the earlier chunks
    for base in range(0, count, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        mask = offs < count
        tau, t0, t1 = _chunk_tau(sigma_ptr, t0_ptr, t1_ptr, start, offs, mask)
        trans = tl.exp(-(before + tl.cumsum(tau, 0) - tau))
        alpha = 1 - tl.exp(-tau)
        tl.store(trans_ptr + start + offs, trans, mask=mask)
        tl.store(alpha_ptr + start + offs, alpha, mask=mask)
        tl.store(w_ptr + start + offs, trans * alpha, mask=mask)
        before += tl.sum(tau, 0)


@triton.jit
def _weights_bwd_kernel(gw_ptr, gt_ptr, ga_ptr, t0_ptr, t1_ptr, info_ptr, w_ptr, trans_ptr, alpha_ptr,
                        grad_ptr, BLOCK: tl.constexpr):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(info_ptr + 2 * ray)
    count = tl.load(info_ptr + 2 * ray + 1)
    later = tl.zeros([], gw_ptr.dtype.element_ty)  # sum of gw w + gT T over the later chunks
    n_chunks = (count + BLOCK - 1) // BLOCK
    for c in range(0, n_chunks):
        offs = (n_chunks - 1 - c) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < count
        p = start + offs
        gw = tl.load(gw_ptr + p, mask=mask, other=0)
        gt = tl.load(gt_ptr + p, mask=mask, other=0)
        ga = tl.load(ga_ptr + p, mask=mask, other=0)
        w = tl.load(w_ptr + p, mask=mask, other=0)
        trans = tl.load(trans_ptr + p, mask=mask, other=0)
        survival = 1 - tl.load(alpha_ptr + p, mask=mask, other=0)
        delta = tl.load(t1_ptr + p, mask=mask, other=0) - tl.load(t0_ptr + p, mask=mask, other=0)
        x = gw * w + gt * trans
        after = tl.cumsum(x, 0, reverse=True) - x + later
        tl.store(grad_ptr + p, delta * (gw * trans * survival + ga * survival - after), mask=mask)
        later += tl.sum(x, 0)


@triton.jit
def _stop_and_total(sigma_ptr, t0_ptr, t1_ptr, start, count, eps, BLOCK: tl.constexpr):
    """(K, the first sample with T < eps or count; the tau of samples [0, K))."""
    end = count
    before = tl.zeros([], sigma_ptr.dtype.element_ty)
    for base in range(0, count, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        mask = offs < end
        tau, t0, t1 = _chunk_tau(sigma_ptr, t0_ptr, t1_ptr, start, offs, mask)
        trans = tl.exp(-(before + tl.cumsum(tau, 0) - tau))
        end = tl.minimum(end, tl.min(tl.where(mask & (trans < eps), offs, end), 0))
        before += tl.sum(tl.where(offs < end, tau, 0), 0)
    return end, before


@triton.jit
def _render_fwd_kernel(sigma_ptr, rgb_ptr, t0_ptr, t1_ptr, info_ptr, color_ptr, opacity_ptr, depth_ptr, eps, C,
                       BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(info_ptr + 2 * ray)
    count = tl.load(info_ptr + 2 * ray + 1)
    channels = tl.arange(0, BLOCK_C)
    dtype = sigma_ptr.dtype.element_ty
    color = tl.zeros([BLOCK_C], dtype)
    opacity = tl.zeros([], dtype)
    depth = tl.zeros([], dtype)
    end = count  # K: samples from here on are terminated
    before = tl.zeros([], dtype)
    for base in range(0, count, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        tau, t0, t1 = _chunk_tau(sigma_ptr, t0_ptr, t1_ptr, start, offs, offs < end)
        trans = tl.exp(-(before + tl.cumsum(tau, 0) - tau))
        end = tl.minimum(end, tl.min(tl.where((offs < end) & (trans < eps), offs, end), 0))
        active = offs < end
        w = tl.where(active, trans * (1 - tl.exp(-tau)), 0)
        rgb = tl.load(rgb_ptr + (start + offs)[:, None] * C + channels[None, :],
                      mask=active[:, None] & (channels < C)[None, :], other=0)
        color += tl.sum(w[:, None] * rgb, 0)
        opacity += tl.sum(w, 0)
        depth += tl.sum(w * (t0 + t1) * 0.5, 0)
        before += tl.sum(tl.where(active, tau, 0), 0)
    tl.store(color_ptr + ray * C + channels, color, mask=channels < C)
    tl.store(opacity_ptr + ray, opacity)
    tl.store(depth_ptr + ray, depth)


@triton.jit
def _render_bwd_kernel(gc_ptr, go_ptr, gd_ptr, sigma_ptr, rgb_ptr, t0_ptr, t1_ptr, info_ptr, grad_sigma_ptr,
                       grad_rgb_ptr, eps, C, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(info_ptr + 2 * ray)
    count = tl.load(info_ptr + 2 * ray + 1)
    channels = tl.arange(0, BLOCK_C)
    channel_mask = channels < C
    g_color = tl.load(gc_ptr + ray * C + channels, mask=channel_mask, other=0)
    g_opacity = tl.load(go_ptr + ray)
    g_depth = tl.load(gd_ptr + ray)
    end, total = _stop_and_total(sigma_ptr, t0_ptr, t1_ptr, start, count, eps, BLOCK)
    later_tau = tl.zeros([], sigma_ptr.dtype.element_ty)  # tau of the later chunks' samples < K
    later_wv = tl.zeros([], sigma_ptr.dtype.element_ty)   # sum of w v over them
    n_chunks = (count + BLOCK - 1) // BLOCK
    for c in range(0, n_chunks):
        offs = (n_chunks - 1 - c) * BLOCK + tl.arange(0, BLOCK)
        in_ray = offs < count
        active = offs < end
        tau, t0, t1 = _chunk_tau(sigma_ptr, t0_ptr, t1_ptr, start, offs, active)
        rgb = tl.load(rgb_ptr + (start + offs)[:, None] * C + channels[None, :],
                      mask=active[:, None] & channel_mask[None, :], other=0)
        # P_{i+1} = tau of samples [0, i]: the total less the tau after i.
        through = total - later_tau - (tl.cumsum(tau, 0, reverse=True) - tau)
        trans_next = tl.exp(-through)
        w = tl.where(active, tl.exp(-(through - tau)) * (1 - tl.exp(-tau)), 0)
        v = tl.sum(rgb * g_color[None, :], 1) + g_opacity + g_depth * (t0 + t1) * 0.5
        wv = w * v
        after = tl.cumsum(wv, 0, reverse=True) - wv + later_wv
        grad_sigma = tl.where(active, (t1 - t0) * (trans_next * v - after), 0)
        tl.store(grad_sigma_ptr + start + offs, grad_sigma, mask=in_ray)
        tl.store(grad_rgb_ptr + (start + offs)[:, None] * C + channels[None, :], w[:, None] * g_color[None, :],
                 mask=in_ray[:, None] & channel_mask[None, :])
        later_tau += tl.sum(tau, 0)
        later_wv += tl.sum(wv, 0)


def _contiguous(*tensors: Tensor) -> list[Tensor]:
    return [t.contiguous() for t in tensors]


@triton_op("fastgen::volume_render_weights_triton", mutates_args={})
def volume_render_weights(sigmas: Tensor, t_starts: Tensor, t_ends: Tensor,
                          packed_info: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    check_sample_values(sigmas, t_starts, t_ends)
    sigmas, t_starts, t_ends, packed_info = _contiguous(sigmas, t_starts, t_ends, packed_info)
    weights, trans, alphas = (torch.empty_like(sigmas) for _ in range(3))
    if packed_info.shape[0]:
        wrap_triton(_weights_fwd_kernel)[(packed_info.shape[0],)](
            sigmas, t_starts, t_ends, packed_info, weights, trans, alphas, BLOCK=_BLOCK, num_warps=_WARPS)
    return weights, trans, alphas


@triton_op("fastgen::volume_render_weights_backward_triton", mutates_args={})
def volume_render_weights_backward(grad_weights: Tensor, grad_trans: Tensor, grad_alphas: Tensor, t_starts: Tensor,
                                   t_ends: Tensor, packed_info: Tensor, weights: Tensor, trans: Tensor,
                                   alphas: Tensor) -> Tensor:
    tensors = _contiguous(grad_weights, grad_trans, grad_alphas, t_starts, t_ends, packed_info, weights, trans, alphas)
    grad_sigmas = torch.empty_like(tensors[0])
    if packed_info.shape[0]:
        wrap_triton(_weights_bwd_kernel)[(packed_info.shape[0],)](*tensors, grad_sigmas, BLOCK=_BLOCK,
                                                                  num_warps=_WARPS)
    return grad_sigmas


@triton_op("fastgen::volume_render_triton", mutates_args={})
def volume_render(sigmas: Tensor, rgbs: Tensor, t_starts: Tensor, t_ends: Tensor, packed_info: Tensor,
                  early_stop_eps: float) -> tuple[Tensor, Tensor, Tensor]:
    check_sample_values(sigmas, t_starts, t_ends)
    sigmas, rgbs, t_starts, t_ends, packed_info = _contiguous(sigmas, rgbs, t_starts, t_ends, packed_info)
    n_rays, c = packed_info.shape[0], rgbs.shape[1]
    colors = sigmas.new_empty(n_rays, c)
    opacities, depths = sigmas.new_empty(n_rays, 1), sigmas.new_empty(n_rays, 1)
    if n_rays:
        wrap_triton(_render_fwd_kernel)[(n_rays,)](
            sigmas, rgbs, t_starts, t_ends, packed_info, colors, opacities, depths, early_stop_eps, c,
            BLOCK=_BLOCK, BLOCK_C=triton.next_power_of_2(max(c, 1)), num_warps=_WARPS)
    return colors, opacities, depths


@triton_op("fastgen::volume_render_backward_triton", mutates_args={})
def volume_render_backward(grad_colors: Tensor, grad_opacities: Tensor, grad_depths: Tensor, sigmas: Tensor,
                           rgbs: Tensor, t_starts: Tensor, t_ends: Tensor, packed_info: Tensor,
                           early_stop_eps: float) -> tuple[Tensor, Tensor]:
    tensors = _contiguous(grad_colors, grad_opacities, grad_depths, sigmas, rgbs, t_starts, t_ends, packed_info)
    grad_sigmas, grad_rgbs = sigmas.new_empty(sigmas.shape), rgbs.new_empty(rgbs.shape)
    n_rays, c = packed_info.shape[0], rgbs.shape[1]
    if n_rays:
        wrap_triton(_render_bwd_kernel)[(n_rays,)](
            *tensors, grad_sigmas, grad_rgbs, early_stop_eps, c,
            BLOCK=_BLOCK, BLOCK_C=triton.next_power_of_2(max(c, 1)), num_warps=_WARPS)
    return grad_sigmas, grad_rgbs
