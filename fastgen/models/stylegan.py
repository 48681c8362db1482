"""StyleGAN (Karras et al. 2019, "A Style-Based Generator Architecture for Generative Adversarial Networks").

A mapping network (pixel norm, then 8 equalized dense layers with leaky ReLU at a 0.01 learning-rate
multiplier) turns z into an intermediate latent w. The synthesis network starts from a learned constant
4x4 input; each of its layers (two per resolution: the first is the constant itself, later ones a
3x3 conv, after a nearest 2x upsampling at each new resolution) adds per-pixel Gaussian noise times a
learned per-channel scale (zero at init), applies leaky ReLU, then ``fastgen.nn.AdaIN``: instance norm
followed by a per-channel scale and bias computed from that layer's w by an affine layer.

Training regularizers: style mixing (with probability 0.9 a second latent's w drives the layers from a
random crossover layer on) and the R1 penalty gamma/2 * E|grad_x D(x)|^2 on real images, taken with
``create_graph=True`` so that it is trained through (a double backward through D; G's updates
backpropagate through the fused AdaIN op, whose backward is itself differentiable). Sampling can use
the truncation trick: w -> w_avg + psi (w - w_avg), with w_avg an exponential moving average of the
mapping network's outputs during training.

Simplifications against the paper, for a short readable model on CPU: no progressive growing (fixed
resolution, default 32x32), no blur filter in up/downsampling, truncation on every layer, and the
discriminator is ProGAN's (:class:`fastgen.models.progan.Discriminator`, minibatch std included).
The registered ``stylegan`` trains on digits upsampled (nearest) to 32x32 in [-1, 1] with the
non-saturating logistic loss, R1 gamma = 1 and Adam(lr=1e-3, betas=(0, 0.99)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.data.digits import load_digits_images
from fastgen.models.progan import (
    Discriminator,
    check_latent,
    EqualizedConv2d,
    EqualizedLinear,
    stages_for_resolution,
    gan_optimizers,
    lrelu,
    pixel_norm,
    stage_width,
    upsample,
)
from fastgen.models.training import TrainSpec, register
from fastgen.nn import AdaIN

NOISE_MODES = ("random", "zero")


class MappingNetwork(nn.Module):
    """z [N, z_dim] -> w [N, w_dim]."""

    def __init__(self, z_dim: int = 64, w_dim: int = 64, num_layers: int = 8, lr_multiplier: float = 0.01) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EqualizedLinear(z_dim if i == 0 else w_dim, w_dim, lr_multiplier=lr_multiplier)
                                    for i in range(num_layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)
        for layer in self.layers:
            x = lrelu(layer(x))
        return x


class NoiseInjection(nn.Module):
    """x + scale[c] * noise, one learned scale per channel (zero at init), noise [N, 1, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.scale.view(1, -1, 1, 1) * noise


class StyleLayer(nn.Module):
    """[upsample, 3x3 conv,] noise, bias, leaky ReLU, AdaIN(w). Without ``in_channels`` there is no conv
    (the first layer acts on the constant input)."""

    def __init__(self, in_channels: int | None, channels: int, w_dim: int, upsample_first: bool = False) -> None:
        super().__init__()
        self.upsample_first = upsample_first
        self.conv = None if in_channels is None else EqualizedConv2d(in_channels, channels, 3)
        self.noise = NoiseInjection(channels)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.adain = AdaIN(channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if self.upsample_first:
            x = upsample(x)
        if self.conv is not None:
            x = self.conv(x)
        noise = torch.randn if noise_mode == "random" else torch.zeros
        x = self.noise(x, noise(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype))
        return self.adain(lrelu(x + self.bias.view(1, -1, 1, 1)), w)


class SynthesisNetwork(nn.Module):
    """ws [N, num_layers, w_dim] (one w per layer) -> image [N, channels, resolution, resolution]."""

    def __init__(self, w_dim: int = 64, resolution: int = 32, max_width: int = 64, channels: int = 1) -> None:
        super().__init__()
        widths = [stage_width(4 * 2**s, max_width) for s in range(stages_for_resolution(resolution, "resolution"))]
        # Random rather than the paper's ones: a constant plane has zero variance, so without noise the
        # first instance norm would erase it (and scale its gradient by 1 / sqrt(eps)).
        self.const = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        layers = [StyleLayer(None, widths[0], w_dim), StyleLayer(widths[0], widths[0], w_dim)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [StyleLayer(c_in, c_out, w_dim, upsample_first=True), StyleLayer(c_out, c_out, w_dim)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualizedConv2d(widths[-1], channels, 1, gain=1.0)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.dim() != 3 or ws.shape[1] != self.num_layers:
            raise ValueError(f"ws must be [N, {self.num_layers}, w_dim], got {tuple(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode)
        return self.to_rgb(x)


def mix_styles(w1: torch.Tensor, w2: torch.Tensor, crossover: int, num_layers: int) -> torch.Tensor:
    """ws [N, num_layers, w_dim]: w1 for the layers before ``crossover``, w2 from it on."""
    if not 0 <= crossover <= num_layers:
        raise ValueError(f"crossover must be in [0, {num_layers}], got {crossover}")
    use_w2 = (torch.arange(num_layers, device=w1.device) >= crossover).view(1, -1, 1)
    return torch.where(use_w2, w2.unsqueeze(1), w1.unsqueeze(1))


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, channels, resolution, resolution] (linear output)."""

    def __init__(self, z_dim: int = 64, w_dim: int = 64, resolution: int = 32, max_width: int = 64,
                 channels: int = 1, mapping_layers: int = 8, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.resolution, self.w_avg_beta = z_dim, resolution, w_avg_beta
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(w_dim, resolution, max_width, channels)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def map(self, z: torch.Tensor) -> torch.Tensor:
        """w of z; in training mode also moves the running average w_avg towards the batch's mean w."""
        check_latent(z, self.z_dim)
        w = self.mapping(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.lerp_(w.mean(dim=0), 1 - self.w_avg_beta)
        return w

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor | None = None, crossover: int | None = None,
                psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        """Images of ``z``; with ``z_mix`` the layers from ``crossover`` on take z_mix's style. ``psi`` < 1
        truncates every layer's w towards w_avg (psi = 0: the image of w_avg)."""
        num_layers = self.synthesis.num_layers
        w = self.map(z)
        if z_mix is None:
            ws = w.unsqueeze(1).expand(-1, num_layers, -1)
        else:
            if crossover is None:
                raise ValueError("crossover (a layer index) is required with z_mix")
            ws = mix_styles(w, self.map(z_mix), crossover, num_layers)
        if psi != 1.0:
            ws = self.w_avg + psi * (ws - self.w_avg)
        return self.synthesis(ws, noise_mode)


class StyleGAN(nn.Module):
    def __init__(self, z_dim: int = 64, w_dim: int = 64, resolution: int = 32, max_width: int = 64,
                 channels: int = 1) -> None:
        super().__init__()
        self.generator = Generator(z_dim, w_dim, resolution, max_width, channels)
        self.discriminator = Discriminator(resolution, max_width, channels)

    def sample(self, n: int, psi: float = 1.0) -> torch.Tensor:
        """n images clamped to [-1, 1]."""
        z = torch.randn(n, self.generator.z_dim, device=self.generator.w_avg.device)
        return self.generator(z, psi=psi).clamp(-1, 1)


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(D's logits on ``real``, gamma / 2 * E|grad_x D(x)|^2), the gradient built with create_graph so
    that the penalty can be backpropagated into D's parameters."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return logits, gamma / 2 * grad.square().sum(dim=(1, 2, 3)).mean()


def _mixed_fake(G: Generator, n: int, mixing_prob: float, like: torch.Tensor) -> torch.Tensor:
    """Fakes with style mixing: for the batch, with probability ``mixing_prob`` a second latent takes
    over at a crossover layer drawn uniformly from 1 .. num_layers - 1."""
    z = torch.randn(n, G.z_dim, device=like.device, dtype=like.dtype)
    if torch.rand(()) < mixing_prob:
        crossover = int(torch.randint(1, G.synthesis.num_layers, ()))
        return G(z, torch.randn_like(z), crossover)
    return G(z)


def train_step(model: StyleGAN, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, real: torch.Tensor,
               r1_gamma: float = 1.0, mixing_prob: float = 0.9) -> dict[str, float]:
    """One discriminator update (non-saturating loss + R1 on the reals), then one generator update."""
    G, D = model.generator, model.discriminator
    n = real.shape[0]
    with torch.no_grad():
        fake = _mixed_fake(G, n, mixing_prob, real)
    real_logits, r1 = r1_penalty(D, real, r1_gamma)
    d_loss = F.softplus(-real_logits).mean() + F.softplus(D(fake)).mean()
    opt_d.zero_grad(set_to_none=True)
    (d_loss + r1).backward()
    opt_d.step()

    g_loss = F.softplus(-D(_mixed_fake(G, n, mixing_prob, real))).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()  # also fills D's .grad; opt_d.zero_grad clears it before D's next step
    opt_g.step()
    return {"d_loss": d_loss.item(), "r1": r1.item(), "g_loss": g_loss.item()}


register(TrainSpec(
    name="stylegan",
    summary="StyleGAN (mapping net, AdaIN, noise, style mixing, R1) at 32x32 on digits upsampled to 32x32 in "
            "[-1, 1]; grid: samples (psi = 1)",
    build=lambda: StyleGAN(),
    data=lambda seed: load_digits_images(size=32, value_range=(-1.0, 1.0), seed=seed),
    optimizers=gan_optimizers,
    step=lambda model, optimizers, batch, step: train_step(
        model, optimizers["generator"], optimizers["discriminator"], batch[0]),
    grid=lambda model, batch: (model.sample(64) + 1) / 2,
    batch_size=32, steps=2000,
))
