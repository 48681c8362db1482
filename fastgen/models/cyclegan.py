"""CycleGAN (Zhu et al. 2017): translation between two unpaired image domains, here 16x16 digits (A) and
thickened digits (B: a 3x3 max-pool, i.e. a grey-level dilation), the two drawn from disjoint halves of
the data so that no B image is the translation of an A image in the set.

Two generators G_AB: A -> B and G_BA: B -> A (the paper's ResNet generator, scaled down: a 7x7 conv,
one stride-2 conv, residual blocks, one stride-2 transposed conv, a 7x7 conv; InstanceNorm) and two
PatchGAN discriminators D_A and D_B (:class:`fastgen.models.pix2pix.PatchDiscriminator` on one
channel). Losses as in the paper: least-squares GAN (D pushes real patches to 1 and fake ones to 0,
G pushes its fakes to 1), plus ``cycle_weight`` * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|), plus
the identity term ``identity_weight`` * (|G_AB(b) - b| + |G_BA(a) - a|) with the paper's
identity_weight = cycle_weight / 2 = 5. The paper's pool of 50 past fakes for the discriminators is
left out: it only damps oscillations, and keeping it would put unsaved state outside the checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.pix2pix import PatchDiscriminator
from fastgen.models.training import Batch, TrainSpec, register


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def thicken(images: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] -> the same size with every stroke one pixel wider each way (3x3 max-pool)."""
    return F.max_pool2d(images, 3, stride=1, padding=1)


def unpaired_digits(seed: int = 0) -> Batch:
    """images [898, 2, 16, 16] in [-1, 1]: channel 0 a digit of domain A, channel 1 a thickened digit of
    domain B, taken from the other half of the shuffled digits (so a row's two images are different
    digits); labels are those of the A digits."""
    from fastgen.data.digits import load_digits_images

    digits, labels = load_digits_images(size=16, value_range=(-1.0, 1.0), seed=seed)
    half = len(digits) // 2
    return torch.cat([digits[:half], thicken(digits[half:2 * half])], dim=1), labels[:half]


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True),
                                 nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                 nn.InstanceNorm2d(width, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResNetGenerator(nn.Module):
    """Image [B, channels, H, W] -> image of the same shape in [-1, 1] (H, W even)."""

    def __init__(self, channels: int = 1, base: int = 16, num_blocks: int = 2) -> None:
        super().__init__()
        _check_positive(channels=channels, base=base, num_blocks=num_blocks)
        self.net = nn.Sequential(
            nn.Conv2d(channels, base, 7, padding=3), nn.InstanceNorm2d(base, affine=True), nn.ReLU(),
            nn.Conv2d(base, 2 * base, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * base, affine=True), nn.ReLU(),
            *(_ResidualBlock(2 * base) for _ in range(num_blocks)),
            nn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1), nn.InstanceNorm2d(base, affine=True),
            nn.ReLU(), nn.Conv2d(base, channels, 7, padding=3), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"x must be [B, C, H, W] with even H and W, got {tuple(x.shape)}")
        return self.net(x)


def lsgan_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[(D(real) - 1)^2] + E[D(fake)^2]); halved as in the paper, to slow D relative to G."""
    return 0.5 * (((real - 1) ** 2).mean() + (fake ** 2).mean())


def lsgan_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """E[(D(G(x)) - 1)^2]."""
    return ((fake - 1) ** 2).mean()


class CycleGAN(nn.Module):
    """Generators ``g_ab``, ``g_ba`` and discriminators ``d_a`` (judges A images), ``d_b`` (judges B images)."""

    def __init__(self, channels: int = 1, base: int = 16, num_blocks: int = 2, cycle_weight: float = 10.0,
                 identity_weight: float = 5.0) -> None:
        super().__init__()
        for name, value in (("cycle_weight", cycle_weight), ("identity_weight", identity_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.channels, self.cycle_weight, self.identity_weight = channels, float(cycle_weight), float(identity_weight)
        self.g_ab, self.g_ba = (ResNetGenerator(channels, base, num_blocks) for _ in range(2))
        self.d_a, self.d_b = (PatchDiscriminator(channels, base) for _ in range(2))

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 2 channels, H, W] -> (A images, B images)."""
        if images.dim() != 4 or images.shape[1] != 2 * self.channels:
            raise ValueError(f"images must be [B, {2 * self.channels}, H, W] (A then B channels), got "
                             f"{tuple(images.shape)}")
        return images[:, :self.channels], images[:, self.channels:]

    def generators(self) -> list[nn.Parameter]:
        return [*self.g_ab.parameters(), *self.g_ba.parameters()]

    def discriminators(self) -> list[nn.Parameter]:
        return [*self.d_a.parameters(), *self.d_b.parameters()]


def train_step(model: CycleGAN, optimizers: dict[str, torch.optim.Optimizer], images: torch.Tensor) -> dict[str, float]:
    """One update of both generators on the adversarial, cycle and identity losses, then one of both
    discriminators on real images and the fakes just made."""
    a, b = model.split(images)
    fake_b, fake_a = model.g_ab(a), model.g_ba(b)
    adversarial = lsgan_generator_loss(model.d_b(fake_b)) + lsgan_generator_loss(model.d_a(fake_a))
    cycle = F.l1_loss(model.g_ba(fake_b), a) + F.l1_loss(model.g_ab(fake_a), b)
    identity = F.l1_loss(model.g_ab(b), b) + F.l1_loss(model.g_ba(a), a)
    optimizers["generator"].zero_grad(set_to_none=True)
    (adversarial + model.cycle_weight * cycle + model.identity_weight * identity).backward()
    optimizers["generator"].step()

    # detach: the discriminators' update must not reach the generators.
    d_loss = (lsgan_discriminator_loss(model.d_a(a), model.d_a(fake_a.detach()))
              + lsgan_discriminator_loss(model.d_b(b), model.d_b(fake_b.detach())))
    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers["discriminator"].step()
    return {"g_adversarial": adversarial.item(), "cycle": cycle.item(), "identity": identity.item(),
            "d_loss": d_loss.item()}


def translation_grid(model: CycleGAN, images: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Rows of ``n`` in [0, 1]: A, G_AB(A), B, G_BA(B)."""
    a, b = model.split(images[:n])
    return (torch.cat([a, model.g_ab(a), b, model.g_ba(b)]) + 1) / 2


register(TrainSpec(
    name="cyclegan",
    summary="CycleGAN (two ResNet generators, two PatchGANs, LSGAN + cycle + identity losses) between unpaired "
            "16x16 digits and thickened digits; rows: A, G_AB(A), B, G_BA(B)",
    build=CycleGAN,
    data=unpaired_digits,
    optimizers=lambda model: {
        "generator": torch.optim.Adam(model.generators(), lr=2e-4, betas=(0.5, 0.999)),
        "discriminator": torch.optim.Adam(model.discriminators(), lr=2e-4, betas=(0.5, 0.999))},
    step=lambda model, optimizers, batch, step: train_step(model, optimizers, batch[0]),
    grid=lambda model, batch: translation_grid(model, batch[0]),
    batch_size=16, steps=2000,
))
