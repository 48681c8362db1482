"""ProGAN (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and Variation").

Generator and discriminator grow together from 4x4 up to ``max_resolution``, one doubling per stage.
While a stage fades in, the generator blends the new block's image with the previous stage's image
upsampled (nearest), and the discriminator blends the new block's features with those of the input
average-pooled to the previous resolution, both by ``alpha`` going 0 -> 1. Every layer uses the
equalized learning rate (weights drawn from N(0, 1) and scaled at run time by He's constant
sqrt(2 / fan_in), so Adam's step moves every layer at the same relative speed), the generator
normalizes each pixel's feature vector (pixel norm), and the discriminator appends the minibatch
standard deviation as one extra feature map before its last block.

The building blocks (equalized layers, pixel norm, minibatch std, the discriminator) are shared with
MSG-GAN and StyleGAN. The registered ``progan`` trains on 16x16 digits in [-1, 1] with the paper's
loss: WGAN-GP (one critic update per generator update, penalty weight 10) plus the drift term
0.001 * E[D(x)^2] that keeps the critic's scores near 0; Adam(lr=1e-3, betas=(0, 0.99)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.data.digits import load_digits_images
from fastgen.models.training import TrainSpec, register


def stages_for_resolution(resolution: int, name: str = "max_resolution") -> int:
    """The number of stages 4x4, 8x8, ..., ``resolution`` (a power of two >= 8; ``name`` is the
    argument it came from, for the error)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8 \
            or resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two >= 8, got {resolution!r}")
    return int(math.log2(resolution)) - 1  # stages: 4x4 is stage 0


def stage_width(resolution: int, max_width: int) -> int:
    """Feature maps at ``resolution``: ``max_width`` up to 8x8, then halving per doubling (at least 16)."""
    return max(16, max_width * 8 // max(8, resolution))


class EqualizedLinear(nn.Module):
    """Linear layer with the equalized learning rate: y = x (scale W)^T + b with W ~ N(0, 1) stored and
    scale = gain / sqrt(fan_in) applied on every call. ``lr_multiplier`` (StyleGAN's mapping network)
    stores W / lr_multiplier and scales it back, slowing Adam's effective step by that factor."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2),
                 lr_multiplier: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features) * lr_multiplier
        self.lr_multiplier = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_multiplier)


class EqualizedConv2d(nn.Module):
    """Conv2d (stride 1, 'same' padding) with the equalized learning rate, as :class:`EqualizedLinear`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector (dim 1) scaled to unit root mean square."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x [N, C, H, W] with one more channel: the standard deviation over the batch of every feature at
    every pixel, averaged into one number, so D can see a generator that lacks variety."""
    std = torch.sqrt(x.var(dim=0, unbiased=False) + eps).mean()
    return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], dim=1)


def check_latent(z: torch.Tensor, z_dim: int) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != z_dim:
        raise ValueError(f"z must be a tensor [N, z_dim={z_dim}], got {getattr(z, 'shape', type(z).__name__)}")


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling: every pixel repeated 2x2."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling."""
    return F.avg_pool2d(x, 2)


def fade(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) old + alpha new; exactly ``old`` at alpha = 0."""
    return (1 - alpha) * old + alpha * new


class GeneratorBlock(nn.Module):
    """Two 3x3 convs, each followed by leaky ReLU and pixel norm; doubles the resolution first unless
    it is the first block (whose input is already a 4x4 map)."""

    def __init__(self, in_channels: int, out_channels: int, upsample_first: bool) -> None:
        super().__init__()
        self.upsample_first = upsample_first
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)
        self.conv2 = EqualizedConv2d(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample_first:
            x = upsample(x)
        x = pixel_norm(lrelu(self.conv1(x)))
        return pixel_norm(lrelu(self.conv2(x)))


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, channels, r, r] with r = 4 * 2**stage (linear output, no tanh, as in the
    paper). ``images(z)`` returns the images of every stage up to ``stage`` (MSG-GAN's outputs)."""

    def __init__(self, z_dim: int = 64, max_resolution: int = 16, max_width: int = 64, channels: int = 1) -> None:
        super().__init__()
        self.num_stages = stages_for_resolution(max_resolution)
        self.z_dim, self.max_resolution = z_dim, max_resolution
        self.widths = widths = [stage_width(4 * 2**s, max_width) for s in range(self.num_stages)]
        # The paper's first layer, a 4x4 transposed conv on a 1x1 latent, is a linear layer to 4x4 maps.
        self.input = EqualizedLinear(z_dim, widths[0] * 16, gain=math.sqrt(2) / 4)
        self.blocks = nn.ModuleList(
            [GeneratorBlock(widths[0], widths[0], upsample_first=False)]
            + [GeneratorBlock(widths[s - 1], widths[s], upsample_first=True) for s in range(1, self.num_stages)])
        self.to_rgb = nn.ModuleList(EqualizedConv2d(w, channels, 1, gain=1.0) for w in widths)

    def _check(self, stage: int | None, alpha: float) -> int:
        stage = self.num_stages - 1 if stage is None else stage
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages - 1}], got {stage}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        return stage

    def features(self, z: torch.Tensor, stage: int) -> list[torch.Tensor]:
        """The feature maps of blocks 0..stage."""
        check_latent(z, self.z_dim)
        x = pixel_norm(lrelu(self.input(pixel_norm(z)).view(-1, self.widths[0], 4, 4)))
        out = []
        for block in self.blocks[:stage + 1]:
            x = block(x)
            out.append(x)
        return out

    def forward(self, z: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """The image at ``stage`` (default: the last), faded in with weight ``alpha``."""
        stage = self._check(stage, alpha)
        features = self.features(z, stage)
        image = self.to_rgb[stage](features[-1])
        if stage == 0 or alpha == 1.0:
            return image
        return fade(upsample(self.to_rgb[stage - 1](features[-2])), image, alpha)

    def images(self, z: torch.Tensor, stage: int | None = None) -> list[torch.Tensor]:
        """The image of every stage 0..stage, lowest resolution first."""
        stage = self._check(stage, 1.0)
        return [to_rgb(x) for to_rgb, x in zip(self.to_rgb, self.features(z, stage))]


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs (in -> mid -> out channels) with leaky ReLU, then 2x2 average pooling."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualizedConv2d(in_channels, mid_channels, 3)
        self.conv2 = EqualizedConv2d(mid_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample(lrelu(self.conv2(lrelu(self.conv1(x)))))


class Discriminator(nn.Module):
    """image [N, channels, r, r], r = 4 * 2**stage -> score [N].

    From-RGB (1x1 conv) at the input's stage, blocks down to 4x4, then minibatch std, a 3x3 conv, a
    dense layer and the score. ``extra_channels`` widens the input of every block and of the head
    (MSG-GAN concatenates the image of that scale there).
    """

    def __init__(self, max_resolution: int = 16, max_width: int = 64, channels: int = 1,
                 extra_channels: int = 0) -> None:
        super().__init__()
        self.num_stages = stages_for_resolution(max_resolution)
        self.max_resolution = max_resolution
        widths = [stage_width(4 * 2**s, max_width) for s in range(self.num_stages)]
        self.from_rgb = nn.ModuleList(EqualizedConv2d(channels, w, 1) for w in widths)
        # blocks[s] takes stage s's maps (r x r) to stage s - 1's (r/2 x r/2); blocks[0] is unused.
        self.blocks = nn.ModuleList([nn.Identity()] + [DiscriminatorBlock(widths[s] + extra_channels, widths[s],
                                                                          widths[s - 1])
                                                       for s in range(1, self.num_stages)])
        self.final_conv = EqualizedConv2d(widths[0] + extra_channels + 1, widths[0], 3)
        self.final_dense = EqualizedLinear(widths[0] * 16, widths[0])
        self.score = EqualizedLinear(widths[0], 1, gain=1.0)

    def stage_of(self, x: torch.Tensor) -> int:
        if x.dim() != 4 or x.shape[2] != x.shape[3] or x.shape[2] < 4 or x.shape[2] > self.max_resolution \
                or x.shape[2] & (x.shape[2] - 1):
            raise ValueError(f"images must be [N, C, r, r] with r a power of two in [4, {self.max_resolution}], "
                             f"got {tuple(x.shape)}")
        return int(math.log2(x.shape[2])) - 2

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """4x4 maps -> score [N]."""
        x = lrelu(self.final_conv(minibatch_stddev(x)))
        return self.score(lrelu(self.final_dense(x.flatten(1)))).squeeze(1)

    def forward(self, images: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Score images of any stage's resolution; while fading in (alpha < 1) the new stage's features are
        blended with those of the images average-pooled to the previous stage."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        stage = self.stage_of(images)
        x = lrelu(self.from_rgb[stage](images))
        if stage > 0:
            x = self.blocks[stage](x)
            if alpha < 1.0:
                x = fade(lrelu(self.from_rgb[stage - 1](downsample(images))), x, alpha)
            for block in reversed(self.blocks[1:stage]):
                x = block(x)
        return self.head(x)


def schedule(step: int, phase_steps: int, num_stages: int) -> tuple[int, float]:
    """(stage, alpha) at ``step``: ``phase_steps`` at 4x4, then for each further stage ``phase_steps``
    fading in (alpha rising linearly from 0) and ``phase_steps`` at alpha = 1; the last stage stays."""
    if step < phase_steps:
        return 0, 1.0
    grown, within = divmod(step - phase_steps, 2 * phase_steps)
    stage = grown + 1
    if stage >= num_stages:
        return num_stages - 1, 1.0
    return stage, min(1.0, within / phase_steps)


def resize_real(images: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
    """Real images pooled to ``stage``'s resolution and, while it fades in, blended with their
    previous-stage version upsampled, as the generator's output is."""
    while images.shape[2] > 4 * 2**stage:
        images = downsample(images)
    if stage == 0 or alpha == 1.0:
        return images
    return fade(upsample(downsample(images)), images, alpha)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP's weight * E[(|grad_x critic(x)| - 1)^2] at random interpolates of real and fake;
    ``critic`` maps an image batch to scores (create_graph: the penalty is trained through)."""
    t = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x = (t * real + (1 - t) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


class ProGAN(nn.Module):
    """Generator, discriminator and the progress of growing (``stage`` and ``alpha`` buffers, so the
    grid and a checkpoint know which resolution training had reached)."""

    def __init__(self, z_dim: int = 64, max_resolution: int = 16, max_width: int = 64, channels: int = 1,
                 phase_steps: int = 300) -> None:
        super().__init__()
        if isinstance(phase_steps, bool) or not isinstance(phase_steps, int) or phase_steps < 1:
            raise ValueError(f"phase_steps must be an int >= 1, got {phase_steps!r}")
        self.generator = Generator(z_dim, max_resolution, max_width, channels)
        self.discriminator = Discriminator(max_resolution, max_width, channels)
        self.phase_steps = phase_steps
        self.register_buffer("stage", torch.tensor(0))
        self.register_buffer("alpha", torch.tensor(1.0))

    def sample(self, n: int) -> torch.Tensor:
        """n images at the current stage, upsampled (nearest) to ``max_resolution``, clamped to [-1, 1]."""
        z = torch.randn(n, self.generator.z_dim, device=self.alpha.device)
        images = self.generator(z, int(self.stage), float(self.alpha))
        return F.interpolate(images, size=self.generator.max_resolution, mode="nearest").clamp(-1, 1)


def train_step(model: ProGAN, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, real: torch.Tensor,
               step: int, gp_weight: float = 10.0, drift: float = 1e-3) -> dict[str, float]:
    """One critic and one generator update at the stage and alpha that ``schedule`` gives for ``step``;
    ``real`` is at ``max_resolution``."""
    G, D = model.generator, model.discriminator
    stage, alpha = schedule(step, model.phase_steps, G.num_stages)
    model.stage.fill_(stage)
    model.alpha.fill_(alpha)
    real = resize_real(real, stage, alpha)
    z = torch.randn(real.shape[0], G.z_dim, device=real.device, dtype=real.dtype)

    with torch.no_grad():
        fake = G(z, stage, alpha)
    real_scores, fake_scores = D(real, alpha), D(fake, alpha)
    wasserstein = real_scores.mean() - fake_scores.mean()
    gp = gradient_penalty(lambda x: D(x, alpha), real, fake, gp_weight)
    d_loss = -wasserstein + gp + drift * real_scores.square().mean()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    g_loss = -D(G(torch.randn_like(z), stage, alpha), alpha).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()  # also fills D's .grad; opt_d.zero_grad clears it before D's next step
    opt_g.step()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "wasserstein": wasserstein.item(),
            "gradient_penalty": gp.item(), "stage": float(stage), "alpha": alpha}


def gan_optimizers(model: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.0, 0.99)) -> dict:
    """Adam for ``model.generator`` and ``model.discriminator`` (ProGAN's and StyleGAN's settings)."""
    return {"generator": torch.optim.Adam(model.generator.parameters(), lr=lr, betas=betas, eps=1e-8),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=betas, eps=1e-8)}


register(TrainSpec(
    name="progan",
    summary="ProGAN (progressive growing 4->8->16, 300 steps per phase, WGAN-GP + drift) on 16x16 digits in "
            "[-1, 1]; grid: samples at the stage reached",
    build=lambda: ProGAN(),
    data=lambda seed: load_digits_images(size=16, value_range=(-1.0, 1.0), seed=seed),
    optimizers=gan_optimizers,
    step=lambda model, optimizers, batch, step: train_step(
        model, optimizers["generator"], optimizers["discriminator"], batch[0], step),
    grid=lambda model, batch: (model.sample(64) + 1) / 2,
    batch_size=64, steps=2000,
))
