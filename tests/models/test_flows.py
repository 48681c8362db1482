"""Glow / RealNVP flows: exact invertibility, log-determinants against autograd Jacobians, ActNorm's
data-dependent init, sampling, training on scikit-learn's bundled 8x8 digits (no download).

Measured on 2 CPU cores, one thread:
* x -> y -> x round trips (ActNorm initialized, then every parameter moved by 0.1 * N(0, 1) so that
  no coupling or prior is the identity): worst error 1.8e-6 in float32 and 3.1e-15 in float64 over
  the layers and the four models; the bounds are 1e-5 and 1e-10.
* log-dets against the log |det| of the autograd Jacobian, float64: worst difference 1.8e-15 (the
  log-dets themselves are 0.6-5.6 in size, 0 for the channel reversal); the bound is 1e-10.
* Training (Glow, 2 flow steps per scale, hidden 16, batch 64, Adam 1e-3, 150 steps, 1.5-3 s):
  bits/dim on all 1797 digits falls from 4.44-4.53 to 3.40-3.50, a final / initial ratio of
  0.755-0.790 over seeds 0-3. The bound, 0.89, allows half that drop.
"""
from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from fastgen.models.flows import (
    ActNorm, AffineCoupling, FlowStep, Glow, InvConv1x1, ReversePermutation, Split, squeeze, train_step, unsqueeze,
)
from fastgen.models.training import get_spec

ROUND_TRIP_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
LOGDET_TOL = 1e-10
TRAIN_STEPS, BATCH = 150, 64
MAX_BPD_RATIO = 0.89  # final / initial bits per dim

LAYERS = {
    "actnorm": lambda: ActNorm(4),
    "conv1x1": lambda: InvConv1x1(4),
    "reverse": lambda: ReversePermutation(4),
    "coupling-sigmoid": lambda: AffineCoupling(4, hidden=8),
    "coupling-tanh": lambda: AffineCoupling(4, hidden=8, log_scale="tanh"),
    "flowstep-glow": lambda: FlowStep(4, hidden=8),
    "flowstep-realnvp": lambda: FlowStep(4, hidden=8, permutation="reverse", log_scale="tanh"),
}
SMALL = {"steps_per_scale": 1, "hidden": 4}  # builds fast, for the argument checks
MODELS = {
    "glow": lambda: Glow(image_size=4, num_scales=2, steps_per_scale=2, hidden=8),
    "realnvp": lambda: Glow(image_size=4, num_scales=2, steps_per_scale=2, hidden=8, permutation="reverse",
                            log_scale="tanh"),
    "glow-8x8": lambda: Glow(image_size=8, num_scales=2, steps_per_scale=2, hidden=8),
    "glow-16x16-3-scales": lambda: Glow(image_size=16, num_scales=3, steps_per_scale=1, hidden=8),
}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """The digits as images [1797, 1, 8, 8] with levels k / 16 in [0, 1]."""
    return torch.as_tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16


pytestmark = pytest.mark.usefixtures("one_thread")


def ready(module: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """ActNorm initialized on x, then every parameter moved off its start (the zero convs would
    otherwise make the couplings and priors trivial)."""
    gen = torch.Generator().manual_seed(seed)
    module(x)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def make_input(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def flat_latents(zs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([z.flatten(1) for z in zs], dim=1)


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log |det d fn(x) / dx| of one sample x [1, ...] by brute force."""
    jac = torch.autograd.functional.jacobian(fn, x)
    return torch.linalg.slogdet(jac.reshape(x.numel(), x.numel())).logabsdet


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", LAYERS)
def test_layers_invert(name, dtype):
    torch.manual_seed(0)
    layer = LAYERS[name]().to(dtype)
    x = make_input((8, 4, 5, 5), dtype)
    ready(layer, x)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (8,)
    assert (layer.inverse(y) - x).abs().max().item() < ROUND_TRIP_TOL[dtype]


@pytest.mark.parametrize("name", LAYERS)
def test_layer_logdet_matches_autograd_jacobian(name):
    torch.manual_seed(0)
    layer = ready(LAYERS[name]().double(), make_input((8, 4, 3, 3), torch.float64))
    x = make_input((1, 4, 3, 3), torch.float64, seed=2)
    expected = jacobian_logdet(lambda t: layer(t)[0], x)
    assert abs(layer(x)[1].item() - expected.item()) < LOGDET_TOL
    if name != "reverse":  # a permutation has log-det 0; every other layer must not be trivially so
        assert abs(expected.item()) > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_model_inverts(name, dtype):
    torch.manual_seed(0)
    model = MODELS[name]().to(dtype)
    x = make_input((4, 1, model.image_size, model.image_size), dtype)
    ready(model, x)
    zs, logdet = model(x)
    assert logdet.shape == (4,) and sum(z[0].numel() for z in zs) == x[0].numel()
    assert (model.inverse(zs) - x).abs().max().item() < ROUND_TRIP_TOL[dtype]


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_model_logdet_matches_autograd_jacobian(name):
    torch.manual_seed(0)
    model = ready(MODELS[name]().double(), make_input((8, 1, 4, 4), torch.float64))
    x = make_input((1, 1, 4, 4), torch.float64, seed=2)
    expected = jacobian_logdet(lambda t: flat_latents(model(t)[0]), x)
    assert abs(model(x)[1].item() - expected.item()) < LOGDET_TOL
    assert abs(expected.item()) > 0.1


def test_log_prob_is_logdet_plus_the_priors_log_densities():
    """Against torch.distributions.Normal, with each split's prior read off the kept half it saw."""
    torch.manual_seed(0)
    model = ready(MODELS["glow-16x16-3-scales"]().double(), make_input((4, 1, 16, 16), torch.float64))
    x = make_input((3, 1, 16, 16), torch.float64, seed=2)
    kept = []
    hooks = [split.register_forward_hook(lambda module, args, out: kept.append(out[0])) for split in model.splits]
    zs, logdet = model(x)
    for hook in hooks:
        hook.remove()
    priors = [split.prior(h) for split, h in zip(model.splits, kept)] + [(model.top_mean, model.top_log_std)]
    expected = logdet + sum(torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
                            for z, (mean, log_std) in zip(zs, priors))
    assert len(zs) == 3 and all(mean.abs().max() > 0.01 for mean, _ in priors)
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-12, atol=1e-10)


def test_squeeze_moves_each_2x2_patch_into_channels():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(unsqueeze(y), x)


def test_split_halves_the_channels_and_its_prior_starts_standard_normal():
    split = Split(4)
    x = make_input((2, 4, 3, 3), torch.float32)
    kept, factored = split(x)
    assert torch.equal(kept, x[:, :2]) and torch.equal(factored, x[:, 2:])
    assert torch.equal(split.inverse(kept, factored), x)
    mean, log_std = split.prior(kept)
    assert mean.shape == log_std.shape == factored.shape
    assert not mean.any() and not log_std.any()


def test_actnorm_initializes_from_the_first_batch_only_and_keeps_that_through_state_dict():
    layer = ActNorm(3)
    x = make_input((16, 3, 5, 5), torch.float32) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) \
        + torch.tensor([-3.0, 0.0, 5.0]).view(1, 3, 1, 1)
    y, _ = layer(x)
    var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    assert mean.abs().max().item() < 1e-5 and (var - 1).abs().max().item() < 1e-4
    assert bool(layer.initialized)

    second = 10 * make_input((16, 3, 5, 5), torch.float32, seed=3)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    y2, _ = layer(second)  # no re-initialization on later batches
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())
    assert y2.std().item() > 3

    restored = ActNorm(3)
    restored.load_state_dict(state)
    assert bool(restored.initialized) and torch.equal(restored(second)[0], y2)


def test_conv1x1_logdet_is_slogdet_of_its_lu_weight():
    torch.manual_seed(0)
    layer = InvConv1x1(6).double()
    w = layer.weight()
    # It starts orthogonal (to float32 precision: it is built in float32).
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-6)
    ready(layer, make_input((2, 6, 3, 4), torch.float64))
    w = layer.weight()
    assert layer.permutation.abs().sum().item() == 6 and torch.equal(layer.permutation @ layer.permutation.T,
                                                                     torch.eye(6, dtype=torch.float64))
    _, logdet = layer(make_input((2, 6, 3, 4), torch.float64))
    expected = 3 * 4 * torch.linalg.slogdet(w).logabsdet
    assert abs(expected.item()) > 0.1
    torch.testing.assert_close(logdet, expected.expand(2), rtol=0, atol=1e-12)


def test_sample_shapes_and_temperature_scales_the_deviation_from_the_prior_means():
    torch.manual_seed(0)
    model = ready(Glow(image_size=8, steps_per_scale=2, hidden=8).double(), make_input((8, 1, 8, 8), torch.float64))
    assert model.sample(5).shape == (5, 1, 8, 8)

    def latents_and_split_mean(temperature: float, seed: int):
        x = model.sample(3, temperature, torch.Generator().manual_seed(seed))
        split_out = []
        hook = model.splits[0].register_forward_hook(lambda module, args, out: split_out.append(out))
        zs, _ = model(x)
        hook.remove()
        return x, zs, model.splits[0].prior(split_out[0][0])[0]

    x0, zs0, split_mean0 = latents_and_split_mean(0.0, seed=1)
    assert torch.equal(x0, model.sample(3, 0.0, torch.Generator().manual_seed(2)))  # the noise is not used
    assert torch.equal(x0[0], x0[1]) and torch.equal(x0[0], x0[2])
    torch.testing.assert_close(zs0[-1], model.top_mean.expand_as(zs0[-1]), rtol=0, atol=1e-10)
    torch.testing.assert_close(zs0[0], split_mean0, rtol=0, atol=1e-10)

    # The same noise at temperatures 1 and 0.5: the latents' deviation from their means halves.
    _, zs1, _ = latents_and_split_mean(1.0, seed=1)
    _, zs_half, _ = latents_and_split_mean(0.5, seed=1)
    top = model.top_mean
    assert (zs1[-1] - top).abs().max().item() > 0.1
    torch.testing.assert_close(zs_half[-1] - top, 0.5 * (zs1[-1] - top), rtol=0, atol=1e-10)


def test_dequantization_and_bits_per_dim(digits):
    model = Glow(image_size=8, steps_per_scale=1, hidden=8)
    gen = torch.Generator().manual_seed(0)
    y = model.dequantize(digits[:100], gen)
    levels = torch.round(digits[:100] * 16)
    assert torch.equal(torch.floor((y + 0.5) * 17), levels)  # each level keeps its own 1/17-wide bin
    assert torch.equal(torch.round(model.to_images(y) * 16), levels)
    bpd = model.bits_per_dim(digits[:100], torch.Generator().manual_seed(0))
    expected = (-model.log_prob(y) / 64 + torch.log(torch.tensor(17.0))) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(bpd, expected)


def test_training_lowers_bits_per_dim(digits):
    torch.manual_seed(0)
    model = Glow(image_size=8, steps_per_scale=2, hidden=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(model.dequantize(digits[torch.randperm(len(digits))[:BATCH]]))  # ActNorm's init batch

    def bits_per_dim() -> float:
        with torch.no_grad():
            return model.bits_per_dim(digits, torch.Generator().manual_seed(1)).mean().item()

    before = bits_per_dim()
    for _ in range(TRAIN_STEPS):
        losses = train_step(model, optimizer, digits[torch.randint(len(digits), (BATCH,))])
    after = bits_per_dim()
    assert set(losses) == {"bits_per_dim"}
    assert after / before < MAX_BPD_RATIO, (before, after)


def test_registered_specs_build_step_and_grid(digits):
    batch = (digits[:16], torch.zeros(16, dtype=torch.int64))
    for name in ("glow", "realnvp"):
        spec = get_spec(name)
        torch.manual_seed(0)
        model = spec.build()
        assert isinstance(model, Glow)
        losses = spec.step(model, spec.optimizers(model), batch, 0)
        assert 0 < losses["bits_per_dim"] < 10
    model.eval()
    with torch.no_grad():
        grid = spec.grid(model, batch)  # 32 samples at temperature 0.7, then 32 at 1.0
    assert grid.shape == (64, 1, 8, 8) and grid.min() >= 0 and grid.max() <= 1


@pytest.mark.parametrize("make, match", [
    (lambda: Glow(image_size=6), "image_size"),
    (lambda: Glow(num_scales=0), "num_scales"),
    (lambda: Glow(hidden=0), "hidden"),
    (lambda: Glow(bins=1), "bins"),
    (lambda: Glow(permutation="shuffle"), "permutation"),
    (lambda: Glow(log_scale="exp"), "log_scale"),
    (lambda: AffineCoupling(3), "channels"),
    (lambda: Split(5), "channels"),
    (lambda: squeeze(torch.zeros(1, 1, 3, 4)), "even H and W"),
    (lambda: unsqueeze(torch.zeros(1, 3, 2, 2)), "multiple of 4"),
    (lambda: ActNorm(2)(torch.zeros(1, 3, 2, 2)), r"\[B, 2, H, W\]"),
    (lambda: Glow(**SMALL)(torch.zeros(1, 1, 16, 16)), "8x8"),
    (lambda: Glow(**SMALL)(torch.zeros(1, 2, 8, 8)), "x must have shape"),
    (lambda: Glow(**SMALL).inverse([torch.zeros(1, 8, 2, 2)]), "zs must be a list of 2"),
    (lambda: Glow(**SMALL).sample(0), "n must"),
    (lambda: Glow(**SMALL).sample(2, temperature=-1.0), "temperature"),
    (lambda: Glow(**SMALL).dequantize(torch.full((1, 1, 8, 8), 2.0)), r"\[0, 1\]"),
])
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
