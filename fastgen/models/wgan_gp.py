"""WGAN-GP at 32x32 (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs").

The critic is the paper's DCGAN-style CIFAR-10 critic: three stride-2 5x5 convs and a
linear layer, with no BatchNorm, because the gradient penalty is taken per sample and
batch statistics would couple the samples. ``use_spectral_norm=True`` adds spectral
norm to every layer, so the penalty's second-order gradients also run through it.
The generator is SN-GAN's. The paper trains with Adam(lr=1e-4, betas=(0.0, 0.9)),
``n_critic=5`` and penalty weight 10.

The paper's critic width is 128; the default ``base=32`` matches SN-GAN's default here and
keeps a ``train_step`` at batch 64 (five critic updates, each with a double backward) at
about 85 GFLOP; the critic's share grows roughly 4x with each doubling of ``base``.

The registered ``wgan_gp`` (``fastgen train wgan_gp``) trains a one-channel model on the digits
upsampled (nearest) to 32x32 in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fastgen.data.digits import load_digits_images
from fastgen.models.sngan import Generator, SpectralNorm, adam_pair, apply_spectral_norm, generator_and_discriminator, \
    sample_grid
from fastgen.models.training import TrainSpec, register

__all__ = ["Critic", "Generator", "critic_loss", "generator_loss", "gradient_penalty", "train_step"]


class Critic(nn.Module):
    """image [N, channels, 32, 32] -> score [N] (unbounded: an estimate of a 1-Lipschitz function)."""

    def __init__(self, base: int = 32, channels: int = 3, use_spectral_norm: bool = False,
                 spectral_norm: SpectralNorm | None = None) -> None:
        super().__init__()
        widths = [channels, base, 2 * base, 4 * base]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):  # 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * 4 * 4 * base, 1)
        if use_spectral_norm:
            apply_spectral_norm(self, spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    """weight * E[(||grad_x critic(x)||_2 - 1)^2] at x uniformly between paired real and fake samples.

    The input gradient is built with ``create_graph=True`` so that backpropagating the
    penalty differentiates through it: a second-order gradient through the critic.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    # Each sample's score depends only on its own input, so the gradient of the sum
    # gives every sample's input gradient in one backward pass.
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[C(G(z))] - E[C(x)]: the negated Wasserstein estimate, without the penalty."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[C(G(z))]."""
    return -fake_scores.mean()


def train_step(G: nn.Module, C: nn.Module, opt_g: torch.optim.Optimizer, opt_c: torch.optim.Optimizer,
               real: torch.Tensor, z_dim: int, n_critic: int = 5, gp_weight: float = 10.0) -> dict[str, float]:
    """``n_critic`` critic updates, then one generator update; losses are the last critic update's.

    Every critic update draws fresh noise and fresh interpolates but reuses ``real``:
    supplying new data per update is the caller's loop, which keeps this step free of
    a data loader (the benchmark times it on a fixed batch).
    """
    n = real.shape[0]
    for _ in range(n_critic):
        with torch.no_grad():  # the critic's update needs no gradient through G
            fake = G(torch.randn(n, z_dim, device=real.device, dtype=real.dtype))
        w_loss = critic_loss(C(real), C(fake))
        gp = gradient_penalty(C, real, fake, gp_weight)
        opt_c.zero_grad(set_to_none=True)
        (w_loss + gp).backward()
        opt_c.step()

    fake = G(torch.randn(n, z_dim, device=real.device, dtype=real.dtype))
    g_loss = generator_loss(C(fake))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()  # also fills C's .grad; opt_c.zero_grad clears it before C's next update
    opt_g.step()
    return {"critic_loss": (w_loss + gp).item(), "wasserstein": -w_loss.item(),
            "gradient_penalty": gp.item(), "g_loss": g_loss.item()}


register(TrainSpec(
    name="wgan_gp",
    summary="WGAN-GP (5 critic updates per generator update, penalty 10, Adam 1e-4, betas (0, 0.9)) on digits "
            "upsampled to 32x32 in [-1, 1], one channel; grid: samples",
    build=lambda: generator_and_discriminator(Critic(channels=1)),
    data=lambda seed: load_digits_images(size=32, value_range=(-1.0, 1.0), seed=seed),
    optimizers=lambda model: adam_pair(model, 1e-4, (0.0, 0.9)),
    step=lambda model, opts, batch, step: train_step(
        model["generator"], model["discriminator"], opts["generator"], opts["discriminator"], batch[0],
        model["generator"].z_dim),
    grid=sample_grid, batch_size=64, steps=2000,
))
