"""PixelCNN on scikit-learn's bundled 8x8 digits (no download), and its class-conditional prior over a
trained VQ-VAE's 4x4 codes: masks, causality, exact bits/dim, training, sampling, conditioning.

Measured on 2 shared CPU cores, one thread, seeds 0-3 (the whole file: 9-16 s):
* PixelCNN (hidden 32, 2 blocks), 150 Adam steps of 32 at lr 2e-3: bits/dim over all 1797 digits
  falls from 3.95-4.08 to 2.01-2.05 (ratio 0.50-0.51; the bound is 0.65) in 1.3-2.5 s. 128 samples
  at temperature 1 score 2.03-2.08 bits/dim under the model, within 0.06 of the data, as samples
  drawn from the model that scores them should (bound: 0.4); at temperature 0.5 they score
  1.41-1.46, at least 0.59 lower (bound: 0.2).
* VQ-VAE (hidden 16) for 200 steps, then the prior (hidden 32, 2 blocks) for 150 steps of 64 at lr
  3e-3, through the ``vqvae_prior`` spec's step: bits per code over all digits falls from 5.01-5.07
  to 2.41-2.53 (ratio 0.48-0.50; bound 0.65) in 2.5-5.5 s together. Shuffled labels cost 0.25-0.36
  bits per code more (bound: 0.1), and taking the label of highest likelihood classifies 70-78% of
  the digits (chance: 10%; bound: 40%).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits

from fastgen.models.pixelcnn import (MaskedConv2d, PixelCNN, VQVAEPrior, images_to_levels, levels_to_images,
                                     pixelcnn_train_step)
from fastgen.models.training import get_spec
from fastgen.models.vqvae import VQVAE

CODES = 32


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16 * 2 - 1
    return images, torch.tensor(data.target, dtype=torch.int64)


pytestmark = pytest.mark.usefixtures("one_thread_module")


def small_prior() -> PixelCNN:
    return PixelCNN(levels=CODES, size=4, hidden=32, num_blocks=2, num_classes=10)


@pytest.fixture(scope="module")
def trained_pixelcnn(digits) -> tuple[PixelCNN, float, float]:
    """A PixelCNN after 150 steps, with the bits/dim of all digits before and after."""
    torch.manual_seed(0)
    model = PixelCNN(hidden=32, num_blocks=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, levels = digits[0], images_to_levels(digits[0])
    with torch.no_grad():
        initial = model.bits_per_dim(levels).mean().item()
    batches = torch.Generator().manual_seed(1)
    for _ in range(150):
        pixelcnn_train_step(model, optimizer, images[torch.randint(len(images), (32,), generator=batches)])
    model.eval()
    with torch.no_grad():
        final = model.bits_per_dim(levels).mean().item()
    return model, initial, final


@pytest.fixture(scope="module")
def trained_prior(digits) -> SimpleNamespace:
    """A VQVAEPrior trained through the ``vqvae_prior`` spec's step and optimizers (200 VQ-VAE steps,
    then 150 prior steps), the digits' codes at the phase switch and at the end, the bits per code
    before and after the prior's phase, and whether the VQ-VAE's phase changed the prior."""
    spec = get_spec("vqvae_prior")
    torch.manual_seed(0)
    vqvae_steps, prior_steps = 200, 150
    model = VQVAEPrior(VQVAE(hidden=16, codebook_size=CODES), small_prior(), vqvae_steps)
    optimizers = spec.optimizers(model)
    for group in optimizers["prior"].param_groups:
        group["lr"] = 3e-3
    images, labels = digits
    batches = torch.Generator().manual_seed(1)

    def run(steps: range) -> None:
        for step in steps:
            index = torch.randint(len(images), (64,), generator=batches)
            spec.step(model, optimizers, (images[index], labels[index]), step)

    untrained_prior = {k: v.clone() for k, v in model.prior.state_dict().items()}
    run(range(vqvae_steps))
    prior_unchanged = all(torch.equal(v, untrained_prior[k]) for k, v in model.prior.state_dict().items())
    codes = model.encode(images)
    with torch.no_grad():
        initial = model.prior.bits_per_dim(codes, labels).mean().item()
    run(range(vqvae_steps, vqvae_steps + prior_steps))
    model.eval()
    with torch.no_grad():
        final = model.prior.bits_per_dim(codes, labels).mean().item()
    return SimpleNamespace(model=model, codes=codes, final_codes=model.encode(images), initial=initial, final=final,
                           prior_unchanged_by_vqvae_phase=prior_unchanged)


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masks_see_only_earlier_positions_and_the_centre_for_type_b(mask_type):
    conv = MaskedConv2d(2, 3, 5, mask_type)
    expected = torch.tensor([[1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1],
                             [1, 1, int(mask_type == "B"), 0, 0],
                             [0, 0, 0, 0, 0],
                             [0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(conv.mask, expected)
    # The masked weights do not reach the output: a kernel of ones then sums the visible inputs.
    torch.nn.init.ones_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 2, 2] = 1.0  # an input at the centre position reaches output (2, 2) only through the mask's centre
    assert conv(x)[0, :, 2, 2].tolist() == [float(mask_type == "B")] * 3
    assert conv(x).shape == (1, 3, 5, 5)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="mask_type must be one of"):
        MaskedConv2d(1, 1, 3, "C")
    with pytest.raises(ValueError, match="kernel_size must be an odd int"):
        MaskedConv2d(1, 1, 4, "A")
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        PixelCNN(levels=1)
    model, prior = PixelCNN(hidden=8, num_blocks=1), small_prior()
    with pytest.raises(ValueError, match="x must be an int64 tensor"):
        model(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="x must be an int64 tensor"):
        model(torch.zeros(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must hold values in 0..16"):
        model(torch.full((2, 8, 8), 17))
    with pytest.raises(ValueError, match="labels must be None"):
        model(torch.zeros(2, 8, 8, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    codes = torch.zeros(2, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels must be an int64 tensor"):
        prior(codes)
    with pytest.raises(ValueError, match="labels must be an int64 tensor"):
        prior(codes, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9"):
        prior(codes, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9"):
        prior.sample(2, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="temperature must be a positive float"):
        model.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match="images must lie in"):
        images_to_levels(torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="prior must be a class-conditional PixelCNN"):
        VQVAEPrior(VQVAE(hidden=8, codebook_size=16), small_prior(), 10)
    with pytest.raises(ValueError, match="prior must be a class-conditional PixelCNN"):
        VQVAEPrior(VQVAE(hidden=8, codebook_size=CODES), PixelCNN(levels=CODES, size=4, hidden=8), 10)


def test_shapes(digits):
    torch.manual_seed(0)
    model, prior = PixelCNN(hidden=16, num_blocks=1), small_prior()
    levels = images_to_levels(digits[0][:5])
    assert levels.shape == (5, 8, 8) and levels.dtype == torch.int64
    assert levels.min().item() == 0 and levels.max().item() == 16
    assert torch.equal(levels_to_images(levels), digits[0][:5])
    assert model(levels).shape == (5, 17, 8, 8)
    assert model.log_prob(levels).shape == model.bits_per_dim(levels).shape == (5,)
    codes = torch.randint(CODES, (5, 4, 4))
    assert prior(codes, digits[1][:5]).shape == (5, CODES, 4, 4)


def gradient_reach(model: PixelCNN, position: int, labels: torch.Tensor | None) -> torch.Tensor:
    """|d output logits at ``position`` (raster order) / d embedded input|, summed over a batch of
    random grids and the channels: [size * size] in raster order. The embedding's output is the
    first differentiable view of the (integer) input, so the hook keeps its gradient."""
    embedded = []
    handle = model.embedding.register_forward_hook(lambda module, inputs, output: embedded.append(output))
    x = torch.randint(model.levels, (4, model.size, model.size), generator=torch.Generator().manual_seed(position))
    try:
        logits = model(x, labels)
        embedded[0].retain_grad()
        logits.flatten(2)[:, :, position].sum().backward()
    finally:
        handle.remove()
    return embedded[0].grad.abs().sum((0, 3)).flatten()


@pytest.mark.parametrize("position", [0, 1, 7, 8, 27, 36, 63])
def test_pixelcnn_output_depends_on_no_input_at_or_after_its_position(position):
    torch.manual_seed(0)
    model = PixelCNN(hidden=16, num_blocks=3)
    reach = gradient_reach(model, position, None)
    assert torch.all(reach[position:] == 0), reach.view(8, 8)
    row, col = divmod(position, 8)
    # Its left and upper neighbours reach it (other earlier pixels may lie in the blind spot).
    if col > 0:
        assert reach[position - 1] > 0, reach.view(8, 8)
    if row > 0:
        assert reach[position - 8] > 0, reach.view(8, 8)


def test_prior_output_depends_on_every_earlier_code_and_no_later_one():
    torch.manual_seed(0)
    prior = small_prior()
    for layer in prior.modules():  # label biases start at zero: make them take part
        if isinstance(layer, torch.nn.Embedding) and layer is not prior.embedding:
            torch.nn.init.normal_(layer.weight)
    labels = torch.tensor([0, 3, 7, 9])
    for position in range(16):
        reach = gradient_reach(prior, position, labels)
        assert torch.all(reach[position:] == 0), (position, reach.view(4, 4))
        # The 7x7 first kernel covers the 4x4 grid: no blind spot.
        assert torch.all(reach[:position] > 0), (position, reach.view(4, 4))


@pytest.mark.parametrize("levels", [17, CODES])
def test_uniform_logits_give_log2_levels_bits_per_dim(levels):
    torch.manual_seed(0)
    model = PixelCNN(levels=levels, hidden=8, num_blocks=1)
    last = model.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.randint(levels, (3, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.bits_per_dim(x), torch.full((3,), math.log2(levels)), rtol=1e-6, atol=0)


def test_training_lowers_bits_per_dim_and_samples_match_the_model(trained_pixelcnn):
    model, initial, final = trained_pixelcnn
    report = f"bits/dim {initial:.3f} -> {final:.3f}"
    assert final < 0.65 * initial, report
    with torch.no_grad():
        warm = model.bits_per_dim(model.sample(128, generator=torch.Generator().manual_seed(0))).mean().item()
        cool = model.bits_per_dim(model.sample(128, temperature=0.5, generator=torch.Generator().manual_seed(0)))
    report += f", samples at temperature 1: {warm:.3f}, at 0.5: {cool.mean().item():.3f}"
    assert abs(warm - final) < 0.4, report
    assert cool.mean().item() < warm - 0.2, report


def test_sampling_is_seeded_and_in_range(trained_pixelcnn):
    model = trained_pixelcnn[0]
    first = model.sample(6, generator=torch.Generator().manual_seed(3))
    again = model.sample(6, generator=torch.Generator().manual_seed(3))
    other = model.sample(6, generator=torch.Generator().manual_seed(4))
    assert first.shape == (6, 8, 8) and first.dtype == torch.int64
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min().item() >= 0 and first.max().item() <= 16
    grid = get_spec("pixelcnn").grid(model, None)
    assert grid.shape == (64, 1, 8, 8) and grid.min().item() >= 0 and grid.max().item() <= 1


def test_prior_phases_train_one_model_each(trained_prior):
    assert trained_prior.prior_unchanged_by_vqvae_phase
    assert torch.equal(trained_prior.final_codes, trained_prior.codes), "the prior's phase changed the codes"


def test_prior_training_lowers_bits_per_code(trained_prior):
    initial, final = trained_prior.initial, trained_prior.final
    assert final < 0.65 * initial, f"bits per code {initial:.3f} -> {final:.3f}"


def test_prior_conditioning_matters(trained_prior, digits):
    prior, codes, labels = trained_prior.model.prior, trained_prior.codes, digits[1]
    with torch.no_grad():
        assert not torch.allclose(prior(codes[:5], torch.zeros(5, dtype=torch.int64)),
                                  prior(codes[:5], torch.ones(5, dtype=torch.int64)))
        shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
        shuffled_bits = prior.bits_per_dim(codes, shuffled).mean().item()
        log_probs = torch.stack([prior.log_prob(codes, torch.full_like(labels, c)) for c in range(10)], 1)
    accuracy = (log_probs.argmax(1) == labels).float().mean().item()
    report = f"bits per code {trained_prior.final:.3f}, shuffled labels {shuffled_bits:.3f}, accuracy {accuracy:.3f}"
    assert shuffled_bits > trained_prior.final + 0.1, report
    assert accuracy > 0.4, report


def test_prior_samples_decode_to_images(trained_prior):
    model = trained_prior.model
    labels = torch.tensor([0, 1, 2, 9])
    codes = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (4, 4, 4) and codes.dtype == torch.int64
    assert codes.min().item() >= 0 and codes.max().item() < CODES
    assert torch.equal(codes, model.sample(labels, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert model.decode(codes).shape == (4, 1, 8, 8)
        grid = get_spec("vqvae_prior").grid(model, None)
    assert grid.shape == (80, 1, 8, 8) and grid.min().item() >= 0 and grid.max().item() <= 1


def test_specs_are_registered_with_matching_optimizers():
    specs = {name: get_spec(name) for name in ("pixelcnn", "vqvae_prior")}
    assert isinstance(specs["pixelcnn"].build(), PixelCNN)
    model = specs["vqvae_prior"].build()
    optimizers = specs["vqvae_prior"].optimizers(model)
    assert set(optimizers) == {"vqvae", "prior"}
    optimized = {id(p) for o in optimizers.values() for group in o.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    assert model.vqvae_steps < specs["vqvae_prior"].steps
