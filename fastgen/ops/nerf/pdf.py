"""NeRF hierarchical (coarse-to-fine) sampling as ``fastgen::sample_pdf``: the inverse CDF of the
piecewise-constant pdf that a coarse pass's weights put on its intervals, as nerf-pytorch's
``sample_pdf(bins, weights, N_samples, det)``. The spec is
:func:`fastgen.ops.nerf.reference.sample_pdf_ref`."""
from __future__ import annotations

import torch

from fastgen.ops import _checks as checks
from fastgen.ops._library import OpSpec, cpp_backend, cuda_backend, define, only_dtypes, triton_backend
from fastgen.ops.nerf.reference import sample_pdf_ref

_FLOATS = only_dtypes(torch.float32, torch.float64)
_TRITON_MAX_CDF = 1024  # fastgen.ops.nerf.triton_pdf.MAX_CDF (not imported: import fastgen never imports triton)


def _triton_rejects(bins, weights, u, n_samples) -> list[str]:
    too_long = weights.shape[-1] + 1 > _TRITON_MAX_CDF
    return _FLOATS(bins) + ([f"S + 1 = {weights.shape[-1] + 1} CDF values exceed its {_TRITON_MAX_CDF}"]
                            if too_long else [])


SAMPLE_PDF = define(OpSpec(
    name="sample_pdf",
    schema="(Tensor bins, Tensor weights, Tensor? u, int n_samples) -> Tensor",
    reference=sample_pdf_ref,
    fake=lambda bins, weights, u, n_samples: weights.new_empty(weights.shape[0], n_samples),
    backends=(cpp_backend("sample_pdf", _FLOATS),
              triton_backend("fastgen.ops.nerf.triton_pdf", "sample_pdf", _triton_rejects),
              cuda_backend("sample_pdf", _FLOATS)),
    # Piecewise constant in its index choices and detached in nerf-pytorch (the fine samples are
    # positions to evaluate, not a function to differentiate): no gradient to anything.
    no_grad_inputs=("bins", "weights"),
    no_grad_outputs=(0,),
))


def check_inputs(bins: object, weights: object, n_samples: object) -> None:
    """bins [..., S + 1] and weights [..., S] of one float dtype and device, n_samples >= 1."""
    checks.tensor("bins", bins)
    checks.tensor("weights", weights)
    checks.float_dtype("weights", weights)
    checks.like("bins", bins, "weights", weights)
    if weights.dim() < 1 or weights.shape[-1] < 1:
        raise ValueError(f"weights must be [..., S] with S >= 1, got shape {tuple(weights.shape)}")
    if bins.shape != weights.shape[:-1] + (weights.shape[-1] + 1,):
        raise ValueError(f"bins must be [..., S + 1] with the batch dims of weights {tuple(weights.shape)} "
                         f"(the S + 1 edges of its S intervals), got shape {tuple(bins.shape)}")
    checks.positive_int("n_samples", n_samples)


def check_values(bins: torch.Tensor, weights: torch.Tensor) -> None:
    """weights finite and >= 0, bins finite and non-decreasing on every ray (skipped while tracing).
    The C++ kernel makes the same checks, with the same messages, in its own pass over the inputs."""
    if torch.compiler.is_compiling() or not weights.numel():
        return
    low, high = torch.aminmax(weights)
    if not (bool(low >= 0) and bool(high < float("inf"))):  # NaN fails both comparisons
        raise ValueError(f"weights must be finite and >= 0, got values in [{low.item()}, {high.item()}]")
    # Sorted (NaN fails >=) with finite ends is finite throughout: two cheap passes instead of three.
    if not bool(torch.isfinite(bins[..., 0]).all() & torch.isfinite(bins[..., -1]).all()):
        raise ValueError("bins contains NaN or Inf")
    if bins.shape[-1] > 1 and not bool((bins[..., 1:] >= bins[..., :-1]).all()):
        raise ValueError("bins must be sorted (non-decreasing) along the last dim on every ray, without NaN")


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, deterministic: bool = True, *,
               generator: torch.Generator | None = None, impl: str = "auto") -> torch.Tensor:
    """``n_samples`` positions per ray drawn from the pdf that ``weights`` [..., S] (>= 0) puts on the
    intervals between the edges ``bins`` [..., S + 1] (sorted on each ray): [..., n_samples].

    As nerf-pytorch: pdf = (weights + 1e-5) / sum, cdf = [0, cumsum(pdf)]; u = linspace(0, 1,
    n_samples) when ``deterministic``, else ``torch.rand`` with ``generator`` (drawn here, so every
    backend inverts the same u); a sample is the edge interval's linear interpolation at u, where the
    interval is located by ``searchsorted(cdf, u, right=True)`` and a CDF step below 1e-5 counts as
    empty (its samples sit at its lower edge). A ray of zero weights samples uniformly. Deterministic
    samples are sorted; random ones are not (sort them to merge with the coarse samples). Samples lie
    in [bins[..., 0], bins[..., -1]].

    No gradient: the output never requires grad (nerf-pytorch detaches it too). float16 / bfloat16
    are computed in float32 and rounded once. Bad shapes, dtypes, NaN / Inf, negative weights or
    unsorted bins raise ValueError / TypeError.
    """
    check_inputs(bins, weights, n_samples)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    dtype, batch, s = weights.dtype, weights.shape[:-1], weights.shape[-1]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    # Detached: a kernel called on an input that requires grad would hand back an output that does too.
    weights_2d = weights.detach().reshape(-1, s).to(compute)
    bins_2d = bins.detach().reshape(-1, s + 1).to(compute)
    u = None if deterministic else torch.rand(weights_2d.shape[0], n_samples, generator=generator, dtype=compute,
                                              device=weights.device)
    args = (bins_2d, weights_2d, u, n_samples)
    # The C++ kernel checks the values itself, at no extra pass; nothing checks them while tracing.
    if not torch.compiler.is_compiling() and SAMPLE_PDF.select(impl, args)[0] != "cpu":
        check_values(bins_2d, weights_2d)
    samples = SAMPLE_PDF.call(*args, impl=impl)
    return samples.reshape(*batch, n_samples).to(dtype)
