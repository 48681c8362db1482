"""StyleGAN: mapping network, style mixing, truncation, noise injection, R1 and second-order gradients
through the fused AdaIN (fastgen's backend vs FASTGEN_BACKEND=ref), and a short training run.

Small configs (z_dim = w_dim = 16, max_width 16, 16x16 unless stated). Measured, float32, seed 0:
the R1 penalty and its D gradients are bit-identical across backends (D uses no fastgen op, so this
checks that R1's double backward runs; the bound is rtol 1e-5); the penalty |d D(G(ws)) / d ws|^2,
whose backward into G runs the fused AdaIN's double backward (C++ kernels; the gradients are not
bit-identical to the reference's), differs from the reference by 8e-8 relative in value and by at
most 1.7e-6 of each parameter's largest gradient entry (bound 1e-4). 4 training steps at batch 8 on
32x32 digits, seeds 0-2: losses finite, the least-moved of 4 samples of a fixed z changes by at least
0.27 somewhere (bound > 0.05). The file: 4 s on 2 shared cores at load average 2 (14 s at load 5).
"""
from __future__ import annotations

import math

import pytest
import torch

from fastgen.data import load_digits_images
from fastgen.models import stylegan
from fastgen.models.stylegan import Generator, MappingNetwork, StyleGAN, mix_styles, r1_penalty
from fastgen.nn import AdaIN

DIM, WIDTH = 16, 16


def small_generator(resolution: int = 16) -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=DIM, w_dim=DIM, resolution=resolution, max_width=WIDTH).eval()


def test_mapping_network_has_eight_layers_and_maps_z_to_w():
    mapping = MappingNetwork(z_dim=DIM, w_dim=24)
    assert len(mapping.layers) == 8
    assert mapping(torch.randn(5, DIM)).shape == (5, 24)


@pytest.mark.parametrize("resolution, layers", [(16, 6), (32, 8)])
def test_two_adain_layers_per_resolution(resolution, layers):
    G = small_generator(resolution)
    assert G.synthesis.num_layers == layers
    assert sum(isinstance(m, AdaIN) for m in G.modules()) == layers
    assert G(torch.randn(2, DIM)).shape == (2, 1, resolution, resolution)


@pytest.mark.parametrize("crossover", [1, 3, 5])
def test_style_mixing_feeds_w1_before_the_crossover_and_w2_from_it(crossover):
    G = small_generator()
    z1, z2 = torch.randn(3, DIM), torch.randn(3, DIM)
    w1, w2 = G.mapping(z1), G.mapping(z2)
    seen = []
    hooks = [layer.adain.register_forward_hook(lambda module, args, out: seen.append(args[1]))
             for layer in G.synthesis.layers]
    G(z1, z2, crossover)
    for hook in hooks:
        hook.remove()
    assert len(seen) == G.synthesis.num_layers
    for i, w in enumerate(seen):
        assert torch.equal(w, w1 if i < crossover else w2), f"layer {i}"


@pytest.mark.parametrize("resolution", [4, 24, 32.0])
def test_a_resolution_that_is_not_a_power_of_two_from_8_is_a_value_error(resolution):
    with pytest.raises(ValueError, match="resolution must be a power of two"):
        Generator(resolution=resolution)


def test_a_crossover_outside_the_layers_or_a_bad_latent_is_a_value_error():
    with pytest.raises(ValueError, match="crossover"):
        mix_styles(torch.zeros(1, 4), torch.zeros(1, 4), 7, num_layers=6)
    with pytest.raises(ValueError, match="crossover"):
        small_generator()(torch.randn(1, DIM), torch.randn(1, DIM))
    with pytest.raises(ValueError, match="z must be"):
        small_generator()(torch.randn(1, DIM, 1))


def test_truncation_at_psi_zero_gives_the_image_of_w_avg():
    G = small_generator()
    G.w_avg.copy_(torch.randn(DIM))  # not the zeros it starts as
    n, layers = 3, G.synthesis.num_layers
    truncated = G(torch.randn(n, DIM), psi=0.0, noise_mode="zero")
    expected = G.synthesis(G.w_avg.expand(n, layers, DIM), noise_mode="zero")
    assert torch.equal(truncated, expected)
    assert not torch.allclose(G(torch.randn(n, DIM), psi=0.5, noise_mode="zero"), expected)


def test_w_avg_tracks_the_mapping_output_in_training_only():
    G = small_generator()
    z = torch.randn(64, DIM)
    G(z)
    assert torch.equal(G.w_avg, torch.zeros(DIM))  # eval mode
    G.train()
    G(z)
    torch.testing.assert_close(G.w_avg, (1 - G.w_avg_beta) * G.mapping(z).mean(dim=0))


def test_noise_changes_the_output_only_when_its_scales_are_nonzero():
    G = small_generator()
    z = torch.randn(3, DIM)
    assert all(torch.equal(layer.noise.scale, torch.zeros_like(layer.noise.scale)) for layer in G.synthesis.layers)
    quiet = G(z, noise_mode="zero")
    assert torch.equal(G(z, noise_mode="random"), quiet)
    with torch.no_grad():
        G.synthesis.layers[3].noise.scale.fill_(0.1)
    assert torch.equal(G(z, noise_mode="zero"), quiet)  # scales on, but no noise
    noisy1, noisy2 = G(z, noise_mode="random"), G(z, noise_mode="random")
    assert not torch.allclose(noisy1, quiet) and not torch.allclose(noisy1, noisy2)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="fixed")


def test_r1_penalty_is_half_gamma_times_the_squared_input_gradient():
    torch.manual_seed(0)
    D = StyleGAN(DIM, DIM, 16, WIDTH).discriminator
    real = torch.randn(4, 1, 16, 16)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).sum(), x)
    _, r1 = r1_penalty(D, real, gamma=10.0)
    torch.testing.assert_close(r1, 5.0 * grad.square().sum(dim=(1, 2, 3)).mean())


def _second_order_grads(monkeypatch, backend: str | None):
    """R1 and a penalty on d D(G(ws)) / d ws, each backpropagated: the values and parameter gradients."""
    if backend is None:
        monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    else:
        monkeypatch.setenv("FASTGEN_BACKEND", backend)
    torch.manual_seed(0)
    model = StyleGAN(DIM, DIM, 16, WIDTH)
    real = torch.randn(4, 1, 16, 16)
    ws = torch.randn(4, model.generator.synthesis.num_layers, DIM, requires_grad=True)

    _, r1 = r1_penalty(model.discriminator, real, gamma=10.0)
    r1.backward()
    d_grads = {n: p.grad.clone() for n, p in model.discriminator.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    scores = model.discriminator(model.generator.synthesis(ws, noise_mode="zero"))
    (grad_ws,) = torch.autograd.grad(scores.sum(), ws, create_graph=True)
    style_penalty = grad_ws.square().sum()
    style_penalty.backward()
    g_grads = {n: p.grad.clone() for n, p in model.generator.named_parameters() if p.grad is not None}
    return r1.detach(), d_grads, style_penalty.detach(), g_grads


def test_second_order_gradients_match_the_reference_backend(monkeypatch):
    r1, d_grads, penalty, g_grads = _second_order_grads(monkeypatch, None)
    r1_ref, d_grads_ref, penalty_ref, g_grads_ref = _second_order_grads(monkeypatch, "ref")
    torch.testing.assert_close(r1, r1_ref, rtol=1e-5, atol=0)
    assert d_grads.keys() == d_grads_ref.keys() and len(d_grads) > 10
    for name, grad in d_grads.items():
        torch.testing.assert_close(grad, d_grads_ref[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(penalty, penalty_ref, rtol=1e-5, atol=0)
    assert g_grads.keys() == g_grads_ref.keys()
    assert any("adain" in name for name in g_grads) and any("conv" in name for name in g_grads)
    for name, grad in g_grads.items():
        error = (grad - g_grads_ref[name]).abs().max()
        assert error <= 1e-4 * g_grads_ref[name].abs().max() + 1e-7, (name, error.item())


def test_short_training_at_32x32_has_finite_losses_and_moving_samples():
    torch.manual_seed(0)
    model = StyleGAN(DIM, DIM, 32, WIDTH)
    opts = stylegan.gan_optimizers(model)
    real, _ = load_digits_images(size=32, value_range=(-1.0, 1.0), seed=0)
    z = torch.randn(4, DIM)
    model.eval()
    with torch.no_grad():
        before = model.generator(z, noise_mode="zero")
    model.train()
    for step in range(4):
        losses = stylegan.train_step(model, opts["generator"], opts["discriminator"], real[8 * step:8 * (step + 1)])
        assert losses.keys() == {"d_loss", "r1", "g_loss"}
        assert all(math.isfinite(v) for v in losses.values()), losses
    assert model.generator.w_avg.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        after = model.generator(z, noise_mode="zero")
    assert (after - before).abs().flatten(1).amax(dim=1).min() > 0.05

