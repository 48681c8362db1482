"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), as a mean and std over splits.

The samples are cut into ``splits`` contiguous chunks as in OpenAI's reference code: chunk i holds
rows i*N//splits to (i+1)*N//splits, so every sample counts and chunk sizes differ by at most one.
Each chunk has its own marginal p(y) and score; the result is their mean and (population) standard
deviation. Everything is computed in float64.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fastgen.ops import _checks

ArrayLike = Any  # numpy array, torch tensor, or nested sequence of numbers
# Rows are taken for probabilities when they sum to 1 this closely: float16 softmax output does.
PROBABILITY_SUM_TOLERANCE = 1e-3


def _is_probabilities(values: torch.Tensor) -> bool:
    return bool((values >= 0).all()) and bool(((values.sum(1) - 1).abs() <= PROBABILITY_SUM_TOLERANCE).all())


def _class_probabilities(values: torch.Tensor, from_logits: bool | None) -> torch.Tensor:
    if from_logits is not None and not isinstance(from_logits, bool):
        raise TypeError(f"from_logits must be None (auto-detect), True or False, got {from_logits!r}")
    looks_like_probabilities = _is_probabilities(values)
    if from_logits is None:
        from_logits = not looks_like_probabilities
    if from_logits:
        return torch.softmax(values, dim=1)
    if not looks_like_probabilities:
        raise ValueError("logits_or_probs must hold probabilities (non-negative rows summing to 1 within "
                         f"{PROBABILITY_SUM_TOLERANCE}) when from_logits=False")
    # Remove the rounding the tolerance let through, so each row is an exact distribution.
    return values / values.sum(1, keepdim=True)


def inception_score(logits_or_probs: ArrayLike, splits: int = 10, *,
                    from_logits: bool | None = None) -> tuple[float, float]:
    """(mean, std) of the Inception Score over ``splits`` chunks of ``logits_or_probs`` [N, classes].

    Rows are class logits or class probabilities: with ``from_logits=None`` they are probabilities
    when every row is non-negative and sums to 1 (within 1e-3), logits otherwise. The score lies
    in [1, classes]: 1 when every prediction is the same, ``classes`` when predictions are confident
    and spread evenly over all classes.
    """
    values = torch.as_tensor(logits_or_probs).detach()
    if values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"logits_or_probs must hold real numbers, got dtype {values.dtype}")
    values = values.to("cpu", torch.float64)
    if values.dim() != 2:
        raise ValueError(f"logits_or_probs must be 2-D [N, classes], got shape {tuple(values.shape)}")
    splits = _checks.positive_int("splits", splits)
    if values.shape[0] < splits:
        raise ValueError(f"logits_or_probs must have at least splits={splits} rows (one sample per split), got "
                         f"{values.shape[0]}")
    if values.shape[1] < 1:
        raise ValueError("logits_or_probs must have at least one class column, got shape "
                         f"{tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("logits_or_probs contains NaN or Inf")
    probs = _class_probabilities(values, from_logits)
    n = probs.shape[0]
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(0, keepdim=True)
        # xlogy makes 0 * log 0 = 0: one-hot probabilities are valid input.
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(1)
        scores.append(torch.exp(kl.mean()))
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(correction=0))


def inception_score_from_images(images: torch.Tensor | Iterable[torch.Tensor], model: nn.Module,
                                batch_size: int = 50, splits: int = 10) -> tuple[float, float]:
    """Inception Score of ``images`` under ``model``'s classifier: (mean, std) over ``splits``.

    ``images`` is a tensor [N, C, H, W], run in batches of ``batch_size``, or an iterable of such
    batches (e.g. a DataLoader yielding tensors). ``model`` is an :class:`InceptionV3FID`, a
    :class:`DigitsFeatureExtractor` or any module with ``features_and_logits(images)``; it is used
    as it is (both of those are always in eval mode). Batches move to the device of the model's
    parameters; logits are gathered on the CPU.
    """
    if not callable(getattr(model, "features_and_logits", None)):
        raise TypeError(f"model must have a features_and_logits(images) method, got {type(model).__name__}")
    batch_size = _checks.positive_int("batch_size", batch_size)
    if isinstance(images, torch.Tensor):
        batches: Iterable[torch.Tensor] = images.split(batch_size)
    elif isinstance(images, Iterable):
        batches = images
    else:
        raise TypeError(f"images must be a tensor [N, C, H, W] or an iterable of such batches, got "
                        f"{type(images).__name__}")
    parameter = next(model.parameters(), None)
    logits = []
    with torch.no_grad():
        for batch in batches:
            _checks.tensor("each batch of images", batch)
            if parameter is not None:
                batch = batch.to(parameter.device)
            logits.append(model.features_and_logits(batch)[1].to("cpu", torch.float64))
    if not logits:
        raise ValueError("images must hold at least one image, got none")
    return inception_score(torch.cat(logits), splits, from_logits=True)
