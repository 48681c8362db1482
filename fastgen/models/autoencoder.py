"""Auto-encoders for 8x8 digits in [0, 1]: an under-complete one (64 pixels through an 8-d
bottleneck) and a denoising one (the same network fed a corrupted input, trained to give back the
clean image).

Both are small MLPs: on 64-pixel images a convolutional encoder buys nothing but code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.training import TrainSpec, register

DIGITS_SHAPE = (1, 8, 8)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class AutoEncoder(nn.Module):
    """images [N, 1, 8, 8] in [0, 1] -> reconstructions (a sigmoid output) through a ``bottleneck``-d
    code; ``bottleneck`` < 64 makes it under-complete, so it has to learn what digits share."""

    def __init__(self, bottleneck: int = 8, hidden: int = 128, image_shape: tuple[int, ...] = DIGITS_SHAPE) -> None:
        super().__init__()
        _positive_int("bottleneck", bottleneck)
        _positive_int("hidden", hidden)
        self.image_shape = tuple(image_shape)
        pixels = 1
        for size in self.image_shape:
            pixels *= _positive_int("image_shape entries", size)
        if bottleneck >= pixels:
            raise ValueError(f"bottleneck must be smaller than the {pixels} pixels (under-complete), got {bottleneck}")
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck))
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, pixels))

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape [N, {', '.join(map(str, self.image_shape))}], got "
                             f"{tuple(images.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        return self.encoder(images)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(codes)).view(-1, *self.image_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


class DenoisingAutoEncoder(AutoEncoder):
    """An :class:`AutoEncoder` trained on corrupted inputs: :meth:`corrupt` adds Gaussian noise of
    ``noise_std`` and zeroes each pixel with probability ``mask_prob``; the target stays clean."""

    def __init__(self, bottleneck: int = 8, hidden: int = 128, noise_std: float = 0.3, mask_prob: float = 0.0,
                 image_shape: tuple[int, ...] = DIGITS_SHAPE) -> None:
        super().__init__(bottleneck, hidden, image_shape)
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        if not 0 <= mask_prob < 1:
            raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob!r}")
        self.noise_std, self.mask_prob = float(noise_std), float(mask_prob)

    def corrupt(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noisy = images + self.noise_std * torch.randn(images.shape, generator=generator, device=images.device)
        if self.mask_prob > 0:
            keep = torch.rand(images.shape, generator=generator, device=images.device) >= self.mask_prob
            noisy = noisy * keep
        return noisy.clamp(0, 1)


def reconstruction_loss(model: AutoEncoder, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the reconstruction of ``inputs`` against ``targets``, summed over the
    pixels and averaged over the batch (nats per image)."""
    return F.binary_cross_entropy(model(inputs), targets, reduction="sum") / len(targets)


def train_step(model: AutoEncoder, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> dict[str, float]:
    """One update; a :class:`DenoisingAutoEncoder` sees a corrupted copy of ``images``."""
    inputs = model.corrupt(images) if isinstance(model, DenoisingAutoEncoder) else images
    loss = reconstruction_loss(model, inputs, images)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item()}


def _grid(model: AutoEncoder, images: torch.Tensor, n: int = 24) -> torch.Tensor:
    """Rows of 8: the inputs the model sees (corrupted for the denoising one, with a fixed seed), then
    their reconstructions, then (denoising) the clean images."""
    images = images[:n]
    if isinstance(model, DenoisingAutoEncoder):
        noisy = model.corrupt(images, torch.Generator(device=images.device).manual_seed(0))
        return torch.cat([noisy, model(noisy), images])
    return torch.cat([images, model(images)])


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fastgen.data.digits import load_digits_images

    return load_digits_images(size=8, seed=seed)


def _spec(name: str, summary: str, build) -> TrainSpec:
    return register(TrainSpec(
        name=name, summary=summary, build=build, data=_digits,
        optimizers=lambda model: {"model": torch.optim.Adam(model.parameters(), lr=1e-3)},
        step=lambda model, optimizers, batch, step: train_step(model, optimizers["model"], batch[0]),
        grid=lambda model, batch: _grid(model, batch[0]),
        batch_size=64, steps=2000))


_spec("autoencoder", "under-complete auto-encoder (64 pixels -> 8-d code) on 8x8 digits; inputs over reconstructions",
      AutoEncoder)
_spec("denoising_autoencoder", "denoising auto-encoder (Gaussian noise 0.3) on 8x8 digits; noisy inputs, "
      "reconstructions, clean images", DenoisingAutoEncoder)
