"""VQ nearest-codebook search and codebook statistics in plain torch: the specification and the oracle.

For z [N, D] and a codebook [K, D]:

    indices[n]   = argmin_k |z_n - e_k|^2     (ties: the lowest k, as torch.argmin)
    distances[n] = |z_n - e_indices[n]|^2     (computed from the difference, so never negative)

The search works on row chunks, so memory stays bounded (never the N x K matrix), and uses
|e_k|^2 - 2 z_n . e_k, which has the same argmin. Half-precision inputs are computed in float32.
"""
from __future__ import annotations

import torch

from fastgen.ops._library import to_accumulation_dtype as _acc

# Rows per chunk: the chunk's score matrix [rows, K] stays at about 1M elements (4 MB in float32).
_CHUNK_ELEMENTS = 1 << 20


def vq_nearest_l2_ref(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64 [N], squared distances [N] in z's dtype)."""
    n, k = z.shape[0], codebook.shape[0]
    zf, ef = _acc(z), _acc(codebook)
    indices = torch.empty(n, dtype=torch.int64, device=z.device)
    with torch.no_grad():
        norms = (ef * ef).sum(1)
        rows = max(1, _CHUNK_ELEMENTS // max(k, 1))
        for start in range(0, n, rows):
            scores = torch.addmm(norms, zf[start:start + rows], ef.t(), alpha=-2)
            indices[start:start + rows] = scores.argmin(1)
    distances = (zf - ef[indices]).square().sum(1)
    return indices, distances.to(z.dtype)


def vq_nearest_l2_backward_ref(grad_distances: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor,
                               indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of distances = |z - codebook[indices]|^2 for z and codebook (indices held fixed)."""
    zf, ef, g = _acc(z), _acc(codebook), _acc(grad_distances)
    scaled_diff = 2 * g.unsqueeze(1) * (zf - ef[indices])
    grad_codebook = torch.zeros_like(ef).index_add_(0, indices, scaled_diff, alpha=-1)
    return scaled_diff.to(z.dtype), grad_codebook.to(codebook.dtype)


def vq_cluster_stats_ref(z: torch.Tensor, indices: torch.Tensor,
                         codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts [K] in z's accumulation dtype, sums [K, D]): how many rows chose each code, and their sum."""
    zf = _acc(z)
    counts = torch.bincount(indices, minlength=codebook_size).to(zf.dtype)
    sums = torch.zeros(codebook_size, z.shape[1], dtype=zf.dtype, device=z.device).index_add_(0, indices, zf)
    return counts, sums
