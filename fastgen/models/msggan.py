"""MSG-GAN (Karnewar & Wang 2020, "MSG-GAN: Multi-Scale Gradients for Generative Adversarial Networks").

Instead of growing, the generator emits an image at every resolution (4, 8, ..., ``max_resolution``):
ProGAN's generator with each block's to-RGB output kept. The discriminator sees all of them at once:
its from-RGB reads the largest, and before each later block (and its head) the image of that block's
resolution is concatenated to the features (the paper's "simple" combine), so D's gradient reaches
every generator block directly. The registered ``msggan`` trains on 16x16 digits in [-1, 1]
(real images average-pooled to each scale) with the non-saturating logistic loss,
Adam(lr=1e-3, betas=(0, 0.99)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.data.digits import load_digits_images
from fastgen.models.progan import Discriminator, Generator, downsample, gan_optimizers, lrelu
from fastgen.models.training import TrainSpec, register


class MultiScaleDiscriminator(Discriminator):
    """images [x_4, x_8, ..., x_max] (lowest resolution first, each [N, channels, r, r]) -> score [N]."""

    def __init__(self, max_resolution: int = 16, max_width: int = 64, channels: int = 1) -> None:
        super().__init__(max_resolution, max_width, channels, extra_channels=channels)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        if len(images) != self.num_stages or any(
                x.dim() != 4 or x.shape[2:] != (4 * 2**s, 4 * 2**s) for s, x in enumerate(images)):
            raise ValueError(f"images must be {self.num_stages} tensors [N, C, r, r] with r = 4, 8, ..., "
                             f"{self.max_resolution}, got {[tuple(x.shape) for x in images]}")
        top = self.num_stages - 1
        x = lrelu(self.from_rgb[top](images[top]))
        for s in range(top, 0, -1):
            x = self.blocks[s](torch.cat([x, images[s]], dim=1))
        return self.head(torch.cat([x, images[0]], dim=1))


class MSGGAN(nn.Module):
    def __init__(self, z_dim: int = 64, max_resolution: int = 16, max_width: int = 64, channels: int = 1) -> None:
        super().__init__()
        self.generator = Generator(z_dim, max_resolution, max_width, channels)
        self.discriminator = MultiScaleDiscriminator(max_resolution, max_width, channels)

    def sample(self, n: int) -> torch.Tensor:
        """n images at the largest scale, clamped to [-1, 1]."""
        z = torch.randn(n, self.generator.z_dim, device=next(self.parameters()).device)
        return self.generator(z).clamp(-1, 1)


def pyramid(images: torch.Tensor, num_scales: int) -> list[torch.Tensor]:
    """``images`` and its 2x2 average-poolings, ``num_scales`` in all, lowest resolution first."""
    scales = [images]
    for _ in range(num_scales - 1):
        scales.append(downsample(scales[-1]))
    return scales[::-1]


def train_step(model: MSGGAN, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               real: torch.Tensor) -> dict[str, float]:
    """One discriminator and one generator update; ``real`` at ``max_resolution``."""
    G, D = model.generator, model.discriminator
    real_scales = pyramid(real, G.num_stages)
    z = torch.randn(real.shape[0], G.z_dim, device=real.device, dtype=real.dtype)
    with torch.no_grad():
        fake_scales = G.images(z)
    d_loss = F.softplus(-D(real_scales)).mean() + F.softplus(D(fake_scales)).mean()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    g_loss = F.softplus(-D(G.images(torch.randn_like(z)))).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()  # also fills D's .grad; opt_d.zero_grad clears it before D's next step
    opt_g.step()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}


register(TrainSpec(
    name="msggan",
    summary="MSG-GAN (images at 4, 8, 16 all fed to D, non-saturating loss) on 16x16 digits in [-1, 1]; "
            "grid: samples",
    build=lambda: MSGGAN(),
    data=lambda seed: load_digits_images(size=16, value_range=(-1.0, 1.0), seed=seed),
    optimizers=gan_optimizers,
    step=lambda model, optimizers, batch, step: train_step(
        model, optimizers["generator"], optimizers["discriminator"], batch[0]),
    grid=lambda model, batch: (model.sample(64) + 1) / 2,
    batch_size=64, steps=2000,
))
