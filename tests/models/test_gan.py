"""GAN, DCGAN and conditional GAN (fastgen.models.gan): shapes, losses, short training runs, latent vector
arithmetic, conditioning, registered specs and argument checks.

Measured (tiny widths: MLP hidden 32, DCGAN base 4, latent 8; 30 steps of batch 32 from torch.manual_seed(seed),
seeds 0-3): the mean |difference| of 16 samples from a fixed noise before and after training was
0.028-0.037 (GAN), 0.28-0.30 (DCGAN at 16x16) and 0.029-0.035 (cGAN); the bounds below are about a third of
the smallest. On the shared 2-core machine the file takes 3.6-5.5 s in
pytest with one thread (load 2-5 from other jobs), and took 9-46 s with two.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastgen.data.digits import load_digits_images
from fastgen.models import gan
from fastgen.models.training import get_spec

LATENT = 8


pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny(kind: str) -> gan.GAN:
    if kind == "gan":
        return gan.GAN(gan.MLPGenerator(LATENT, 32), gan.MLPDiscriminator(32), LATENT)
    if kind == "dcgan":
        return gan.GAN(gan.DCGenerator(LATENT, 4, 16), gan.DCDiscriminator(4, 16), LATENT)
    return gan.GAN(gan.ConditionalGenerator(LATENT, 32, embed_dim=4), gan.ConditionalDiscriminator(32, embed_dim=4),
                   LATENT, num_classes=10)


@pytest.mark.parametrize("size", [8, 16])
def test_forward_shapes(size):
    z, images = torch.randn(5, LATENT), torch.randn(5, 1, size, size)
    for generator, discriminator in [(gan.MLPGenerator(LATENT, 32, size), gan.MLPDiscriminator(32, size)),
                                     (gan.DCGenerator(LATENT, 4, size), gan.DCDiscriminator(4, size))]:
        fake = generator(z)
        assert fake.shape == (5, 1, size, size) and fake.abs().max() <= 1
        assert discriminator(images).shape == (5,)
    labels = torch.arange(5)
    assert gan.ConditionalGenerator(LATENT, 32, size)(z, labels).shape == (5, 1, size, size)
    assert gan.ConditionalDiscriminator(32, size)(images, labels).shape == (5,)


def test_losses():
    zero = torch.zeros(4)
    # D(x) = 1/2 everywhere: each cross-entropy term is log 2.
    assert gan.discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert gan.generator_loss(zero).item() == pytest.approx(math.log(2))
    assert gan.discriminator_loss(torch.full((4,), 20.0), torch.full((4,), -20.0)).item() < 1e-6
    # Non-saturating: when D confidently rejects a fake (logit -10), the generator's gradient stays near -1
    # per sample, where log(1 - D(G(z))) would give about -D = -4.5e-5.
    logit = torch.tensor([-10.0], requires_grad=True)
    gan.generator_loss(logit).backward()
    assert logit.grad.item() == pytest.approx(-1.0, abs=1e-3)


@pytest.mark.parametrize("kind,bound", [("gan", 0.01), ("dcgan", 0.1), ("cgan", 0.01)])
def test_short_training_changes_samples(kind, bound):
    torch.manual_seed(0)
    images, labels = load_digits_images(16 if kind == "dcgan" else 8, (-1.0, 1.0))
    model = tiny(kind)
    optimizers = gan._adam_pair(model)
    assert set(optimizers) == {"generator", "discriminator"}
    z = torch.randn(16, LATENT)
    sample_labels = torch.arange(16) % 10 if kind == "cgan" else None
    model.eval()
    with torch.no_grad():
        before = model.generate(z, sample_labels)
    model.train()
    for step in range(30):
        index = torch.arange(step * 32, (step + 1) * 32)
        losses = gan.train_step(model, optimizers, (images[index], labels[index]))
        assert set(losses) == {"d_loss", "g_loss"} and all(math.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        after = model.generate(z, sample_labels)
    assert (after - before).abs().mean().item() > bound


def test_latent_arithmetic_equals_generating_the_combined_latent():
    torch.manual_seed(0)
    model = tiny("dcgan").eval()
    latents = torch.randn(9, LATENT)
    categories = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    means = gan.category_means(latents, categories)
    assert sorted(means) == [0, 1, 2]
    torch.testing.assert_close(means[1], latents[3:6].mean(0))
    combined = latents[0:3].mean(0) - latents[3:6].mean(0) + latents[6:9].mean(0)
    with torch.no_grad():
        image = gan.latent_arithmetic(model, latents, categories, add=[0, 2], subtract=[1])
        expected = model.generate(combined.unsqueeze(0))
    assert image.shape == (1, 1, 16, 16)
    torch.testing.assert_close(image, expected)
    # A different combination gives a different image: the result is not a constant of the generator.
    with torch.no_grad():
        other = gan.latent_arithmetic(model, latents, categories, add=[1])
    assert (other - image).abs().mean() > 1e-3


def test_conditional_gan_uses_its_labels():
    # Untrained, seeds 0-3: the other labels' samples differ from label 0's by at least 0.0067 (mean |.| per
    # image), and the discriminator's logits for the same images under their own labels and under label 0
    # differ by 0.017-0.023 on average.
    torch.manual_seed(0)
    model = tiny("cgan").eval()
    z = torch.randn(1, LATENT).repeat(10, 1)
    labels, zeros = torch.arange(10), torch.zeros(10, dtype=torch.long)
    with torch.no_grad():
        samples = model.generate(z, labels)
        logit_change = (model.discriminate(samples, labels) - model.discriminate(samples, zeros))[1:].abs()
    assert (samples[1:] - samples[0]).abs().flatten(1).mean(1).min() > 2e-3
    assert logit_change.mean() > 5e-3


def test_specs_and_grids():
    for name in ("gan", "dcgan", "cgan"):
        spec = get_spec(name)
        torch.manual_seed(0)
        model = spec.build().eval()
        assert set(spec.optimizers(model)) == {"generator", "discriminator"}
        with torch.no_grad():
            grid = spec.grid(model, (torch.zeros(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)))
            again = spec.grid(model, (torch.zeros(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)))
        torch.testing.assert_close(grid, again)  # the noise is fixed
        assert grid.min() >= 0 and grid.max() <= 1
        size = 16 if name == "dcgan" else 8
        assert grid.shape == ((80 if name == "cgan" else 64), 1, size, size)
    # cGAN: row c (8 columns) holds class c from the same 8 latents in every row.
    model = get_spec("cgan").build().eval()
    with torch.no_grad():
        grid = gan._sample_grid(model)
        z = model.noise(8, torch.Generator().manual_seed(0))
        torch.testing.assert_close(grid[24:32], (model.generate(z, torch.full((8,), 3)) + 1) / 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        gan.DCGenerator(size=12)
    with pytest.raises(ValueError, match="latent_dim"):
        gan.MLPGenerator(latent_dim=0)
    with pytest.raises(ValueError, match="base"):
        gan.DCDiscriminator(base=-1)
    model = tiny("cgan")
    with pytest.raises(ValueError, match="labels"):
        model.generate(torch.randn(2, LATENT))
    with pytest.raises(ValueError, match="labels"):
        model.generate(torch.randn(2, LATENT), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="z"):
        model.generate(torch.randn(2, LATENT + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        tiny("gan").generate(torch.randn(2, LATENT), torch.tensor([0, 1]))
    latents, categories = torch.randn(4, LATENT), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="categories"):
        gan.category_means(latents, categories[:3])
    with pytest.raises(ValueError, match="add"):
        gan.latent_arithmetic(tiny("gan"), latents, categories, add=[5])
    with pytest.raises(ValueError, match="subtract"):
        gan.latent_arithmetic(tiny("gan"), latents, categories, add=[0], subtract=[7])
