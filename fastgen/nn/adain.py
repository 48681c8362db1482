from __future__ import annotations

import torch
from torch import nn

from fastgen.ops.adain import adain


class AdaIN(nn.Module):
    """StyleGAN's style injection: a style vector w -> learned affine -> per-channel scale and bias.

    ``forward(x, w)`` normalizes each channel of x [N, C, H, W] and applies
    ``scale * x_normalized + bias`` with ``(scale, bias) = affine(w)``, w: [N, style_dim].
    The scale's bias starts at 1 so an untrained layer is an instance norm.
    """

    def __init__(self, num_features: int, style_dim: int, eps: float = 1e-5, *, impl: str = "auto"):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.impl = impl
        self.affine = nn.Linear(style_dim, 2 * num_features)
        with torch.no_grad():
            self.affine.bias[:num_features].fill_(1.0)
            self.affine.bias[num_features:].zero_()

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.dim() != 2 or w.shape[1] != self.affine.in_features:
            raise ValueError(f"w must have shape [N, style_dim={self.affine.in_features}], got {tuple(w.shape)}")
        scale, bias = self.affine(w).to(x.dtype).chunk(2, dim=1)
        return adain(x, bias, scale, self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, style_dim={self.affine.in_features}, eps={self.eps}"
