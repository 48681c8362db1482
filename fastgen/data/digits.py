"""scikit-learn's bundled handwritten digits (1797 images, 8x8, no download) as image tensors."""
from __future__ import annotations

import torch

# load_digits' pixels are the integers 0..16.
DIGITS_LEVELS = 16
NATIVE_SIZE = 8


def load_digits_images(size: int = 8, value_range: tuple[float, float] = (0.0, 1.0),
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [1797, 1, size, size], labels int64 [1797]), shuffled by ``seed``.

    Pixels k / 16 are mapped linearly onto ``value_range`` (lo, hi): (0, 1) by default, (-1, 1) for
    tanh generators. ``size`` 8 is native; a multiple of 8 repeats each pixel (size / 8)^2 times
    (exact nearest upsampling, no interpolation).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < NATIVE_SIZE or size % NATIVE_SIZE:
        raise ValueError(f"size must be a multiple of {NATIVE_SIZE} (8 native, 16, 32, ...), got {size!r}")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be two numbers (lo, hi), got {value_range!r}") from None
    if not lo < hi:
        raise ValueError(f"value_range must have lo < hi, got {value_range!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("fastgen.data.digits needs scikit-learn (pip install scikit-learn)") from error
    digits = load_digits()
    images = torch.as_tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / DIGITS_LEVELS
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    factor = size // NATIVE_SIZE
    if factor > 1:
        images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return lo + (hi - lo) * images[order], labels[order]
