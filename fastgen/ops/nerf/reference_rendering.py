"""Volume rendering in plain torch: the specification and the oracle of ``fastgen::volume_render*``.

Samples of all rays are packed: sigmas [N], t_starts [N], t_ends [N] (rgbs [N, C]), ray r owning
samples [start_r, start_r + count_r) with packed_info[r] = (start_r, count_r), the starts being the
exclusive cumulative sum of the counts (every sample belongs to exactly one ray, in ray order). Per
sample, with tau_i = sigma_i * (t_end_i - t_start_i):

    alpha_i = 1 - exp(-tau_i)
    T_i     = exp(-sum_{j < i in the ray} tau_j)          (transmittance before the sample)
    w_i     = T_i * alpha_i

(nerfacc's ``render_weight_from_density``). The fused op composites with early ray termination:
a sample with T_i < early_stop_eps gets weight 0, so

    color   = sum_i w_i c_i,  opacity = sum_i w_i,  depth = sum_i w_i (t_start_i + t_end_i) / 2

leave out at most T (< eps) of the weight: the color differs from the full sum by at most
eps * max|c|. The references compute per ray on a zero-padded [R, max count] layout; their backward
formulas are derived below and tested against autograd of the forward references.
"""
from __future__ import annotations

import torch


def _ray_layout(packed_info: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ray of every sample [N], its position in the ray [N], the longest ray's count)."""
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    rays = torch.repeat_interleave(torch.arange(packed_info.shape[0], device=packed_info.device), counts,
                                   output_size=n)
    positions = torch.arange(n, device=packed_info.device) - starts[rays]
    return rays, positions, int(counts.max()) if counts.numel() else 0


def _padded(values: torch.Tensor, rays: torch.Tensor, positions: torch.Tensor, n_rays: int,
            width: int) -> torch.Tensor:
    """Per-sample values [N] as [R, width], zero past each ray's samples."""
    return values.new_zeros(n_rays, width).index_put((rays, positions), values)


def _exclusive_sum_per_ray(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    rays, positions, width = _ray_layout(packed_info, values.shape[0])
    padded = _padded(values, rays, positions, packed_info.shape[0], width)
    return (padded.cumsum(1) - padded)[rays, positions]


def _reverse_exclusive_sum_per_ray(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    """sum_{k > i in the ray} values_k for every sample i."""
    rays, positions, width = _ray_layout(packed_info, values.shape[0])
    padded = _padded(values, rays, positions, packed_info.shape[0], width)
    return (padded.flip(1).cumsum(1).flip(1) - padded)[rays, positions]


def volume_render_weights_ref(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                              packed_info: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, trans, alphas), [N] each."""
    tau = sigmas * (t_ends - t_starts)
    alphas = 1 - torch.exp(-tau)
    trans = torch.exp(-_exclusive_sum_per_ray(tau, packed_info))
    return trans * alphas, trans, alphas


def volume_render_weights_backward_ref(grad_weights: torch.Tensor, grad_trans: torch.Tensor,
                                       grad_alphas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                                       packed_info: torch.Tensor, weights: torch.Tensor, trans: torch.Tensor,
                                       alphas: torch.Tensor) -> torch.Tensor:
    """d/dsigma_i, delta_i = t_end_i - t_start_i. T_k (k > i) scales by exp(-delta_i sigma_i), so
    dT_k = -delta_i T_k and dw_k = -delta_i w_k; dalpha_i = delta_i (1 - alpha_i) and dw_i = delta_i T_{i+1}:

        grad_sigma_i = delta_i (gw_i T_{i+1} + ga_i (1 - alpha_i) - sum_{k > i} (gw_k w_k + gT_k T_k))
    """
    survival = 1 - alphas
    later = _reverse_exclusive_sum_per_ray(grad_weights * weights + grad_trans * trans, packed_info)
    return (t_ends - t_starts) * (grad_weights * trans * survival + grad_alphas * survival - later)


def _composite_weights(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                       packed_info: torch.Tensor, early_stop_eps: float) -> torch.Tensor:
    weights, trans, _ = volume_render_weights_ref(sigmas, t_starts, t_ends, packed_info)
    return torch.where(trans >= early_stop_eps, weights, 0)


def volume_render_ref(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                      packed_info: torch.Tensor, early_stop_eps: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colors [R, C], opacities [R, 1], depths [R, 1])."""
    weights = _composite_weights(sigmas, t_starts, t_ends, packed_info, early_stop_eps)
    rays = _ray_layout(packed_info, sigmas.shape[0])[0]
    n_rays = packed_info.shape[0]
    colors = rgbs.new_zeros(n_rays, rgbs.shape[1]).index_add(0, rays, weights[:, None] * rgbs)
    opacities = weights.new_zeros(n_rays).index_add(0, rays, weights)
    depths = weights.new_zeros(n_rays).index_add(0, rays, weights * (t_starts + t_ends) / 2)
    return colors, opacities[:, None], depths[:, None]


def volume_render_backward_ref(grad_colors: torch.Tensor, grad_opacities: torch.Tensor,
                               grad_depths: torch.Tensor, sigmas: torch.Tensor, rgbs: torch.Tensor,
                               t_starts: torch.Tensor, t_ends: torch.Tensor, packed_info: torch.Tensor,
                               early_stop_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_sigmas [N], grad_rgbs [N, C]). The loss is sum_i w_i v_i with, per sample,
    v_i = gC . c_i + gO + gD mid_i; terminated samples are constants (weight 0). So grad_rgb_i = w_i gC and
    grad_sigma_i = delta_i (T_{i+1} v_i - sum_{k > i} w_k v_k) over the samples that are not terminated."""
    weights, trans, alphas = volume_render_weights_ref(sigmas, t_starts, t_ends, packed_info)
    active = trans >= early_stop_eps
    weights = torch.where(active, weights, 0)
    rays = _ray_layout(packed_info, sigmas.shape[0])[0]
    values = ((grad_colors[rays] * rgbs).sum(1) + grad_opacities[rays, 0]
              + grad_depths[rays, 0] * (t_starts + t_ends) / 2)
    later = _reverse_exclusive_sum_per_ray(weights * values, packed_info)
    grad_sigmas = torch.where(active, (t_ends - t_starts) * (trans * (1 - alphas) * values - later), 0)
    return grad_sigmas, weights[:, None] * grad_colors[rays]
