"""Gram matrices in plain differentiable torch: the specification and the test oracle.

G = F F^T per sample, with no normalization (style losses divide by C * H * W themselves).
Half-precision inputs are computed in float32 and rounded once at the end, as the kernels do.
Every output is a new contiguous tensor.
"""
from __future__ import annotations

import torch

from fastgen.ops._library import to_accumulation_dtype as _acc


def gram_matrix_ref(features: torch.Tensor) -> torch.Tensor:
    """features [B, C, N] -> G [B, C, C]."""
    f = _acc(features)
    return torch.bmm(f, f.transpose(1, 2)).to(features.dtype)


def gram_matrix_backward_ref(grad_out: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """dF = (dG + dG^T) F: G depends on F through both factors of F F^T."""
    g = _acc(grad_out)
    return torch.bmm(g + g.transpose(1, 2), _acc(features)).to(features.dtype)
