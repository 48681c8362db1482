"""Generative adversarial networks on the digits in [-1, 1]: the original GAN with MLPs (Goodfellow et
al. 2014), DCGAN (Radford et al. 2016: strided convs in D, transposed convs in G, BatchNorm, latent
vector arithmetic) and the conditional GAN (Mirza & Osindero 2014: a label embedding fed to both nets).

The discriminator outputs a logit and maximizes the log-likelihood of telling real (1) from fake (0),
i.e. minimizes binary cross-entropy with logits. The generator minimizes the non-saturating loss
-log D(G(z)) rather than log(1 - D(G(z))), whose gradient vanishes while D easily rejects the fakes
early in training.

A model is one :class:`GAN` module holding ``generator`` and ``discriminator`` so that ``fastgen train``
sees a single module with two optimizers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.training import Batch, TrainSpec, register

NUM_CLASSES = 10


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_size(size: int) -> None:
    if size not in (8, 16):
        raise ValueError(f"size must be 8 or 16, got {size!r}")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))]: binary cross-entropy with real = 1 and fake = 0."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating -E[log D(G(z))]: cross-entropy of the fakes against the label "real"."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class MLPGenerator(nn.Module):
    """z [B, latent_dim] -> image [B, 1, size, size] in [-1, 1] (tanh)."""

    def __init__(self, latent_dim: int = 16, hidden: int = 256, size: int = 8) -> None:
        super().__init__()
        _check_positive(latent_dim=latent_dim, hidden=hidden, size=size)
        self.size = size
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, size * size), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, 1, self.size, self.size)


class MLPDiscriminator(nn.Module):
    """image [B, 1, size, size] -> logit [B]."""

    def __init__(self, hidden: int = 256, size: int = 8) -> None:
        super().__init__()
        _check_positive(hidden=hidden, size=size)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size * size, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


class DCGenerator(nn.Module):
    """z [B, latent_dim] -> image [B, 1, size, size] in [-1, 1]: a linear layer to 4x4 feature maps, then
    stride-2 transposed convs doubling the resolution (4 -> 8 (-> 16)) with BatchNorm and ReLU, tanh out."""

    def __init__(self, latent_dim: int = 16, base: int = 32, size: int = 16) -> None:
        super().__init__()
        _check_positive(latent_dim=latent_dim, base=base)
        _check_size(size)
        ups = 2 if size == 16 else 1
        width = base * 2 ** ups
        self.project = nn.Sequential(nn.Linear(latent_dim, width * 16, bias=False), nn.Unflatten(1, (width, 4, 4)),
                                     nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(ups - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU()]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z))


class DCDiscriminator(nn.Module):
    """image [B, 1, size, size] -> logit [B]: stride-2 convs halving the resolution down to 4x4 (no pooling),
    LeakyReLU, BatchNorm after all but the first, then a linear layer."""

    def __init__(self, base: int = 32, size: int = 16) -> None:
        super().__init__()
        _check_positive(base=base)
        _check_size(size)
        layers: list[nn.Module] = [nn.Conv2d(1, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = base
        for _ in range(size // 8 - 1):  # 16 -> 8 above, 8 -> 4 here
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
                       nn.LeakyReLU(0.2)]
            width *= 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 4 * 4, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


class ConditionalGenerator(MLPGenerator):
    """(z [B, latent_dim], labels [B]) -> image: the MLP generator reading z concatenated with a learned
    embedding of the label."""

    def __init__(self, latent_dim: int = 16, hidden: int = 256, size: int = 8, num_classes: int = NUM_CLASSES,
                 embed_dim: int = 16) -> None:
        _check_positive(num_classes=num_classes, embed_dim=embed_dim)
        super().__init__(latent_dim + embed_dim, hidden, size)
        self.embed = nn.Embedding(num_classes, embed_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([z, self.embed(labels)], dim=1))


class ConditionalDiscriminator(nn.Module):
    """(image, labels [B]) -> logit [B]: the MLP discriminator reading the flattened image concatenated with
    a learned embedding of the label, so that it can reject a good digit of the wrong class."""

    def __init__(self, hidden: int = 256, size: int = 8, num_classes: int = NUM_CLASSES, embed_dim: int = 16) -> None:
        super().__init__()
        _check_positive(hidden=hidden, size=size, num_classes=num_classes, embed_dim=embed_dim)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = nn.Sequential(nn.Linear(size * size + embed_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([images.flatten(1), self.embed(labels)], dim=1)).squeeze(1)


class GAN(nn.Module):
    """A generator and its discriminator; ``num_classes`` set means both take labels (a conditional GAN)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int,
                 num_classes: int | None = None) -> None:
        super().__init__()
        _check_positive(latent_dim=latent_dim)
        if num_classes is not None:
            _check_positive(num_classes=num_classes)
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.num_classes = latent_dim, num_classes

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> None:
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("labels must be None for an unconditional GAN")
            return
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (batch,):
            raise ValueError(f"labels must be an int64 tensor [{batch}], got "
                             f"{getattr(labels, 'shape', type(labels).__name__)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents [B, latent_dim] (and labels [B] for a conditional GAN) -> images [B, 1, H, W] in [-1, 1]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        self._check_labels(labels, z.shape[0])
        return self.generator(z) if labels is None else self.generator(z, labels)

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, 1, H, W] (and labels) -> logits [B] of "real"."""
        self._check_labels(labels, images.shape[0])
        return self.discriminator(images) if labels is None else self.discriminator(images, labels)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents from the prior N(0, I)."""
        _check_positive(n=n)
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


def build_gan() -> GAN:
    return GAN(MLPGenerator(), MLPDiscriminator(), latent_dim=16)


def build_dcgan(size: int = 16) -> GAN:
    return GAN(DCGenerator(size=size), DCDiscriminator(size=size), latent_dim=16)


def build_cgan() -> GAN:
    return GAN(ConditionalGenerator(), ConditionalDiscriminator(), latent_dim=16, num_classes=NUM_CLASSES)


def train_step(model: GAN, optimizers: dict[str, torch.optim.Optimizer], batch: Batch) -> dict[str, float]:
    """One discriminator update on the batch's real images and as many fakes, then one generator update on
    fresh fakes. A conditional GAN's fakes take the batch's labels, so both nets see the data's class mix."""
    real, labels = batch
    labels = labels if model.num_classes is not None else None
    fake = model.generate(model.noise(len(real)), labels)
    # detach: the discriminator's update must not push gradients into the generator.
    d_loss = discriminator_loss(model.discriminate(real, labels), model.discriminate(fake.detach(), labels))
    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers["discriminator"].step()

    g_loss = generator_loss(model.discriminate(model.generate(model.noise(len(real)), labels), labels))
    optimizers["generator"].zero_grad(set_to_none=True)
    g_loss.backward()  # also fills the discriminator's .grad, cleared by its zero_grad before its next step
    optimizers["generator"].step()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}


def category_means(latents: torch.Tensor, categories: torch.Tensor) -> dict[int, torch.Tensor]:
    """The mean latent of each category: latents [N, D] with int categories [N] (e.g. what a classifier or a
    person saw in each latent's sample) -> {category: mean [D]}. Averaging a few latents per concept is what
    makes DCGAN's vector arithmetic stable (a single latent carries much unrelated detail)."""
    if latents.dim() != 2:
        raise ValueError(f"latents must have shape [N, D], got {tuple(latents.shape)}")
    if categories.dtype != torch.int64 or categories.shape != latents.shape[:1]:
        raise ValueError(f"categories must be an int64 tensor [{latents.shape[0]}], got {categories.dtype} "
                         f"{tuple(categories.shape)}")
    return {int(c): latents[categories == c].mean(0) for c in categories.unique()}


def latent_arithmetic(model: GAN, latents: torch.Tensor, categories: torch.Tensor, add: Sequence[int],
                      subtract: Sequence[int] = ()) -> torch.Tensor:
    """Generate from sum(mean latent of each ``add`` category) - sum(those of ``subtract``): e.g.
    ``add=[a, c], subtract=[b]`` is mean(a) - mean(b) + mean(c). Returns the image [1, 1, H, W]."""
    means = category_means(latents, categories)
    if not add:
        raise ValueError("add must name at least one category")
    for name, chosen in (("add", add), ("subtract", subtract)):
        missing = [c for c in chosen if c not in means]
        if missing:
            raise ValueError(f"{name} names categories with no latents: {missing}; present: {sorted(means)}")
    combined = sum(means[c] for c in add) - sum(means[c] for c in subtract)
    return model.generate(combined.unsqueeze(0))


def _sample_grid(model: GAN, columns: int = 8) -> torch.Tensor:
    """Samples in [0, 1] from a fixed noise, so that successive checkpoints draw the same latents: 64 for
    an unconditional GAN, and for a conditional one a row per class with the same noise in every row."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    if model.num_classes is None:
        return (model.generate(model.noise(columns * columns, generator)) + 1) / 2
    z = model.noise(columns, generator).repeat(model.num_classes, 1)
    labels = torch.arange(model.num_classes, device=z.device).repeat_interleave(columns)
    return (model.generate(z, labels) + 1) / 2


def _digits(size: int):
    def load(seed: int) -> Batch:
        # Imported on use, so that importing the models does not load scikit-learn.
        from fastgen.data.digits import load_digits_images

        return load_digits_images(size=size, value_range=(-1.0, 1.0), seed=seed)
    return load


def _adam_pair(model: GAN) -> dict[str, torch.optim.Optimizer]:
    # DCGAN's settings: beta1 = 0.9 made training oscillate and unstable in the paper.
    return {"generator": torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))}


def _spec(name: str, summary: str, build, size: int) -> TrainSpec:
    return register(TrainSpec(
        name=name, summary=summary, build=build, data=_digits(size), optimizers=_adam_pair,
        step=lambda model, optimizers, batch, step: train_step(model, optimizers, batch),
        grid=lambda model, batch: _sample_grid(model), batch_size=64, steps=5000))


_spec("gan", "GAN (MLP generator and discriminator, non-saturating loss) on 8x8 digits; samples from a fixed noise",
      build_gan, 8)
_spec("dcgan", "DCGAN (transposed-conv generator, strided-conv discriminator) on 16x16 digits; samples from a "
      "fixed noise", build_dcgan, 16)
_spec("cgan", "conditional GAN (label embedding into both MLPs) on 8x8 digits; a row per class 0..9, same noise "
      "in every row", build_cgan, 8)
