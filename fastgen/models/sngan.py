"""SN-GAN at 32x32 (Miyato et al. 2018, "Spectral Normalization for GANs", Table 3).

The DCGAN-style generator and discriminator of the paper's CIFAR-10 experiments,
trained with the hinge loss. Every conv and linear layer of the discriminator is
spectrally normalized unless ``use_spectral_norm=False`` (the benchmark's baseline).

Widths scale with ``base``; the paper's is 64. The default here is 32 so that a
``train_step`` at batch 64 costs ~45 GFLOP (about 0.4 s on 2 CPU cores) rather than
~180 GFLOP at base 64.

The registered ``sngan`` (``fastgen train sngan``) trains a one-channel model on the digits upsampled
(nearest) to 32x32 in [-1, 1].
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastgen.nn
from fastgen.data.digits import load_digits_images
from fastgen.models.training import TrainSpec, register

SpectralNorm = Callable[[nn.Module], nn.Module]


def apply_spectral_norm(module: nn.Module, spectral_norm: SpectralNorm | None = None) -> nn.Module:
    """Spectrally normalize every Conv2d and Linear inside ``module`` (in place) and return it.

    ``spectral_norm`` has the signature of ``torch.nn.utils.parametrizations.spectral_norm``
    and defaults to ``fastgen.nn.spectral_norm``; it is looked up here, at call time, so
    a model can be built with torch's function on an install that lacks fastgen's.
    """
    if spectral_norm is None:
        spectral_norm = fastgen.nn.spectral_norm
    # Collect first: parametrizing a layer adds submodules to it while we would be iterating.
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        spectral_norm(layer)
    return module


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, channels, 32, 32] in [-1, 1].

    dense -> 4x4 x 8*base, then three stride-2 transposed convs (4x4 -> 8 -> 16 -> 32)
    halving the width, each followed by BatchNorm and ReLU, and a 3x3 conv to RGB with tanh.
    """

    def __init__(self, z_dim: int = 128, base: int = 32, channels: int = 3) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.width = 8 * base
        self.fc = nn.Linear(z_dim, 4 * 4 * self.width)
        self.fc_norm = nn.BatchNorm2d(self.width)

        def up(c_in: int, c_out: int) -> list[nn.Module]:
            # Bias is redundant before BatchNorm, which subtracts the mean.
            return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.blocks = nn.Sequential(
            *up(8 * base, 4 * base), *up(4 * base, 2 * base), *up(2 * base, base),
            nn.Conv2d(base, channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.width, 4, 4)
        return self.blocks(F.relu(self.fc_norm(x)))


class Discriminator(nn.Module):
    """image [N, channels, 32, 32] -> logit [N].

    Pairs of a 3x3 stride-1 conv and a 4x4 stride-2 conv (32 -> 16 -> 8 -> 4), widths
    base, 2*base, 4*base, then a 3x3 conv to 8*base and a linear layer; LeakyReLU(0.1)
    throughout and no normalization layers, so spectral norm is the only constraint.
    """

    def __init__(self, base: int = 32, channels: int = 3, use_spectral_norm: bool = True,
                 spectral_norm: SpectralNorm | None = None) -> None:
        super().__init__()
        widths = [channels, base, 2 * base, 4 * base]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1),
                       nn.Conv2d(c_out, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
        layers += [nn.Conv2d(4 * base, 8 * base, 3, padding=1), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * 4 * 8 * base, 1)
        if use_spectral_norm:
            apply_spectral_norm(self, spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1)).squeeze(1)


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake_logits.mean()


def train_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               real: torch.Tensor, z_dim: int) -> dict[str, float]:
    """One discriminator update then one generator update, each with fresh noise.

    The paper's Adam settings are lr=2e-4, betas=(0.0, 0.9) with several D steps per G
    step, or betas=(0.5, 0.999) with one; this step does one of each, so call it with the
    latter (or loop over D updates yourself).
    """
    n = real.shape[0]
    with torch.no_grad():  # D's update needs no gradient through G
        fake = G(torch.randn(n, z_dim, device=real.device, dtype=real.dtype))
    d_loss = d_hinge_loss(D(real), D(fake))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    fake = G(torch.randn(n, z_dim, device=real.device, dtype=real.dtype))
    g_loss = g_hinge_loss(D(fake))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()  # also fills D's .grad; opt_d.zero_grad clears it before D's next step
    opt_g.step()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}


def generator_and_discriminator(discriminator: nn.Module) -> nn.ModuleDict:
    """The trainable model of a registered 32x32 GAN: a one-channel generator and ``discriminator``."""
    return nn.ModuleDict({"generator": Generator(channels=1), "discriminator": discriminator})


def adam_pair(model: nn.ModuleDict, lr: float, betas: tuple[float, float]) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.Adam(model[name].parameters(), lr=lr, betas=betas)
            for name in ("generator", "discriminator")}


def sample_grid(model: nn.ModuleDict, batch) -> torch.Tensor:
    """64 samples of ``model["generator"]`` in [0, 1]."""
    z = torch.randn(64, model["generator"].z_dim, device=batch[0].device)
    return (model["generator"](z) + 1) / 2


register(TrainSpec(
    name="sngan",
    summary="SN-GAN (hinge loss, spectrally normalized D, Adam 2e-4, betas (0.5, 0.999)) on digits upsampled "
            "to 32x32 in [-1, 1], one channel; grid: samples",
    build=lambda: generator_and_discriminator(Discriminator(channels=1)),
    data=lambda seed: load_digits_images(size=32, value_range=(-1.0, 1.0), seed=seed),
    optimizers=lambda model: adam_pair(model, 2e-4, (0.5, 0.999)),
    step=lambda model, opts, batch, step: train_step(
        model["generator"], model["discriminator"], opts["generator"], opts["discriminator"], batch[0],
        model["generator"].z_dim),
    grid=sample_grid, batch_size=64, steps=2000,
))
