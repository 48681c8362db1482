"""Variational autoencoders for small single-channel images such as the 8x8 digits in [0, 1]:
a VAE (Kingma & Welling 2014), the same model trained as a beta-VAE (Higgins et al. 2017) with a
linear beta warm-up, and a two-level hierarchical VAE.

Likelihood: every pixel is a Bernoulli whose mean is the decoder's sigmoid output, applied to the
grey levels in [0, 1] as is usual for MNIST-like data. On non-binary pixels this cross-entropy is not
a normalized log-likelihood and its minimum is the pixels' own entropy, not 0, so the reported
negative ELBO (``loss``, nats per image: reconstruction summed over pixels + KL summed over latent
dimensions, averaged over the batch) is a training objective to compare between runs, not a
likelihood bound comparable with the flows' bits/dim.

The hierarchical VAE uses the ladder / top-down inference form, chosen because both KL terms are
then exact closed forms: a deterministic bottom-up pass of x gives q(z2|x), and q(z1|x, z2) reads
the same features together with the sampled z2. With p(z2) = N(0, I), a learned Gaussian
p(z1|z2) and a decoder p(x|z1),

    -ELBO = E[-log p(x|z1)] + KL(q(z2|x) || p(z2)) + E_q(z2|x)[KL(q(z1|x, z2) || p(z1|z2))],

where each expectation is estimated with one reparameterized sample. (The bottom-up form
q(z1|x) q(z2|z1) would make z2 depend on the sampled z1, and the z1 term would no longer be a
closed-form KL.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.training import TrainSpec, register

DIGITS_SHAPE = (1, 8, 8)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) of diagonal Gaussians, summed over the
    last (latent) dimension: [..., D] -> [...]. Without a prior it is N(0, I)."""
    if (prior_mu is None) != (prior_logvar is None):
        raise ValueError("prior_mu and prior_logvar must be given together (or both left out for N(0, I))")
    if prior_mu is None:
        prior_mu, prior_logvar = torch.zeros_like(mu), torch.zeros_like(logvar)
    kl = 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu) ** 2) * torch.exp(-prior_logvar) - 1)
    return kl.sum(-1)


def beta_schedule(step: int, beta: float, warmup_steps: int) -> float:
    """KL weight at ``step`` (from 0): rises linearly from 0 to ``beta`` over ``warmup_steps`` steps and
    stays there; ``warmup_steps`` = 0 means ``beta`` from the start."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup_steps)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I): a sample whose gradient flows into mu and logvar."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def bernoulli_reconstruction(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image [B]: Bernoulli cross-entropy summed over the pixels of images in [0, 1]."""
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1] for the Bernoulli likelihood")
    return F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_image_shape(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(image_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in image_shape):
        raise ValueError(f"image_shape must be three positive ints (C, H, W), got {image_shape!r}")
    return tuple(image_shape)


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out_features))


class _ImageVAE(nn.Module):
    """What both VAEs share: the image shape, input checks, and decoding latents to images."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.pixels = math.prod(self.image_shape)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, self.image_shape))}], "
                             f"got {tuple(images.shape)}")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_dim] -> Bernoulli logits [B, C, H, W]."""
        return self.decoder(z).view(-1, *self.image_shape)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


@dataclass
class VAEOutput:
    logits: torch.Tensor  # decoder logits [B, C, H, W]; sigmoid gives the pixel means
    mu: torch.Tensor  # q(z|x) [B, latent_dim]
    logvar: torch.Tensor
    z: torch.Tensor  # the reparameterized sample the logits decode


class VAE(_ImageVAE):
    """image [B, C, H, W] in [0, 1] -> :class:`VAEOutput`, with MLP encoder and decoder.

    The encoder outputs the mean and log-variance of q(z|x) = N(mu, diag(exp(logvar))); the prior is
    N(0, I). :meth:`loss` with ``beta`` != 1 is the beta-VAE objective.
    """

    def __init__(self, image_shape: tuple[int, int, int] = DIGITS_SHAPE, latent_dim: int = 8,
                 hidden: int = 256) -> None:
        super().__init__(image_shape)
        _check_positive(latent_dim=latent_dim, hidden=hidden)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), _mlp(self.pixels, hidden, 2 * latent_dim))
        self.decoder = _mlp(latent_dim, hidden, self.pixels)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (mu, logvar) of q(z|x), each [B, latent_dim]."""
        self._check_images(images)
        mu, logvar = self.encoder(images).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(images)
        z = reparameterize(mu, logvar, generator)
        return VAEOutput(self.decode(z), mu, logvar, z)

    def loss(self, images: torch.Tensor, beta: float = 1.0,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Batch means of ``reconstruction`` (-log p(x|z)), ``kl`` (KL(q(z|x) || N(0, I))) and
        ``loss`` = reconstruction + beta * kl, the negative ELBO per image when beta = 1."""
        out = self(images, generator)
        reconstruction = bernoulli_reconstruction(out.logits, images).mean()
        kl = gaussian_kl(out.mu, out.logvar).mean()
        return {"loss": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder means [B, C, H, W] in [0, 1] at the posterior means (no sampling noise)."""
        return torch.sigmoid(self.decode(self.encode(images)[0]))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images [n, C, H, W] in [0, 1]: decoder means at z ~ N(0, I)."""
        _check_positive(n=n)
        z = torch.randn(n, self.latent_dim, generator=generator, device=self._device())
        return torch.sigmoid(self.decode(z))


@dataclass
class HierarchicalVAEOutput:
    logits: torch.Tensor  # decoder logits [B, C, H, W], a function of z1 only
    z1: torch.Tensor  # sample of q(z1|x, z2) [B, latent_dim]
    z2: torch.Tensor  # sample of q(z2|x) [B, top_latent_dim]
    kl1: torch.Tensor  # KL(q(z1|x, z2) || p(z1|z2)) per image [B]
    kl2: torch.Tensor  # KL(q(z2|x) || N(0, I)) per image [B]


class HierarchicalVAE(_ImageVAE):
    """Two latent groups, z2 (top, ``top_latent_dim``) above z1 (``latent_dim``); see the module
    docstring for the inference form. Generation: z2 ~ N(0, I), z1 ~ p(z1|z2), x = decoder mean of z1.
    """

    def __init__(self, image_shape: tuple[int, int, int] = DIGITS_SHAPE, latent_dim: int = 8,
                 top_latent_dim: int = 4, hidden: int = 256) -> None:
        super().__init__(image_shape)
        _check_positive(latent_dim=latent_dim, top_latent_dim=top_latent_dim, hidden=hidden)
        self.latent_dim, self.top_latent_dim = latent_dim, top_latent_dim
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(self.pixels, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.top_posterior = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * top_latent_dim))
        self.posterior = nn.Sequential(nn.Linear(hidden + top_latent_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, 2 * latent_dim))
        self.prior = nn.Sequential(nn.Linear(top_latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = _mlp(latent_dim, hidden, self.pixels)

    def conditional_prior(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z2 [B, top_latent_dim] -> (mu, logvar) of p(z1|z2), each [B, latent_dim]."""
        mu, logvar = self.prior(z2).chunk(2, dim=-1)
        return mu, logvar

    def _posteriors(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z2, z1, kl1, kl2), drawing z2 and z1 from their posteriors, or taking their means."""
        self._check_images(images)
        features = self.features(images)
        mu2, logvar2 = self.top_posterior(features).chunk(2, dim=-1)
        z2 = reparameterize(mu2, logvar2, generator) if sample else mu2
        mu1, logvar1 = self.posterior(torch.cat([features, z2], dim=-1)).chunk(2, dim=-1)
        z1 = reparameterize(mu1, logvar1, generator) if sample else mu1
        kl1 = gaussian_kl(mu1, logvar1, *self.conditional_prior(z2))
        return z2, z1, kl1, gaussian_kl(mu2, logvar2)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> HierarchicalVAEOutput:
        z2, z1, kl1, kl2 = self._posteriors(images, True, generator)
        return HierarchicalVAEOutput(self.decode(z1), z1, z2, kl1, kl2)

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Batch means of ``reconstruction`` (-log p(x|z1)), ``kl1``, ``kl2`` and their sum ``loss``,
        the negative ELBO per image."""
        out = self(images, generator)
        reconstruction = bernoulli_reconstruction(out.logits, images).mean()
        kl1, kl2 = out.kl1.mean(), out.kl2.mean()
        return {"loss": reconstruction + kl1 + kl2, "reconstruction": reconstruction, "kl1": kl1, "kl2": kl2}

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder means [B, C, H, W] in [0, 1] at the posterior means of z2, then z1."""
        return torch.sigmoid(self.decode(self._posteriors(images, False, None)[1]))

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z2, z1) from the generative model: z2 ~ N(0, I), z1 ~ p(z1|z2)."""
        _check_positive(n=n)
        z2 = torch.randn(n, self.top_latent_dim, generator=generator, device=self._device())
        return z2, reparameterize(*self.conditional_prior(z2), generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images [n, C, H, W] in [0, 1]: decoder means at z1 of :meth:`sample_latents`."""
        return torch.sigmoid(self.decode(self.sample_latents(n, generator)[1]))


def train_step(model: VAE | HierarchicalVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               **loss_kwargs) -> dict[str, float]:
    """One update on the model's :meth:`loss` of ``images`` (``loss_kwargs``: e.g. ``beta``); returns its terms."""
    model.train()
    terms = model.loss(images, **loss_kwargs)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return {name: value.item() for name, value in terms.items()}


def reconstructions_and_samples(model: VAE | HierarchicalVAE, images: torch.Tensor, n: int = 32) -> torch.Tensor:
    """The training grid: top half the reconstructions of the first ``n`` ``images``, bottom half ``n``
    samples. The sampling noise is seeded, so successive checkpoints decode the same latents."""
    generator = torch.Generator(device=images.device).manual_seed(0)
    return torch.cat([model.reconstruct(images[:n]), model.sample(n, generator)])


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Imported on use, so that importing the models does not load scikit-learn.
    from fastgen.data.digits import load_digits_images

    return load_digits_images(size=8, value_range=(0.0, 1.0), seed=seed)


# The registered beta-VAE's KL weight. Higgins et al.'s beta = 4 was set against MNIST's 784 pixels; the
# reconstruction term grows with the pixel count, and on these 64 beta >= 3 collapses the posterior. Measured
# after 2000 steps (seed 0; "active" = posterior-mean variance over the digits > 0.01): KL 3.6 nats and 5 of 8
# active latent dimensions at beta = 1; 1.3 nats and 3 at beta = 2; 0.05 nats and 1 at beta = 3; 0.0 at beta = 4.
BETA, BETA_WARMUP_STEPS = 2.0, 500


def _beta_vae_step(model: VAE, optimizers: dict[str, torch.optim.Optimizer], batch, step: int) -> dict[str, float]:
    beta = beta_schedule(step, BETA, BETA_WARMUP_STEPS)
    return train_step(model, optimizers["model"], batch[0], beta=beta) | {"beta": beta}


def _spec(name: str, summary: str, build, step=None) -> TrainSpec:
    return TrainSpec(
        name=name, summary=summary, build=build, data=_digits,
        optimizers=lambda model: {"model": torch.optim.Adam(model.parameters(), lr=1e-3)},
        step=step or (lambda model, optimizers, batch, step: train_step(model, optimizers["model"], batch[0])),
        grid=lambda model, batch: reconstructions_and_samples(model, batch[0]),
        batch_size=64, steps=3000,
    )


register(_spec("vae", "VAE (Bernoulli likelihood, 8-d latent) on 8x8 digits; grid: reconstructions over samples",
               lambda: VAE()))
register(_spec("beta_vae", f"beta-VAE (beta={BETA:g}, linear warm-up over {BETA_WARMUP_STEPS} steps) on 8x8 digits; "
                           "grid: reconstructions over samples", lambda: VAE(), _beta_vae_step))
register(_spec("hierarchical_vae", "two-level hierarchical VAE (z2 -> z1 -> x, 4-d and 8-d latents) on 8x8 digits; "
                                   "grid: reconstructions over samples", lambda: HierarchicalVAE()))
