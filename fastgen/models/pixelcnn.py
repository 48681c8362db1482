"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): an autoregressive model
p(x) = prod_i p(x_i | x_<i) of a grid of discrete values in raster order, with exact likelihood.

Masked convolutions keep output i a function of the inputs before i: the first layer's mask "A"
hides the centre, the later layers' mask "B" shows it (their centre features already depend only on
earlier inputs). Each position holds one value (a grey level, or a VQ-VAE code), so the masks only
order positions; RGB PixelCNNs also order the R, G, B channels within a position, not needed here.
A stack of masked convolutions has the original PixelCNN's blind spot: on a grid wider than the
first kernel, output i misses some earlier inputs up and to the right (Gated PixelCNN's split
vertical and horizontal stacks remove it). The 7x7 first kernel covers the whole 4x4 code grid, so
the code prior has none.

Two models on the 8x8 digits, whose pixels are integers 0..16 (images in [-1, 1] hold k / 8 - 1):

* ``pixelcnn``: a PixelCNN over the 17 grey levels. The data is discrete, so its bits/dim is the exact
  negative log-likelihood (log2 17 = 4.09 bits for a uniform model); :mod:`fastgen.models.flows`
  reports an upper bound of the same quantity.
* ``vqvae_prior``: a :class:`fastgen.models.vqvae.VQVAE` and a class-conditional PixelCNN over its
  4x4 grid of codes (:class:`VQVAEPrior`). Sampling codes for a label and decoding them draws a digit
  of that class.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models import vqvae
from fastgen.models.training import Batch, TrainSpec, register
from fastgen.ops import _checks as checks

DIGIT_LEVELS = 17  # load_digits' pixels are the integers 0..16
MASK_TYPES = ("A", "B")
CODE_GRID_SIZE = 4  # the VQ-VAE encodes an 8x8 image as a 4x4 grid of codes
DIGIT_CLASSES = 10


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution whose square kernel sees only the positions before its centre in raster
    order (the rows above, and the centre row's left part); mask type "B" also sees the centre.

    Use "A" for the layer that reads the data (output i must not see input i), "B" after it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str) -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1 (the mask needs a centre), got {kernel_size!r}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type = mask_type
        centre = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[centre, centre + (mask_type == "B"):] = 0
        mask[centre + 1:] = 0
        # Derived from the constructor's arguments, so it stays out of the state dict.
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}"


class _MaskedLayer(nn.Module):
    """A masked convolution plus, for a class-conditional model, a learned per-channel bias per label."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str,
                 num_classes: int | None) -> None:
        super().__init__()
        self.conv = MaskedConv2d(in_channels, out_channels, kernel_size, mask_type)
        self.label_bias = None
        if num_classes is not None:
            self.label_bias = nn.Embedding(num_classes, out_channels)
            # The model starts unconditional; a bias's gradient does not vanish at zero, so it still learns.
            nn.init.zeros_(self.label_bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x)
        if self.label_bias is not None:
            x = x + self.label_bias(labels)[:, :, None, None]
        return x


class _ResidualBlock(nn.Module):
    """x + 1x1(relu(masked 3x3 "B"(relu(x)))): a 1x1 convolution mixes channels at one position only,
    so it keeps the masks' ordering."""

    def __init__(self, hidden: int, num_classes: int | None) -> None:
        super().__init__()
        self.masked = _MaskedLayer(hidden, hidden, 3, "B", num_classes)
        self.mix = nn.Conv2d(hidden, hidden, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return x + self.mix(F.relu(self.masked(F.relu(x), labels)))


class PixelCNN(nn.Module):
    """Autoregressive model of ``size`` x ``size`` grids of values in 0..levels-1, optionally
    conditioned on a class label in 0..num_classes-1.

    ``forward(x, labels)``: x int64 [B, size, size] -> logits [B, levels, size, size], where the logits
    at position i are a function of x's values before i (raster order) and of the label only.
    Each value is embedded in ``embed_dim`` channels, read by a ``kernel_size`` type-"A" masked
    convolution, then ``num_blocks`` residual blocks and a 1x1 head. ``labels`` must be None for an
    unconditional model (``num_classes=None``) and int64 [B] for a conditional one.
    """

    def __init__(self, levels: int = DIGIT_LEVELS, size: int = 8, hidden: int = 64, num_blocks: int = 4,
                 kernel_size: int = 7, embed_dim: int = 16, num_classes: int | None = None) -> None:
        super().__init__()
        for name, value in [("size", size), ("hidden", hidden), ("num_blocks", num_blocks),
                            ("embed_dim", embed_dim)]:
            checks.positive_int(name, value)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2 (the number of values a position takes), got {levels!r}")
        if num_classes is not None:
            checks.positive_int("num_classes", num_classes)
        self.levels, self.size, self.num_classes = levels, size, num_classes
        self.embedding = nn.Embedding(levels, embed_dim)
        self.first = _MaskedLayer(embed_dim, hidden, kernel_size, "A", num_classes)
        self.blocks = nn.ModuleList([_ResidualBlock(hidden, num_classes) for _ in range(num_blocks)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, levels, 1))

    def _check_input(self, x: object, labels: object) -> None:
        checks.tensor("x", x)
        if x.dtype != torch.int64 or x.dim() != 3 or x.shape[1:] != (self.size, self.size):
            raise ValueError(f"x must be an int64 tensor [B, {self.size}, {self.size}], got {x.dtype} "
                             f"{tuple(x.shape)}")
        if x.numel() and not (x.min() >= 0 and x.max() < self.levels):
            raise ValueError(f"x must hold values in 0..{self.levels - 1}, got values in "
                             f"[{x.min().item()}, {x.max().item()}]")
        self._check_labels(labels, x.shape[0])

    def _check_labels(self, labels: object, batch: int) -> None:
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("labels must be None: this PixelCNN is unconditional (num_classes=None)")
            return
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (batch,):
            raise ValueError(f"labels must be an int64 tensor [{batch}] for this class-conditional PixelCNN, got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
        if labels.numel() and not (labels.min() >= 0 and labels.max() < self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got values in "
                             f"[{labels.min().item()}, {labels.max().item()}]")

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, labels)
        h = self.first(self.embedding(x).movedim(-1, 1), labels)
        for block in self.blocks:
            h = block(h, labels)
        return self.head(h)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-probability of each grid, [B] nats: the sum of the per-position log-likelihoods."""
        return -F.cross_entropy(self(x, labels), x, reduction="none").sum((1, 2))

    def bits_per_dim(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood of each grid in bits per position, [B]; log2(levels) for uniform logits."""
        return -self.log_prob(x, labels) / (self.size**2 * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n grids [n, size, size] int64, drawn position by position in raster order from the softmax of
        the logits divided by ``temperature`` (below 1 sharpens, above 1 flattens). One forward pass
        per position: the model is small, so recomputing the whole grid costs less code than caching."""
        checks.positive_int("n", n)
        checks.positive_float("temperature", temperature)
        self._check_labels(labels, n)
        device = self.embedding.weight.device
        x = torch.zeros(n, self.size, self.size, dtype=torch.int64, device=device)
        for row in range(self.size):
            for col in range(self.size):
                probabilities = (self(x, labels)[:, :, row, col] / temperature).softmax(1)
                x[:, row, col] = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        return x


def images_to_levels(images: torch.Tensor, levels: int = DIGIT_LEVELS) -> torch.Tensor:
    """Images [B, 1, H, W] in [-1, 1] -> int64 [B, H, W] of the nearest of ``levels`` evenly spaced values."""
    checks.tensor("images", images)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape [B, 1, H, W], got {tuple(images.shape)}")
    if images.numel() and not (images.min() >= -1 and images.max() <= 1):
        raise ValueError(f"images must lie in [-1, 1], got values in [{images.min().item()}, {images.max().item()}]")
    return torch.round((images[:, 0] + 1) / 2 * (levels - 1)).long()


def levels_to_images(x: torch.Tensor, levels: int = DIGIT_LEVELS) -> torch.Tensor:
    """The inverse of :func:`images_to_levels`: int [B, H, W] -> images [B, 1, H, W] in [-1, 1]."""
    return (x.unsqueeze(1).float() / (levels - 1)) * 2 - 1


class VQVAEPrior(nn.Module):
    """A VQ-VAE and a class-conditional PixelCNN ``prior`` over its 4x4 grid of codes.

    They train one after the other (:func:`prior_train_step`): the VQ-VAE for the first
    ``vqvae_steps`` steps, then the prior on the codes that the frozen VQ-VAE assigns. The prior
    needs fixed targets, and the codes move until the VQ-VAE is trained (its EMA codebook follows
    the encoder and revives dead codes), so training both at once would fit codes that later change.
    """

    def __init__(self, vqvae_model: vqvae.VQVAE, prior: PixelCNN, vqvae_steps: int) -> None:
        super().__init__()
        codebook_size = vqvae_model.quantizer.codebook_size
        if prior.size != CODE_GRID_SIZE or prior.levels != codebook_size or prior.num_classes is None:
            raise ValueError(f"prior must be a class-conditional PixelCNN over {CODE_GRID_SIZE}x{CODE_GRID_SIZE} "
                             f"grids of the VQ-VAE's {codebook_size} codes, got size={prior.size}, "
                             f"levels={prior.levels}, num_classes={prior.num_classes}")
        self.vqvae = vqvae_model
        self.prior = prior
        self.vqvae_steps = checks.positive_int("vqvae_steps", vqvae_steps)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 1, 8, 8] in [-1, 1] -> their codes [B, 4, 4]. Puts the VQ-VAE in eval mode, which
        keeps its codebook as it is (training mode moves the EMA codebook and revives dead codes)."""
        self.vqvae.eval()
        return self.vqvae(images)[1].indices

    def sample(self, labels: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """A grid of codes [N, 4, 4] for each label of ``labels`` int64 [N], from the prior."""
        checks.tensor("labels", labels)
        return self.prior.sample(len(labels), labels, temperature, generator)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, 4, 4] -> images [N, 1, 8, 8] (about [-1, 1])."""
        return self.vqvae.decode_indices(codes)


def build_vqvae_prior(vqvae_steps: int = 1000) -> VQVAEPrior:
    """The ``vqvae_prior`` spec's model: the default VQ-VAE, and a PixelCNN over its codes conditioned on the digit."""
    vqvae_model = vqvae.VQVAE()
    prior = PixelCNN(levels=vqvae_model.quantizer.codebook_size, size=CODE_GRID_SIZE, num_classes=DIGIT_CLASSES)
    return VQVAEPrior(vqvae_model, prior, vqvae_steps)


def pixelcnn_train_step(model: PixelCNN, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> dict[str, float]:
    """One update on the mean bits/dim of ``images`` [B, 1, H, W] in [-1, 1] (as ``model.levels`` levels)."""
    model.train()
    loss = model.bits_per_dim(images_to_levels(images, model.levels)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"bits_per_dim": loss.item()}


def prior_train_step(model: VQVAEPrior, optimizers: dict[str, torch.optim.Optimizer], batch: Batch,
                     step: int) -> dict[str, float]:
    """Step ``step`` of the two phases: a VQ-VAE update (:func:`fastgen.models.vqvae.train_step`) before
    ``model.vqvae_steps``, then an update of the prior on the mean bits per code of the batch's codes."""
    images, labels = batch
    if step < model.vqvae_steps:
        return vqvae.train_step(model.vqvae, optimizers["vqvae"], images)
    codes = model.encode(images)
    model.prior.train()
    loss = model.prior.bits_per_dim(codes, labels).mean()
    optimizers["prior"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["prior"].step()
    return {"prior_bits_per_dim": loss.item()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def pixelcnn_grid(model: PixelCNN, n: int = 64) -> torch.Tensor:
    """n samples as images [n, 1, 8, 8] in [0, 1]; seeded, so successive checkpoints draw with the same noise."""
    generator = torch.Generator(device=_device(model)).manual_seed(0)
    return (levels_to_images(model.sample(n, generator=generator), model.levels) + 1) / 2


def prior_grid(model: VQVAEPrior, per_class: int = 8) -> torch.Tensor:
    """``per_class`` decoded samples of each class 0..9 in turn (a row each in an 8-wide grid), in [0, 1]."""
    device = _device(model)
    labels = torch.arange(model.prior.num_classes, device=device).repeat_interleave(per_class)
    generator = torch.Generator(device=device).manual_seed(0)
    return (model.decode(model.sample(labels, generator=generator)).clamp(-1, 1) + 1) / 2


def _digits(seed: int) -> Batch:
    from fastgen.data.digits import load_digits_images

    return load_digits_images(size=8, value_range=(-1.0, 1.0), seed=seed)


def _adam(parameters, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=lr)


register(TrainSpec(
    name="pixelcnn",
    summary="PixelCNN on 8x8 digits (17 grey levels, exact bits/dim); samples at temperature 1",
    build=PixelCNN,
    data=_digits,
    optimizers=lambda model: {"model": _adam(model.parameters())},
    step=lambda model, optimizers, batch, step: pixelcnn_train_step(model, optimizers["model"], batch[0]),
    grid=lambda model, batch: pixelcnn_grid(model),
    batch_size=64, steps=2000,
))

register(TrainSpec(
    name="vqvae_prior",
    summary="VQ-VAE on 8x8 digits for 1000 steps, then a class-conditional PixelCNN prior over its 4x4 codes; "
            "a row of decoded samples per class 0..9",
    build=build_vqvae_prior,
    data=_digits,
    optimizers=lambda model: {"vqvae": _adam(model.vqvae.parameters(), 2e-3), "prior": _adam(model.prior.parameters())},
    step=prior_train_step,
    grid=lambda model, batch: prior_grid(model),
    batch_size=64, steps=3000,
))
