"""Inception Score: closed-form cases, split semantics against a numpy computation, logits vs
probabilities, argument errors, and the score from images through a feature extractor."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastgen.metrics.digits import DigitsFeatureExtractor, digits_split
from fastgen.metrics.inception import InceptionV3FID
from fastgen.metrics.inception_score import inception_score, inception_score_from_images


pytestmark = pytest.mark.usefixtures("one_thread_module")  # see tests/conftest.py


def numpy_inception_score(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """OpenAI's formulation: chunk i is rows i*N//splits to (i+1)*N//splits."""
    n = len(probs)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def random_logits(n: int = 37, classes: int = 6, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(n, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("values", [torch.full((40, 7), 1 / 7), torch.zeros(40, 7), torch.full((40, 7), 3.5)])
def test_identical_uniform_predictions_score_one(values: torch.Tensor) -> None:
    mean, std = inception_score(values, splits=4)
    assert abs(mean - 1) <= 1e-12 and std <= 1e-12


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_confident_predictions_spread_over_k_classes_score_k(k: int) -> None:
    labels = torch.arange(20 * k) % k  # interleaved: every split of 2k rows sees each class twice
    one_hot = torch.nn.functional.one_hot(labels, num_classes=10).double()
    mean, std = inception_score(one_hot, splits=10)
    assert abs(mean - k) <= 1e-12 * k and std <= 1e-12 * k
    # As logits, near-one-hot softmax outputs give nearly k.
    mean, _ = inception_score(60 * one_hot, splits=10)
    assert abs(mean - k) < 1e-9 * k


@pytest.mark.parametrize("n, splits", [(37, 1), (37, 3), (37, 10), (10, 10)])
def test_splits_match_reference(n: int, splits: int) -> None:
    probs = torch.softmax(random_logits(n), dim=1)
    expected = numpy_inception_score(probs.numpy(), splits)
    actual = inception_score(probs, splits=splits)
    assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)
    if splits == 1:
        assert actual[1] == 0


def test_each_split_has_its_own_marginal() -> None:
    # First half all class 0, second half all class 1: one split sees two classes, two splits one each.
    one_hot = torch.nn.functional.one_hot(torch.arange(20) // 10, num_classes=2).double()
    assert inception_score(one_hot, splits=1) == pytest.approx((2.0, 0.0), abs=1e-12)
    assert inception_score(one_hot, splits=2) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_logits_and_probabilities_agree_across_types() -> None:
    logits = random_logits()
    probs = torch.softmax(logits, dim=1)
    expected = inception_score(logits, splits=3)
    assert inception_score(probs, splits=3) == pytest.approx(expected, rel=1e-12)
    assert inception_score(logits, splits=3, from_logits=True) == pytest.approx(expected, rel=1e-12)
    assert inception_score(probs.numpy(), splits=3, from_logits=False) == pytest.approx(expected, rel=1e-12)
    assert inception_score(logits.float(), splits=3) == pytest.approx(expected, rel=1e-5)
    assert inception_score(probs.half(), splits=3) == pytest.approx(expected, rel=1e-2)
    # Probabilities read as logits are a different (flatter) distribution.
    assert inception_score(probs, splits=3, from_logits=True)[0] < expected[0]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(logits_or_probs=torch.zeros(10)), ValueError, r"must be 2-D \[N, classes\]"),
    (dict(logits_or_probs=torch.zeros(10, 3), splits=0), ValueError, "splits must be an int >= 1"),
    (dict(logits_or_probs=torch.zeros(10, 3), splits=2.5), ValueError, "splits must be an int >= 1"),
    (dict(logits_or_probs=torch.zeros(3, 3), splits=4), ValueError, "at least splits=4 rows"),
    (dict(logits_or_probs=torch.zeros(4, 0), splits=2), ValueError, "at least one class"),
    (dict(logits_or_probs=torch.tensor([[0.5, math.nan]] * 4), splits=2), ValueError, "NaN or Inf"),
    (dict(logits_or_probs=torch.tensor([[0.5, math.inf]] * 4), splits=2), ValueError, "NaN or Inf"),
    (dict(logits_or_probs=torch.zeros(4, 3), splits=2, from_logits=False), ValueError, "must hold probabilities"),
    (dict(logits_or_probs=torch.zeros(4, 3), splits=2, from_logits="yes"), TypeError, "from_logits must be"),
    (dict(logits_or_probs=torch.ones(4, 3, dtype=torch.bool), splits=2), TypeError, "real numbers"),
])
def test_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        inception_score(**kwargs)


def test_from_images_matches_logits_in_any_batching() -> None:
    model = DigitsFeatureExtractor()
    (_, _), (images, _) = digits_split()
    images = images[:50]
    with torch.no_grad():
        expected = inception_score(model.features_and_logits(images)[1], splits=5)
    # float32 convolutions round differently per batch size.
    assert inception_score_from_images(images, model, batch_size=7, splits=5) == pytest.approx(expected, rel=1e-5)
    batches = [images[:20], images[20:]]
    assert inception_score_from_images(batches, model, splits=5) == pytest.approx(expected, rel=1e-5)
    # A classifier that recognizes digits spreads a mixed set over many classes.
    assert expected[0] > 5


def test_from_images_with_inception() -> None:
    torch.manual_seed(0)
    model = InceptionV3FID(resize=False)
    images = torch.rand(4, 3, 75, 75, generator=torch.Generator().manual_seed(0))
    mean, std = inception_score_from_images(images, model, batch_size=3, splits=2)
    with torch.no_grad():
        expected = inception_score(model.features_and_logits(images)[1], splits=2)
    assert (mean, std) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert 1 <= mean <= 1008


def test_from_images_bad_arguments() -> None:
    model = DigitsFeatureExtractor()
    with pytest.raises(TypeError, match="features_and_logits"):
        inception_score_from_images(torch.rand(4, 1, 8, 8), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        inception_score_from_images(torch.rand(4, 1, 8, 8), model, batch_size=0)
    with pytest.raises(ValueError, match="at least one image"):
        inception_score_from_images([], model)
    with pytest.raises(TypeError, match="images must be a tensor"):
        inception_score_from_images(3, model)
    with pytest.raises(TypeError, match="each batch of images must be a torch.Tensor"):
        inception_score_from_images([(torch.rand(2, 1, 8, 8), torch.zeros(2))], model)
