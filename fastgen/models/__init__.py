"""Reference models built on fastgen.nn: SN-GAN and WGAN-GP at 32x32, a small VQ-VAE at 8x8, and NeRF."""
from fastgen.models import nerf, sngan, vqvae, wgan_gp
from fastgen.models.nerf import NeRF, NeRFConfig, psnr, render_rays, train_nerf
from fastgen.models.sngan import Discriminator, Generator, apply_spectral_norm, d_hinge_loss, g_hinge_loss
from fastgen.models.vqvae import VQVAE, digits_to_images
from fastgen.models.wgan_gp import Critic, critic_loss, generator_loss, gradient_penalty

__all__ = ["Critic", "Discriminator", "Generator", "NeRF", "NeRFConfig", "VQVAE", "apply_spectral_norm",
           "critic_loss", "d_hinge_loss", "digits_to_images", "g_hinge_loss", "generator_loss", "gradient_penalty",
           "nerf", "psnr", "render_rays", "sngan", "train_nerf", "vqvae", "wgan_gp"]
