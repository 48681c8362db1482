"""Reference models built on fastgen.nn: auto-encoders, the likelihood-based families (VAEs, PixelCNN,
flows, VQ-VAE), the GAN families (GAN, DCGAN, conditional GAN, Pix2Pix, CycleGAN, SN-GAN, WGAN-GP, ProGAN,
MSG-GAN, StyleGAN), neural style transfer, and NeRF. Importing a family registers its ``fastgen train`` models
(:mod:`fastgen.models.training`)."""
from fastgen.models import (autoencoder, cyclegan, flows, gan, msggan, nerf, pix2pix, pixelcnn, progan, sngan,
                            style_transfer, stylegan, vae, vqvae, wgan_gp)
from fastgen.models.nerf import NeRF, NeRFConfig, psnr, render_rays, train_nerf
from fastgen.models.sngan import Discriminator, Generator, apply_spectral_norm, d_hinge_loss, g_hinge_loss
from fastgen.models.vqvae import VQVAE, digits_to_images
from fastgen.models.wgan_gp import Critic, critic_loss, generator_loss, gradient_penalty

__all__ = ["Critic", "Discriminator", "Generator", "NeRF", "NeRFConfig", "VQVAE", "apply_spectral_norm",
           "autoencoder", "critic_loss", "cyclegan", "d_hinge_loss", "digits_to_images", "flows", "g_hinge_loss",
           "gan", "generator_loss", "gradient_penalty", "msggan", "nerf", "pix2pix", "pixelcnn", "progan", "psnr",
           "render_rays", "sngan", "style_transfer", "stylegan", "train_nerf", "vae", "vqvae", "wgan_gp"]
