"""SN-GAN and WGAN-GP models: shapes, training steps, spectral norm, gradient penalty.

Tiny widths and batches keep this at seconds on 2 CPU cores. fastgen's spectral_norm is
compared with torch's parametrization from the same seed and state.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import fastgen.nn
from fastgen.models import Critic, Discriminator, Generator, d_hinge_loss, g_hinge_loss, gradient_penalty
from fastgen.models import sngan, wgan_gp
from fastgen.testing import assert_close

# Tests that need fastgen's own spectral_norm skip without it; the rest fall back to torch's.
FASTGEN_SN = getattr(fastgen.nn, "spectral_norm", None)
SN = FASTGEN_SN or torch_spectral_norm
needs_fastgen_sn = pytest.mark.skipif(FASTGEN_SN is None, reason="fastgen.nn.spectral_norm is not available")

Z_DIM = 16
BASE = 4


def procedural_images(n: int, channels: int = 3) -> torch.Tensor:
    """[n, channels, 32, 32] in [-1, 1]: sinusoids of growing frequency, one image per frequency."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    k = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1)
    planes = [torch.sin(math.pi * k * xx), torch.cos(math.pi * k * yy), (xx * yy).expand(n, 1, 32, 32)]
    return torch.cat(planes * channels, dim=1)[:, :channels]


def normalized_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_changed(model: nn.Module, before: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    for name, p in model.named_parameters():
        if name not in skip:
            assert not torch.equal(p, before[name]), f"{name} did not change"


def assert_grads_close(ours: nn.Module, theirs: nn.Module) -> None:
    """Gradients agree, parameter by parameter, including which ones got none."""
    for (name, p_ours), p_theirs in zip(ours.named_parameters(), theirs.parameters()):
        assert (p_ours.grad is None) == (p_theirs.grad is None), name
        if p_ours.grad is not None:
            assert_close(p_ours.grad, p_theirs.grad, msg=name)


# --- shapes --------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_generator_output_is_a_32x32_image_in_tanh_range(channels):
    G = Generator(z_dim=Z_DIM, base=BASE, channels=channels)
    out = G(torch.randn(4, Z_DIM))
    assert out.shape == (4, channels, 32, 32)
    assert out.abs().max() <= 1


@pytest.mark.parametrize("model", [Discriminator, Critic])
@pytest.mark.parametrize("use_sn", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_discriminator_and_critic_give_one_score_per_image(model, use_sn, channels):
    D = model(base=BASE, channels=channels, use_spectral_norm=use_sn, spectral_norm=SN)
    assert D(torch.randn(4, channels, 32, 32)).shape == (4,)


# --- spectral norm -------------------------------------------------------------------------

@pytest.mark.parametrize("model", [Discriminator, Critic])
def test_use_spectral_norm_parametrizes_every_conv_and_linear_layer(model):
    with_sn = normalized_layers(model(base=BASE, use_spectral_norm=True, spectral_norm=SN))
    without = normalized_layers(model(base=BASE, use_spectral_norm=False))
    assert len(with_sn) == len(without) > 0
    assert all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in with_sn)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in without)


@needs_fastgen_sn
def test_spectral_norm_defaults_to_fastgens():
    D = Discriminator(base=BASE)
    assert all(type(m.parametrizations.weight[0]).__module__.startswith("fastgen.")
               for m in normalized_layers(D))


@pytest.mark.parametrize("model", [Discriminator, Critic])
def test_normalized_weights_have_unit_largest_singular_value(model):
    # Seeded: 200 power iterations converge to 1e-6 for seeds 0-9, but an unseeded draw (whatever the
    # tests before it in the worker left in the RNG) once gave a layer a spectral gap small enough to
    # stop at 3.5e-4.
    torch.manual_seed(0)
    # Enough power iterations in one training-mode forward for sigma to converge.
    D = model(base=BASE, use_spectral_norm=True, spectral_norm=functools.partial(SN, n_power_iterations=200))
    with torch.no_grad():
        D(torch.randn(1, 3, 32, 32))
    D.eval()  # reading .weight in eval mode divides by the converged sigma without iterating further
    for layer in normalized_layers(D):
        weight_mat = layer.weight.detach().flatten(1)
        original_mat = layer.parametrizations.weight.original.detach().flatten(1)
        assert torch.linalg.matrix_norm(original_mat, ord=2) > 0.05  # not trivially small already
        torch.testing.assert_close(torch.linalg.matrix_norm(weight_mat, ord=2), torch.tensor(1.0),
                                   rtol=1e-4, atol=0)


@needs_fastgen_sn
@pytest.mark.parametrize("model", [Discriminator, Critic])
def test_fastgen_spectral_norm_matches_torchs_from_the_same_seed(model):
    """Same init (state_dict), output, input and weight gradients and updated u, v as torch's."""
    def build(sn):
        torch.manual_seed(0)
        return model(base=BASE, use_spectral_norm=True, spectral_norm=sn)

    ours, theirs = build(FASTGEN_SN), build(torch_spectral_norm)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:  # the initial power iterations round differently in float32
        assert_close(ours_state[key], theirs_state[key], msg=key)
    # From here on the same state, in float64 so that only the order of operations differs.
    theirs.load_state_dict(ours_state)
    ours, theirs = ours.double(), theirs.double()

    x = procedural_images(3).double()
    x_ours, x_theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert_close(out_ours, out_theirs)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    assert_close(x_ours.grad, x_theirs.grad)
    assert_grads_close(ours, theirs)
    for (name, b_ours), b_theirs in zip(ours.named_buffers(), theirs.buffers()):
        assert_close(b_ours, b_theirs, msg=name)


# --- SN-GAN --------------------------------------------------------------------------------

def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # relu(1 - real) = [0, 1], relu(1 + fake) = [0, 1.5]
    assert d_hinge_loss(real, fake).item() == pytest.approx(0.5 + 0.75)
    assert g_hinge_loss(fake).item() == pytest.approx(0.75)


@pytest.mark.parametrize("use_sn", [True, False])
def test_sngan_train_step_updates_both_networks(use_sn):
    torch.manual_seed(0)
    G = Generator(z_dim=Z_DIM, base=BASE)
    D = Discriminator(base=BASE, use_spectral_norm=use_sn, spectral_norm=SN)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_before, d_before = params(G), params(D)

    losses = sngan.train_step(G, D, opt_g, opt_d, procedural_images(4), Z_DIM)

    assert losses.keys() == {"d_loss", "g_loss"}
    assert all(math.isfinite(v) for v in losses.values())
    assert_changed(G, g_before)
    # D's last bias shifts every logit: while all logits lie in (-1, 1), as they do at
    # init, the real and fake hinge terms pull it equally both ways and its gradient is 0.
    assert_changed(D, d_before, skip=("fc.bias",))


# --- WGAN-GP -------------------------------------------------------------------------------

@pytest.mark.parametrize("use_sn", [True, False])
def test_gradient_penalty_is_finite_and_reaches_every_critic_weight(use_sn):
    torch.manual_seed(0)
    C = Critic(base=BASE, use_spectral_norm=use_sn, spectral_norm=SN)
    gp = gradient_penalty(C, procedural_images(4), torch.randn(4, 3, 32, 32))
    assert gp.ndim == 0 and torch.isfinite(gp) and gp > 0
    gp.backward()
    # With piecewise-linear activations the input gradient is a product of weights and
    # activation slopes; biases only move the kinks, so the penalty has no bias gradient.
    weights = [(n, p) for n, p in C.named_parameters() if not n.endswith("bias")]
    assert len(weights) == 4
    for name, p in weights:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@needs_fastgen_sn
def test_gradient_penalty_matches_a_reference_with_torchs_spectral_norm():
    """Penalty and its second-order parameter gradients, fastgen's spectral norm vs torch's."""
    torch.manual_seed(0)
    ours = Critic(base=BASE, use_spectral_norm=True, spectral_norm=FASTGEN_SN).double()
    theirs = Critic(base=BASE, use_spectral_norm=True, spectral_norm=torch_spectral_norm).double()
    theirs.load_state_dict(ours.state_dict())
    real, fake = procedural_images(4).double(), torch.randn(4, 3, 32, 32, dtype=torch.float64)

    torch.manual_seed(1)
    gp_ours = gradient_penalty(ours, real, fake, weight=10.0)

    torch.manual_seed(1)  # the same interpolation weights
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(theirs(x).sum(), x, create_graph=True)
    grad_norm = grad.square().sum(dim=(1, 2, 3)).sqrt()
    gp_ref = 10.0 * (grad_norm - 1).square().mean()

    assert_close(gp_ours, gp_ref)
    gp_ours.backward()
    gp_ref.backward()
    assert_grads_close(ours, theirs)


class _Scale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


@pytest.mark.parametrize("scale, expected", [(1.0, 0.0), (3.0, 10.0 * (3.0 - 1.0) ** 2)])
def test_gradient_penalty_of_a_linear_critic_is_known(scale, expected):
    # A spectrally normalized Linear(N, 1) is x -> <w, x> / |w| (power iteration on one row is
    # exact), whose input gradient has norm 1 everywhere: zero penalty, and (scale - 1)^2 * 10 when scaled.
    torch.manual_seed(0)
    linear = SN(nn.Linear(3 * 32 * 32, 1))
    critic = nn.Sequential(nn.Flatten(), linear, _Scale(scale))
    gp = gradient_penalty(critic, procedural_images(4), torch.randn(4, 3, 32, 32), weight=10.0)
    assert gp.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("use_sn", [True, False])
def test_wgan_gp_steps_on_a_fixed_batch_lower_the_critic_loss(use_sn):
    torch.manual_seed(0)
    G = Generator(z_dim=Z_DIM, base=BASE)
    C = Critic(base=BASE, use_spectral_norm=use_sn, spectral_norm=SN)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(C.parameters(), lr=1e-3, betas=(0.0, 0.9))
    real = procedural_images(4)
    c_before, g_before = params(C), params(G)

    history = [wgan_gp.train_step(G, C, opt_g, opt_c, real, Z_DIM, n_critic=3) for _ in range(4)]

    assert all(math.isfinite(v) for losses in history for v in losses.values())
    assert history[-1]["critic_loss"] < history[0]["critic_loss"]
    assert_changed(G, g_before)
    # The critic's last bias adds the same to real and fake scores, so no loss sees it.
    assert_changed(C, c_before, skip=("fc.bias",))
