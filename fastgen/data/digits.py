"""scikit-learn's bundled handwritten digits (1797 images, 8x8, no download) as image tensors."""
from __future__ import annotations

import torch

# load_digits' pixels are the integers 0..16.
DIGITS_LEVELS = 16
SIZES = (8, 16)


def load_digits_images(size: int = 8, value_range: tuple[float, float] = (0.0, 1.0),
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [1797, 1, size, size], labels int64 [1797]), shuffled by ``seed``.

    Pixels k / 16 are mapped linearly onto ``value_range`` (lo, hi): (0, 1) by default, (-1, 1) for
    tanh generators. ``size`` 8 is native; 16 repeats each pixel 2x2 (exact, no interpolation).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
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
    if size == 16:
        images = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return lo + (hi - lo) * images[order], labels[order]
