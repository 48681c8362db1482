"""Pix2Pix (Isola et al. 2017): paired image-to-image translation with a conditional GAN, here from edge
maps of the 16x16 digits back to the digits.

The generator is a U-Net: an encoder of stride-2 convs down to a bottleneck and a decoder of stride-2
transposed convs, each decoder stage concatenating the encoder features of its resolution, so that
fine detail such as the edges' positions need not squeeze through the bottleneck. The paper's dropout
noise is left out: the authors report it gave only minor stochasticity in the outputs, and without it
the output is a deterministic function of the input.

The discriminator is a PatchGAN: a small fully convolutional net that reads the input and the
(real or generated) output stacked as channels, and outputs a grid of logits, each judging one
:data:`PATCH_SIZE` x :data:`PATCH_SIZE` patch. The L1 term takes care of the low frequencies; the
patches only need to judge local sharpness. Objective: D minimizes the binary cross-entropy on real
pairs (1) and generated pairs (0), halved as in the paper to slow D relative to G; G minimizes the
non-saturating adversarial loss + ``l1_weight`` * L1(G(x), y), with the paper's weight 100.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.gan import discriminator_loss, generator_loss
from fastgen.models.training import Batch, TrainSpec, register

# Each PatchGAN logit sees a 10x10 window (two 4x4 stride-2 convs, then a 1x1 conv), and neighbouring
# logits' windows are 4 pixels apart: a 4x4 grid of patches on a 16x16 image.
PATCH_SIZE, PATCH_STRIDE = 10, 4
# Sobel's response to a full 0 -> 1 step is 4; at half of it the digits' 2-pixel-wide outlines remain, while
# lower thresholds also mark the grey-level changes inside the strokes and fill them in.
EDGE_THRESHOLD = 2.0


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def edge_map(images: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Images [B, 1, H, W] in [0, 1] -> binary edge maps in {0, 1}: Sobel gradient magnitude > ``threshold``."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape [B, 1, H, W], got {tuple(images.shape)}")
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device)
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)
    gradients = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels)
    return (gradients.norm(dim=1, keepdim=True) > threshold).float()


def edges_to_digits(seed: int = 0) -> Batch:
    """The paired training set: images [1797, 2, 16, 16] in [-1, 1] whose channel 0 is the edge map (the
    input) and channel 1 the digit (the target), and the digits' labels."""
    from fastgen.data.digits import load_digits_images

    digits, labels = load_digits_images(size=16, value_range=(0.0, 1.0), seed=seed)
    return torch.cat([edge_map(digits), digits], dim=1) * 2 - 1, labels


class UNetGenerator(nn.Module):
    """Input [B, in_channels, H, W] -> output [B, out_channels, H, W] in [-1, 1]; H and W divisible by
    2**depth. Encoder widths base, 2 base, 4 base, ... (at most 8 base); BatchNorm everywhere but the
    first and last layers."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 32, depth: int = 3) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, base=base, depth=depth)
        widths = [base * min(2 ** i, 8) for i in range(depth)]
        self.downs = nn.ModuleList()
        for i, width in enumerate(widths):
            layers = [nn.Conv2d(widths[i - 1] if i else in_channels, width, 4, stride=2, padding=1)]
            if 0 < i < depth - 1:
                layers.append(nn.BatchNorm2d(width))
            self.downs.append(nn.Sequential(*layers, nn.LeakyReLU(0.2)))
        # Up stage i returns to the resolution of encoder stage i - 1; all but the innermost read the
        # concatenation of the previous up stage's output and that encoder stage's features.
        self.ups = nn.ModuleList()
        for i in reversed(range(depth)):
            c_in = widths[i] * (1 if i == depth - 1 else 2)
            if i == 0:
                self.ups.append(nn.Sequential(nn.ConvTranspose2d(c_in, out_channels, 4, stride=2, padding=1),
                                              nn.Tanh()))
            else:
                self.ups.append(nn.Sequential(nn.ConvTranspose2d(c_in, widths[i - 1], 4, stride=2, padding=1),
                                              nn.BatchNorm2d(widths[i - 1]), nn.ReLU()))
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"x must be [B, C, H, W] with H and W divisible by {2 ** self.depth}, got "
                             f"{tuple(x.shape)}")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[0](skips.pop())  # the bottleneck
        for up in self.ups[1:]:
            x = up(torch.cat([x, skips.pop()], dim=1))
        return x


class PatchDiscriminator(nn.Module):
    """Channels stacked [B, in_channels, H, W] -> logits [B, 1, H/4, W/4], one per PATCH_SIZE-wide patch
    (H and W divisible by 4). For Pix2Pix the channels are the input and the candidate output."""

    def __init__(self, in_channels: int = 2, base: int = 32) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, base=base)
        self.net = nn.Sequential(nn.Conv2d(in_channels, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(base, 2 * base, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(2 * base, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % PATCH_STRIDE or x.shape[-2] % PATCH_STRIDE:
            raise ValueError(f"x must be [B, C, H, W] with H and W divisible by {PATCH_STRIDE}, got {tuple(x.shape)}")
        return self.net(x)


class Pix2Pix(nn.Module):
    """A U-Net generator and a PatchGAN discriminator conditioned on the generator's input."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 32, l1_weight: float = 100.0) -> None:
        super().__init__()
        if not l1_weight >= 0:
            raise ValueError(f"l1_weight must be >= 0, got {l1_weight!r}")
        self.in_channels, self.l1_weight = in_channels, float(l1_weight)
        self.generator = UNetGenerator(in_channels, out_channels, base)
        self.discriminator = PatchDiscriminator(in_channels + out_channels, base)

    def split(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Paired images [B, in + out channels, H, W] -> (inputs, targets)."""
        if pairs.dim() != 4 or pairs.shape[1] <= self.in_channels:
            raise ValueError(f"pairs must be [B, C, H, W] with more than {self.in_channels} channels, got "
                             f"{tuple(pairs.shape)}")
        return pairs[:, :self.in_channels], pairs[:, self.in_channels:]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.generator(inputs)

    def discriminate(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        return self.discriminator(torch.cat([inputs, outputs], dim=1))


def train_step(model: Pix2Pix, optimizers: dict[str, torch.optim.Optimizer], pairs: torch.Tensor) -> dict[str, float]:
    """One discriminator update on real and generated pairs, then one generator update."""
    inputs, targets = model.split(pairs)
    fake = model(inputs)
    d_loss = 0.5 * discriminator_loss(model.discriminate(inputs, targets), model.discriminate(inputs, fake.detach()))
    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers["discriminator"].step()

    adversarial = generator_loss(model.discriminate(inputs, fake))
    l1 = F.l1_loss(fake, targets)
    optimizers["generator"].zero_grad(set_to_none=True)
    (adversarial + model.l1_weight * l1).backward()
    optimizers["generator"].step()
    return {"d_loss": d_loss.item(), "g_adversarial": adversarial.item(), "l1": l1.item()}


def translation_grid(model: Pix2Pix, pairs: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Rows of ``n`` in [0, 1]: inputs, the generator's outputs, targets."""
    inputs, targets = model.split(pairs[:n])
    return (torch.cat([inputs, model(inputs), targets]) + 1) / 2


register(TrainSpec(
    name="pix2pix",
    summary="Pix2Pix (U-Net generator, 10x10 PatchGAN, adversarial + 100 L1) from Sobel edge maps to 16x16 "
            "digits; rows: input, output, target",
    build=Pix2Pix,
    data=edges_to_digits,
    optimizers=lambda model: {
        "generator": torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))},
    step=lambda model, optimizers, batch, step: train_step(model, optimizers, batch[0]),
    grid=lambda model, batch: translation_grid(model, batch[0]),
    batch_size=32, steps=2000,
))
