"""A small digit classifier as an embedded FID / Inception Score feature extractor: nothing to download.

:class:`DigitsFeatureExtractor` is a three-layer CNN trained on scikit-learn's bundled ``load_digits``
(1797 handwritten digits, 8x8, values 0..16). Its 64-d penultimate features stand in for Inception's
2048-d pool features in FID, and its 10-way logits for Inception's in the Inception Score, on
digit-like images. Its weights ship with fastgen (``weights/digits_classifier.pt``, ~100 kB) and are
rebuilt, deterministically and in seconds on a CPU, by::

    python -m fastgen.metrics.digits --train [--out PATH] [--seed 0]

Without ``--train`` the command prints the held-out accuracy of the weights at ``--out``.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.metrics.inception import check_images

DEFAULT_WEIGHTS_PATH = os.path.join(os.path.dirname(__file__), "weights", "digits_classifier.pt")
DIGITS_SIZE = 8
# load_digits' pixels are integers 0..16 (ink counts in 4x4 blocks of 32x32 bitmaps).
DIGITS_MAX_VALUE = 16.0
FEATURE_DIM = 64
NUM_CLASSES = 10
# Every TEST_EVERY-th digit is held out: a fixed split with every writer on both sides, no RNG involved.
TEST_EVERY = 5
# ITU-R BT.601 luma, as PIL's RGB -> "L" conversion uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_digit_images(images: torch.Tensor) -> torch.Tensor:
    """images [N, 1 or 3, H, W] float in [0, 1] -> grayscale [N, 1, 8, 8], the classifier's input.

    RGB becomes BT.601 luma. The resize is area averaging, which matches how ``load_digits`` was
    made (ink counted over blocks of a larger bitmap); ink is bright (1) on a dark (0) background.
    """
    check_images("images", images, channels=(1, 3))
    if images.shape[1] == 3:
        luma = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        images = (images * luma).sum(1, keepdim=True)
    if images.shape[-2:] != (DIGITS_SIZE, DIGITS_SIZE):
        images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="area")
    return images


class DigitsFeatureExtractor(nn.Module):
    """images [N, 1 or 3, H, W] in [0, 1] -> features [N, 64]; ``features_and_logits`` adds logits [N, 10].

    ``weights``: ``"default"`` loads the weights shipped with fastgen, a path loads that state_dict
    file (``torch.load(weights_only=True)``), ``None`` leaves a random initialization (for training).
    Images of any size go through :func:`to_digit_images` first. The network has no dropout or
    BatchNorm, so train and eval mode compute the same thing.
    """

    def __init__(self, weights: str | os.PathLike | None = "default") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, FEATURE_DIM, 3, padding=1)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        if weights is not None:
            path = os.fspath(DEFAULT_WEIGHTS_PATH if weights == "default" else weights)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"digits classifier weights not found at {path}; rebuild them with "
                                        f"`python -m fastgen.metrics.digits --train --out {path}`")
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def _last_conv(self, images: torch.Tensor) -> torch.Tensor:
        x = to_digit_images(images).to(self.fc.weight.dtype)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.conv3(F.max_pool2d(x, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The FID features: the last convolution's spatial mean taken before its ReLU. After the
        ReLU, 17 of the 64 channels never fire on digits, which would make every covariance singular."""
        return self._last_conv(images).mean((2, 3))

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 64] as ``forward``, class logits [N, 10] from the classifier's own path)."""
        conv = self._last_conv(images)
        return conv.mean((2, 3)), self.fc(F.relu(conv).mean((2, 3)))


def digits_split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images, train labels), (test images, test labels)) of ``load_digits``.

    Images are float32 [N, 1, 8, 8] in [0, 1]; labels int64 [N]. Every ``TEST_EVERY``-th digit
    is a test digit. Needs scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits data set comes from scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    images = torch.as_tensor(digits.data, dtype=torch.float32).view(-1, 1, DIGITS_SIZE, DIGITS_SIZE)
    images = images / DIGITS_MAX_VALUE
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    is_test = torch.arange(len(labels)) % TEST_EVERY == TEST_EVERY - 1
    return (images[~is_test], labels[~is_test]), (images[is_test], labels[is_test])


def accuracy(model: DigitsFeatureExtractor, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` whose predicted class is the label."""
    with torch.no_grad():
        predictions = model.features_and_logits(images)[1].argmax(1)
    return float((predictions == labels).double().mean())


def train(seed: int = 0, epochs: int = 30, batch_size: int = 128, lr: float = 5e-3) -> DigitsFeatureExtractor:
    """Train a :class:`DigitsFeatureExtractor` on the training part of :func:`digits_split`.

    Adam with a cosine learning-rate schedule; the seed fixes the initialization and the batch
    order, and training runs on one CPU thread, so a run on the same torch build and CPU
    reproduces the weights whatever the core count.
    """
    (images, labels), _ = digits_split()
    threads = torch.get_num_threads()
    # The convs are tiny: threading them costs more than it saves, and one thread fixes the reduction order.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = DigitsFeatureExtractor(weights=None)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
        batch_order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for batch in torch.randperm(len(labels), generator=batch_order).split(batch_size):
                loss = F.cross_entropy(model.features_and_logits(images[batch])[1], labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastgen.metrics.digits", description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="train and write the weights (else: evaluate them)")
    parser.add_argument("--out", default=DEFAULT_WEIGHTS_PATH, help="weights file (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialization and batch order")
    args = parser.parse_args(argv)
    if args.train:
        model = train(seed=args.seed)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        torch.save(model.state_dict(), args.out)
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    else:
        model = DigitsFeatureExtractor(weights=args.out)
    (train_images, train_labels), (test_images, test_labels) = digits_split()
    print(f"accuracy: train {accuracy(model, train_images, train_labels):.4f}, "
          f"held-out test {accuracy(model, test_images, test_labels):.4f} ({len(test_labels)} digits)")


if __name__ == "__main__":
    main()
