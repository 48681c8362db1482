"""ProGAN: stage shapes, exact fade-in continuity, equalized learning rate, pixel norm, minibatch std,
the growing schedule and a short training run.

Tiny widths (max_width 16, z_dim 16). Measured: 12 steps at batch 16 through 4x4 -> 8x8 fade -> 8x8 ->
16x16 fade -> 16x16 (phase_steps 2), seeds 0-2: losses finite, the least-moved of 8 samples of a fixed
z changes by at least 0.56 somewhere (the bound asks > 0.05, 10x margin); stored weights of fan-in 9 and
1152 have std 0.993 and 1.003 (bound |std - 1| < 0.1). The file: 3.7 s on 2 shared cores at load
average 2 (16 s at load 5).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastgen.data import load_digits_images
from fastgen.models import progan
from fastgen.models.progan import Discriminator, EqualizedConv2d, EqualizedLinear, Generator, ProGAN

Z_DIM, WIDTH = 16, 16


def small_pair(max_resolution: int = 16) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(Z_DIM, max_resolution, WIDTH), Discriminator(max_resolution, WIDTH)


@pytest.mark.parametrize("max_resolution", [16, 32])
def test_every_stage_has_its_resolution(max_resolution):
    G, D = small_pair(max_resolution)
    assert G.num_stages == D.num_stages == int(math.log2(max_resolution)) - 1
    z = torch.randn(3, Z_DIM)
    for stage in range(G.num_stages):
        r = 4 * 2**stage
        for alpha in (0.0, 0.5, 1.0):
            image = G(z, stage, alpha)
            assert image.shape == (3, 1, r, r)
            assert D(image, alpha).shape == (3,)
    assert [x.shape[-1] for x in G.images(z)] == [4 * 2**s for s in range(G.num_stages)]


def test_generator_fade_in_starts_at_the_previous_stage_upsampled():
    G, _ = small_pair()
    z = torch.randn(4, Z_DIM)
    for stage in (1, 2):
        previous = G(z, stage - 1)
        assert torch.equal(G(z, stage, alpha=0.0), F.interpolate(previous, scale_factor=2, mode="nearest"))
        # and it does move away from it: the new block is in use for alpha > 0
        assert not torch.allclose(G(z, stage, alpha=0.5), G(z, stage, alpha=0.0))


def test_discriminator_fade_in_starts_at_the_previous_stage_of_the_pooled_input():
    _, D = small_pair()
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(D(x, alpha=0.0), D(F.avg_pool2d(x, 2)))
    x8 = torch.randn(4, 1, 8, 8)
    assert torch.equal(D(x8, alpha=0.0), D(F.avg_pool2d(x8, 2)))
    assert not torch.allclose(D(x, alpha=0.5), D(x, alpha=0.0))


def test_equalized_layers_scale_unit_normal_weights_by_hes_constant():
    torch.manual_seed(0)
    conv = EqualizedConv2d(128, 8, 3)
    x = torch.randn(2, 128, 5, 5)
    expected = F.conv2d(x, conv.weight * math.sqrt(2 / (128 * 9)), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    linear = EqualizedLinear(9, 300)
    torch.testing.assert_close(linear(x[:, 0, :3, :3].flatten(1)),
                               x[:, 0, :3, :3].flatten(1) @ (linear.weight * math.sqrt(2 / 9)).T)
    # The stored weights are N(0, 1) whatever the fan-in: Adam's steps are the same relative size in both.
    for weight in (conv.weight, linear.weight):
        assert abs(weight.std().item() - 1) < 0.1


def test_pixel_norm_gives_every_pixel_unit_mean_square_over_channels():
    # (at scale 0.1 the eps of 1e-8 shifts the result by ~1e-6, inside the default tolerance)
    x = torch.randn(3, 8, 5, 5) * torch.tensor([100.0, 0.1, 1.0]).view(3, 1, 1, 1)
    torch.testing.assert_close(progan.pixel_norm(x).square().mean(dim=1), torch.ones(3, 5, 5))


def test_minibatch_stddev_appends_the_mean_feature_std_as_a_constant_channel():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3) * 2
    out = progan.minibatch_stddev(x)
    assert out.shape == (6, 5, 3, 3)
    assert torch.equal(out[:, :4], x)
    expected = x.std(dim=0, unbiased=False).mean()
    torch.testing.assert_close(out[:, 4], expected.expand(6, 3, 3), rtol=1e-5, atol=1e-6)
    assert 1.5 < expected < 2.0  # the std of N(0, 4) samples, over 6 of them
    # identical samples: no variety, the channel is ~0
    assert progan.minibatch_stddev(x[:1].expand(6, -1, -1, -1))[:, 4].abs().max() < 1e-3


def test_schedule_grows_one_stage_per_fade_and_stable_phase():
    phase = 10
    expected = {0: (0, 1.0), 9: (0, 1.0), 10: (1, 0.0), 15: (1, 0.5), 20: (1, 1.0), 29: (1, 1.0),
                30: (2, 0.0), 35: (2, 0.5), 40: (2, 1.0), 10_000: (2, 1.0)}
    for step, (stage, alpha) in expected.items():
        assert progan.schedule(step, phase, num_stages=3) == (stage, pytest.approx(alpha)), step


def test_real_images_fade_like_the_generators():
    x = torch.randn(2, 1, 16, 16)
    x8 = F.avg_pool2d(x, 2)
    assert torch.equal(progan.resize_real(x, 1, 1.0), x8)
    assert torch.equal(progan.resize_real(x, 1, 0.0), F.interpolate(F.avg_pool2d(x8, 2), scale_factor=2))
    assert torch.equal(progan.resize_real(x, 2, 1.0), x)


@pytest.mark.parametrize("bad", [dict(max_resolution=12), dict(max_resolution=4), dict(phase_steps=0)])
def test_bad_configuration_is_a_value_error(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ProGAN(**bad)


def test_bad_stage_alpha_image_size_or_latent_is_a_value_error():
    G, D = small_pair()
    with pytest.raises(ValueError, match="stage"):
        G(torch.randn(1, Z_DIM), stage=3)
    with pytest.raises(ValueError, match="alpha"):
        G(torch.randn(1, Z_DIM), stage=1, alpha=1.5)
    with pytest.raises(ValueError, match="images"):
        D(torch.randn(2, 1, 12, 12))
    with pytest.raises(ValueError, match="z must be"):
        G(torch.randn(2, Z_DIM + 1))


def test_short_training_grows_with_finite_losses_and_moving_samples():
    torch.manual_seed(0)
    model = ProGAN(z_dim=Z_DIM, max_width=WIDTH, phase_steps=2)
    opts = progan.gan_optimizers(model)
    real, _ = load_digits_images(size=16, value_range=(-1.0, 1.0), seed=0)
    z = torch.randn(8, Z_DIM)
    with torch.no_grad():
        before = model.generator(z)
    stages = []
    for step in range(12):
        losses = progan.train_step(model, opts["generator"], opts["discriminator"], real[16 * step:16 * (step + 1)],
                                   step)
        assert all(math.isfinite(v) for v in losses.values()), losses
        stages.append((losses["stage"], losses["alpha"]))
    assert stages[:6] == [(0, 1), (0, 1), (1, 0), (1, 0.5), (1, 1), (1, 1)]
    assert stages[-1] == (2, 1) and int(model.stage) == 2 and float(model.alpha) == 1
    with torch.no_grad():
        after = model.generator(z)
    assert (after - before).abs().flatten(1).amax(dim=1).min() > 0.05
    grid = model.sample(5)
    assert grid.shape == (5, 1, 16, 16) and grid.abs().max() <= 1

