"""Fréchet distance between Gaussians and the streaming feature statistics it needs.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). The trace term comes from
:func:`fastgen.ops.trace_sqrt_product` (exact, no matrix square root), everything in float64.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch

from fastgen.ops import _checks as checks
from fastgen.ops.fid import trace_sqrt_product

ArrayLike = Any  # numpy array, torch tensor, or nested sequence of numbers


class FrechetDistance(float):
    """A float (the distance) carrying ``diagnostics``: the smallest eigenvalue of the symmetric
    product, the mass of negative eigenvalues clamped, whether the eigh fallback ran (a covariance
    that is not positive definite), and the diagonal offset added (``eps``, else 0)."""

    diagnostics: dict[str, float | bool]

    def __new__(cls, value: float, diagnostics: dict[str, float | bool]) -> "FrechetDistance":
        result = super().__new__(cls, value)
        result.diagnostics = diagnostics
        return result


def _as_float64(name: str, value: ArrayLike, dims: int) -> torch.Tensor:
    t = torch.as_tensor(value).detach()
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(torch.float64)
    while t.dim() < dims:  # pytorch-fid's atleast_1d / atleast_2d: scalars are 1-d statistics
        t = t.unsqueeze(0)
    if not checks.all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = 1e-6, *, num_samples: tuple[int, int] | None = None) -> FrechetDistance:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid's
    ``calculate_frechet_distance`` (numpy arrays or tensors; computed in float64 on their device).

    It never raises on rank-deficient covariances: the trace term is exact for any positive
    semidefinite pair (an accurate nuclear-norm form runs for singular ones; the diagnostics say
    so). ``eps`` keeps pytorch-fid's meaning: the offset added to both diagonals for a retry when the
    trace is not finite, which with finite inputs does not happen here. The result is a float with
    ``.diagnostics``. Warns when the covariances are singular, or when ``num_samples`` (the sample
    counts behind each side, if known) is at most the feature dimension: such estimates are biased.
    """
    mu1, mu2 = _as_float64("mu1", mu1, 1), _as_float64("mu2", mu2, 1)
    sigma1, sigma2 = _as_float64("sigma1", sigma1, 2), _as_float64("sigma2", sigma2, 2)
    if mu1.dim() != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {tuple(mu1.shape)} and "
                         f"{tuple(mu2.shape)}")
    d = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (d, d):
            raise ValueError(f"{name} must be [{d}, {d}] to match the means, got {tuple(sigma.shape)}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    sigma2 = sigma2.to(sigma1.device)
    trace, info = trace_sqrt_product(sigma1, sigma2, return_diagnostics=True)
    offset = 0.0
    if not math.isfinite(float(trace)):
        offset = float(eps)
        eye = offset * torch.eye(d, dtype=torch.float64, device=sigma1.device)
        sigma1, sigma2 = sigma1 + eye, sigma2 + eye
        trace, info = trace_sqrt_product(sigma1, sigma2, return_diagnostics=True)
    if info["fallback"]:
        warnings.warn("frechet_distance: the covariances are singular (usually fewer samples than feature "
                      "dimensions), which biases FID", RuntimeWarning, stacklevel=2)
    if num_samples is not None and min(num_samples) <= d:
        warnings.warn(f"frechet_distance: {min(num_samples)} samples for {d}-dimensional features: with at "
                      "most as many samples as dimensions the covariance is singular and FID is biased "
                      f"(use more than {d})", RuntimeWarning, stacklevel=2)
    diff = mu1 - mu2.to(mu1.device)
    value = float(diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * trace)
    return FrechetDistance(value, {**info, "offset": offset})


def save_stats(path: str | os.PathLike, mu: ArrayLike, sigma: ArrayLike, count: int | None = None) -> None:
    """Write pytorch-fid compatible statistics: an ``.npz`` with ``mu`` and ``sigma`` (float64), and
    ``count`` (the number of samples) when known."""
    arrays = {"mu": np.asarray(torch.as_tensor(mu).double().cpu()),
              "sigma": np.asarray(torch.as_tensor(sigma).double().cpu())}
    if count is not None:
        arrays["count"] = np.asarray(count, dtype=np.int64)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name without it
        np.savez(f, **arrays)


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, count or None) from an ``.npz`` written by pytorch-fid or :func:`save_stats`."""
    with np.load(path) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not FID statistics: missing {sorted(missing)} (has {sorted(data.files)})")
        count = int(data["count"]) if "count" in data.files else None
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64), count


class FeatureStats:
    """Streaming mean and covariance of ``dim``-dimensional features, as ``np.cov`` (unbiased).

    ``update`` copies rows into fixed chunks of ``chunk_rows``: each full chunk is shifted by the
    mean of the first chunk (so no cancellation) and folded in as a symmetric rank-k product of
    which only the lower triangle is computed, in float32 for float32 (and half) features, float64
    for float64, and summed in float64. The chunking depends only on the row order, so the result is
    the same, bit for bit, whatever batch sizes the rows came in. :meth:`merge` and
    :meth:`all_reduce` combine statistics exactly (Chan et al.'s pairwise formula) in float64.
    """

    def __init__(self, dim: int, *, chunk_rows: int = 4096, block: int = 256,
                 device: str | torch.device = "cpu") -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
        self.dim, self.chunk_rows, self.block = dim, chunk_rows, block
        self.device = torch.device(device)
        self._folded_count = 0
        self._shift: torch.Tensor | None = None  # float64 [dim]
        self._sum = torch.zeros(dim, dtype=torch.float64, device=self.device)  # sum of (x - shift)
        self._outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)  # lower triangle
        self._pending: torch.Tensor | None = None  # the chunk being filled, in the product dtype
        self._pending_rows = 0

    @property
    def count(self) -> int:
        """Rows seen so far."""
        return self._folded_count + self._pending_rows

    # -- streaming ---------------------------------------------------------------------------
    def update(self, features: ArrayLike) -> "FeatureStats":
        """Add rows: features [B, dim] (numpy or torch, any float dtype)."""
        x = torch.as_tensor(features).detach()
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be [batch, {self.dim}], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"features must be a floating-point array, got {x.dtype}")
        if not checks.all_finite(x):
            raise ValueError("features contain NaN or Inf")
        product_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self._pending is None:
            self._pending = torch.empty(self.chunk_rows, self.dim, dtype=product_dtype, device=self.device)
        elif self._pending.dtype != product_dtype:
            raise TypeError(f"features must stay {self._pending.dtype} (float64, or float32 and half types) "
                            f"once streaming has started, got {x.dtype}")
        x = x.to(self.device)
        start = 0
        while start < x.shape[0]:
            take = min(self.chunk_rows - self._pending_rows, x.shape[0] - start)
            rows = x[start:start + take]
            destination = self._pending[self._pending_rows:self._pending_rows + take]
            if self._shift is None:
                destination.copy_(rows)
            else:  # shifted on the way in: one pass over the rows
                torch.sub(rows, self._shift.to(product_dtype), out=destination)
            self._pending_rows += take
            start += take
            if self._pending_rows == self.chunk_rows:
                self._fold_pending()
        return self

    def _fold_pending(self) -> None:
        rows = self._pending[:self._pending_rows]
        if self._shift is None:
            # The first chunk's mean, rounded to the product dtype so that the shift subtracted is
            # the shift added back.
            self._shift = (rows.sum(0, dtype=torch.float64) / rows.shape[0]).to(rows.dtype).double()
            rows -= self._shift.to(rows.dtype)
        self._sum += rows.sum(0)  # shifted values: small, and one chunk's sum is exact enough in float32
        for i0 in range(0, self.dim, self.block):  # lower triangle only: [block, i1] panels
            i1 = min(self.dim, i0 + self.block)
            self._outer[i0:i1, :i1] += rows[:, i0:i1].mT @ rows[:, :i1]
        self._folded_count += self._pending_rows
        self._pending_rows = 0

    def _flush(self) -> None:
        if self._pending_rows:
            self._fold_pending()

    # -- canonical form: count, mean, and M2 = sum (x - mean)(x - mean)^T --------------------------
    def _mean(self) -> tuple[int, torch.Tensor]:
        self._flush()
        n = self._folded_count
        if n == 0:
            return 0, torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        return n, self._shift + self._sum / n

    def _moments(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        n, mean = self._mean()
        if n == 0:
            return 0, mean, torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
        mean_offset = self._sum / n
        outer = self._outer.tril()
        outer += outer.tril(-1).mT
        return n, mean, outer.sub_(torch.outer(mean_offset, mean_offset), alpha=n)

    def _set_moments(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        self._folded_count = count
        self._shift = mean if count else None
        self._sum = torch.zeros_like(self._sum)
        self._outer = m2.tril()

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Fold ``other``'s rows into these statistics (exact; ``other`` is left unchanged)."""
        if not isinstance(other, FeatureStats) or other.dim != self.dim:
            raise ValueError(f"other must be FeatureStats of dim {self.dim}, got "
                             f"{getattr(other, 'dim', type(other).__name__)}")
        n_a, mean_a, m2_a = self._moments()
        n_b, mean_b, m2_b = other._moments()
        n = n_a + n_b
        if n_b == 0:
            return self
        delta = mean_b.to(self.device) - mean_a
        mean = mean_a + delta * (n_b / n)
        m2 = m2_a + m2_b.to(self.device) + torch.outer(delta, delta) * (n_a * n_b / n)
        self._set_moments(n, mean, m2)
        return self

    def all_reduce(self, group: Any = None) -> "FeatureStats":
        """Combine the statistics of every process of ``torch.distributed`` (when initialized), so
        each ends with those of all rows. Two all-reduces of float64 sums; exact."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        n, mean, m2 = self._moments()
        totals = torch.cat([torch.tensor([float(n)], dtype=torch.float64, device=self.device), mean * n])
        dist.all_reduce(totals, group=group)
        total = int(round(float(totals[0])))
        if total == 0:
            return self
        global_mean = totals[1:] / total
        delta = mean - global_mean
        m2 = m2 + n * torch.outer(delta, delta) if n else torch.zeros_like(m2)
        dist.all_reduce(m2, group=group)
        self._set_moments(total, global_mean, m2)
        return self

    # -- results ---------------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """The mean [dim], float64."""
        n, mean = self._mean()
        if n == 0:
            raise ValueError("FeatureStats has no samples yet")
        return mean

    @property
    def covariance(self) -> torch.Tensor:
        """The unbiased covariance [dim, dim] (divided by count - 1, as np.cov), float64."""
        return self._mean_and_covariance()[1]

    def _mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, mean, m2 = self._moments()
        if n < 2:
            raise ValueError(f"the covariance needs at least 2 samples, got {n}")
        return mean, m2.div_(n - 1)

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) as float64 numpy arrays, pytorch-fid's statistics."""
        mean, covariance = self._mean_and_covariance()
        return mean.cpu().numpy(), covariance.cpu().numpy()

    def save(self, path: str | os.PathLike) -> None:
        """pytorch-fid compatible ``.npz`` (mu, sigma) plus the sample count."""
        mu, sigma = self.compute()
        save_stats(path, mu, sigma, self.count)


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats, eps: float = 1e-6) -> FrechetDistance:
    """Fréchet distance between two :class:`FeatureStats`, warning when either has at most ``dim`` samples."""
    (mu1, sigma1), (mu2, sigma2) = stats1.compute(), stats2.compute()
    return frechet_distance(mu1, sigma1, mu2, sigma2, eps, num_samples=(stats1.count, stats2.count))
