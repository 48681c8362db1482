"""The embedded digits feature extractor: shipped weights, held-out accuracy, input handling,
deterministic training and the command line."""
from __future__ import annotations

import os
import re

import pytest
import torch

from fastgen.metrics import digits
from fastgen.metrics.digits import DigitsFeatureExtractor, digits_split, to_digit_images
from fastgen.testing import assert_close


@pytest.fixture(scope="module")
def model() -> DigitsFeatureExtractor:
    return DigitsFeatureExtractor()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_split()[1]


def test_shipped_weights_are_small_and_load_as_plain_state_dict() -> None:
    assert os.path.getsize(digits.DEFAULT_WEIGHTS_PATH) < 200_000
    state = torch.load(digits.DEFAULT_WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert set(state) == set(DigitsFeatureExtractor(weights=None).state_dict())


def test_split_is_fixed_and_disjoint() -> None:
    (train_images, train_labels), (test_images, test_labels) = digits_split()
    assert len(train_labels) + len(test_labels) == 1797 and len(test_labels) == 1797 // 5
    assert train_images.shape[1:] == (1, 8, 8) and test_images.dtype == torch.float32
    assert float(train_images.min()) == 0 and float(train_images.max()) == 1
    assert set(test_labels.tolist()) == set(range(10))


def test_held_out_accuracy(model: DigitsFeatureExtractor, held_out) -> None:
    images, labels = held_out
    assert digits.accuracy(model, images, labels) >= 0.9


def test_shapes_and_determinism(model: DigitsFeatureExtractor, held_out) -> None:
    images = held_out[0][:5]
    with torch.no_grad():
        features, logits = model.features_and_logits(images)
        assert torch.equal(model(images), features)
    assert features.shape == (5, digits.FEATURE_DIM) == (5, 64) and logits.shape == (5, 10)
    pooled_activations = model._last_conv(images).relu().mean((2, 3))
    assert_close(logits, pooled_activations @ model.fc.weight.T + model.fc.bias)


def test_features_are_not_degenerate(model: DigitsFeatureExtractor, held_out) -> None:
    # Post-ReLU, some channels never fire: those features would be constant and every covariance singular.
    with torch.no_grad():
        features = model(held_out[0])
    assert bool((features.std(0) > 0).all())
    assert torch.linalg.matrix_rank(torch.cov(features.double().mT)) == features.shape[1]


def test_larger_and_rgb_images_give_the_digit_features(model: DigitsFeatureExtractor, held_out) -> None:
    images, labels = held_out
    # Each pixel as a 4x4 block (the digits' own construction): area resizing recovers the 8x8 digit.
    large = images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert torch.equal(to_digit_images(large), images)
    rgb = large.expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = model(images)
        assert_close(model(rgb), expected)
    assert digits.accuracy(model, rgb, labels) == digits.accuracy(model, images, labels)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 13, 21)).shape == (2, 64)  # sizes that do not divide into 8
        assert model(torch.rand(2, 1, 5, 5)).shape == (2, 64)  # smaller ones are upsampled


def test_grayscale_conversion_uses_bt601_luma() -> None:
    red, green, blue = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    red[:, 0], green[:, 1], blue[:, 2] = 1, 1, 1
    for image, luma in ((red, 0.299), (green, 0.587), (blue, 0.114)):
        assert_close(to_digit_images(image), torch.full((1, 1, 8, 8), luma))
    white = torch.ones(2, 3, 16, 16, dtype=torch.float64)
    assert_close(to_digit_images(white), torch.ones(2, 1, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("images, error, message", [
    (torch.rand(2, 2, 8, 8), ValueError, "must have 1 or 3 channels"),
    (torch.rand(1, 8, 8), ValueError, r"4-D tensor \[N, C, H, W\]"),
    (torch.ones(1, 1, 8, 8, dtype=torch.int64), TypeError, "float tensor"),
    ("an image", TypeError, "images must be a torch.Tensor"),
])
def test_bad_images(model: DigitsFeatureExtractor, images, error, message) -> None:
    with pytest.raises(error, match=message):
        model(images)


def test_missing_weights_file_says_how_to_rebuild(tmp_path) -> None:
    path = str(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match="python -m fastgen.metrics.digits --train") as error:
        DigitsFeatureExtractor(weights=path)
    assert path in str(error.value)


def test_training_is_deterministic_and_restores_threads() -> None:
    threads = torch.get_num_threads()
    first, second = digits.train(seed=3, epochs=1), digits.train(seed=3, epochs=1)
    assert torch.get_num_threads() == threads
    for (name, expected), actual in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(actual, expected), name
    assert not torch.equal(digits.train(seed=4, epochs=1).fc.weight, first.fc.weight)


def test_command_line_trains_and_evaluates(tmp_path, monkeypatch, capsys) -> None:
    out = str(tmp_path / "weights" / "digits.pt")
    real_train = digits.train
    monkeypatch.setattr(digits, "train", lambda seed: real_train(seed=seed, epochs=1))  # the real run takes ~5 s
    digits.main(["--train", "--out", out, "--seed", "1"])
    assert f"wrote {out}" in capsys.readouterr().out
    assert set(torch.load(out, weights_only=True)) == set(DigitsFeatureExtractor(weights=None).state_dict())
    digits.main([])
    shipped_accuracy = re.search(r"held-out test ([0-9.]+)", capsys.readouterr().out)
    assert shipped_accuracy is not None and float(shipped_accuracy.group(1)) >= 0.9
