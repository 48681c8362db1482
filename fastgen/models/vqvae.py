"""A small VQ-VAE (van den Oord et al. 2017) for 8x8 single-channel images, such as scikit-learn's
``load_digits`` scaled to [-1, 1] by :func:`digits_to_images`.

conv encoder (8x8 -> 4x4 latent vectors) -> :class:`fastgen.nn.VectorQuantizer` -> conv decoder
(4x4 -> 8x8). By default the codebook is the EMA one (Razavi et al. 2019), with dead-code revival.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.training import TrainSpec, register
from fastgen.nn import VectorQuantizer, VQOutput

# load_digits' pixels are integers 0..16.
DIGITS_MAX_VALUE = 16.0


def digits_to_images(data: torch.Tensor) -> torch.Tensor:
    """``load_digits().data`` [N, 64] (values 0..16) -> float32 images [N, 1, 8, 8] in [-1, 1]."""
    data = torch.as_tensor(data, dtype=torch.float32)
    if data.dim() != 2 or data.shape[1] != 64:
        raise ValueError(f"data must have shape [N, 64] (8x8 digits), got {tuple(data.shape)}")
    return (data / DIGITS_MAX_VALUE * 2 - 1).view(-1, 1, 8, 8)


class VQVAE(nn.Module):
    """image [N, channels, 8, 8] -> (reconstruction [N, channels, 8, 8], :class:`VQOutput`).

    The encoder halves the resolution once (8x8 -> 4x4) to ``latent_dim`` channels; every latent
    vector is quantized to one of ``codebook_size`` codes; the decoder mirrors the encoder.
    ``decay`` and ``quantizer_kwargs`` go to :class:`VectorQuantizer`.
    """

    def __init__(self, channels: int = 1, hidden: int = 32, latent_dim: int = 16, codebook_size: int = 32,
                 decay: float | None = 0.99, **quantizer_kwargs) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, 2 * hidden, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * hidden, latent_dim, 1),
        )
        self.quantizer = VectorQuantizer(latent_dim, codebook_size, decay=decay, channel_first=True,
                                         **quantizer_kwargs)
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_dim, 2 * hidden, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * hidden, hidden, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, VQOutput]:
        vq = self.quantizer(self.encoder(images))
        return self.decoder(vq.quantized), vq

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [N, 4, 4] (e.g. sampled from a prior) -> images [N, channels, 8, 8]."""
        codes = self.quantizer.codebook[indices]
        if self.quantizer.metric == "cosine":
            codes = F.normalize(codes, dim=-1)
        return self.decoder(codes.movedim(-1, 1))


def train_step(model: VQVAE, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> dict[str, float]:
    """One update on images ``batch``: loss = MSE reconstruction + the quantizer's loss.

    Returns the losses and the quantizer's batch statistics (perplexity, usage) as floats.
    """
    model.train()
    reconstruction, vq = model(batch)
    reconstruction_loss = F.mse_loss(reconstruction, batch)
    loss = reconstruction_loss + vq.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "reconstruction_loss": reconstruction_loss.item(), "vq_loss": vq.loss.item(),
            "perplexity": vq.perplexity.item(), "usage": vq.usage.item()}


def reconstruction_grid(model: VQVAE, images: torch.Tensor, n: int = 32) -> torch.Tensor:
    """The first n images of ``images`` [B, C, 8, 8] in [-1, 1], then their reconstructions, in [0, 1]."""
    images = images[:n]
    reconstruction, _ = model(images)
    return (torch.cat([images, reconstruction]).clamp(-1, 1) + 1) / 2


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fastgen.data.digits import load_digits_images

    return load_digits_images(size=8, value_range=(-1.0, 1.0), seed=seed)


register(TrainSpec(
    name="vqvae",
    summary="VQ-VAE (EMA codebook, 32 codes on a 4x4 grid) on 8x8 digits; inputs, then their reconstructions",
    build=VQVAE,
    data=_digits,
    optimizers=lambda model: {"model": torch.optim.Adam(model.parameters(), lr=2e-3)},
    step=lambda model, optimizers, batch, step: train_step(model, optimizers["model"], batch[0]),
    grid=lambda model, batch: reconstruction_grid(model, batch[0]),
    batch_size=64, steps=1000,
))
