"""Reference models built on fastgen.nn: SN-GAN and WGAN-GP at 32x32, and a small VQ-VAE at 8x8."""
from fastgen.models import sngan, vqvae, wgan_gp
from fastgen.models.sngan import Discriminator, Generator, apply_spectral_norm, d_hinge_loss, g_hinge_loss
from fastgen.models.vqvae import VQVAE, digits_to_images
from fastgen.models.wgan_gp import Critic, critic_loss, generator_loss, gradient_penalty

__all__ = ["Critic", "Discriminator", "Generator", "VQVAE", "apply_spectral_norm", "critic_loss", "d_hinge_loss",
           "digits_to_images", "g_hinge_loss", "generator_loss", "gradient_penalty", "sngan", "vqvae", "wgan_gp"]
