"""Tolerances, input makers and parity helpers shared by tests and benchmarks."""
from __future__ import annotations

import ctypes
import re
import time
from typing import Callable, Sequence

import torch

# One tolerance per dtype: float32 reductions agree to ~1e-5 relative; half types
# round once on output, so they agree to about one unit in the last place.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-9},
    torch.float32: {"rtol": 1e-5, "atol": 2e-5},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}

# Odd sizes: a single element, primes, a plane larger than a SIMD tile, H*W == 1.
ODD_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (1, 1, 1, 1), (2, 3, 5, 7), (3, 4, 17, 1), (1, 5, 1, 1), (2, 5, 33, 31), (1, 3, 127, 9),
)

LAYOUTS = ("contiguous", "channels_last", "strided")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 scale: float = 1.0, msg: str = "") -> None:
    """Compare with the tolerance of ``dtype`` (default: expected's), optionally scaled."""
    tol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"] * scale, atol=tol["atol"] * scale,
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in a contiguous, channels_last or non-dense strided layout."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider buffer: not dense
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def make_feature_map(shape: Sequence[int], dtype: torch.dtype = torch.float32, layout: str = "contiguous",
                     *, seed: int = 0, offset: float = 0.0, scale: float = 1.0,
                     device: str = "cpu") -> torch.Tensor:
    """Random [N, C, H, W] values ``offset + scale * randn`` in the given layout."""
    gen = torch.Generator().manual_seed(seed)
    values = offset + scale * torch.randn(*shape, generator=gen, dtype=torch.float64)
    return with_layout(values.to(dtype=dtype, device=device), layout)


def make_style_vectors(n: int, c: int, dtype: torch.dtype = torch.float32, *, seed: int = 1,
                       device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Style mean (any sign) and style std (positive), [N, C] each."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, c, generator=gen, dtype=torch.float64)
    std = 0.5 + torch.rand(n, c, generator=gen, dtype=torch.float64)
    return mean.to(dtype=dtype, device=device), std.to(dtype=dtype, device=device)


def backends_for(spec, device: str = "cpu") -> list[str]:
    """Names of the backends of ``spec`` (an OpSpec) that can run on ``device`` here, reference first."""
    names = ["ref"]
    for backend in spec.backends:
        if backend.unavailable() is None and device in backend.devices():
            names.append(backend.name)
    return names


def benchmark_after_warm_up(benchmark, provider: str, step) -> None:
    """pytest-benchmark ``step`` after one call outside the timed region.

    The warm-up compiles (its time lands in extra_info as ``compile_s`` for the ``compile``
    provider, with ``compile_cache_hits``: Inductor's disk cache turns a repeat compile into a
    load), faults pages in, and turns a backend that cannot run here into a skip.
    """
    import pytest
    from torch._dynamo.utils import counters

    from fastgen.ops import BackendUnavailableError

    cache_hits, start = counters["inductor"]["fxgraph_cache_hit"], time.perf_counter()
    try:
        step()
    except BackendUnavailableError as exc:
        pytest.skip(f"{provider}: {exc}")
    if provider == "compile":
        benchmark.extra_info["compile_s"] = time.perf_counter() - start
        benchmark.extra_info["compile_cache_hits"] = counters["inductor"]["fxgraph_cache_hit"] - cache_hits
    benchmark(step)


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def peak_memory_increase(fn: Callable[[], object]) -> int:
    """How far ``fn()`` raises this process's peak resident memory above what it holds before, in bytes.

    Linux only: freed heap memory goes back to the OS first (malloc_trim) and the peak (VmHWM) is
    reset through /proc/self/clear_refs, so the result counts what fn allocates and touches,
    whichever allocator (torch's, std::vector, a library's own) it goes through.
    """
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _proc_status_bytes("VmRSS")
    fn()
    return max(0, _proc_status_bytes("VmHWM") - before)


def make_features(n: int, d: int, *, seed: int = 0, shift: float = 0.0,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[n, d] features like Inception pool features: post-ReLU, with a decaying covariance spectrum.
    The mixing matrix is the same for every seed, so two seeds (or shifts) are two sample sets of
    related distributions."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    mix *= torch.arange(1, d + 1, dtype=torch.float64) ** -0.7
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix + shift).to(dtype)
