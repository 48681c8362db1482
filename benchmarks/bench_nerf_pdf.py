"""NeRF hierarchical sampling: fastgen's sample_pdf against nerf-pytorch's torch code.

Run (the JSON is read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_nerf_pdf.py -q --benchmark-json=OUT.json

float32 on CPU, NeRF's setup: R = 65536 rays, 64 coarse samples per ray whose midpoints make the
S + 1 = 63 edges of S = 62 intervals (nerf-pytorch passes ``weights[..., 1:-1]`` of the 64 coarse
weights), 128 fine samples per ray, deterministic (``det=True``: linspace u) and random u. Providers:
    fastgen   ``fastgen.ops.nerf.pdf.sample_pdf``: argument checks, u drawn with torch.rand when random,
              then the kernel (C++ on CPU)
    eager     nerf-pytorch's ``sample_pdf`` as it writes it (``reference.sample_pdf_nerf_pytorch``)
    compile   ``torch.compile`` of that function (compiled before timing; ``compile_s`` in extra_info)
Every provider draws its own random u (torch.rand of [R, 128]), so that cost is in all of them.
"""
from __future__ import annotations

import pytest
import torch

from fastgen.ops.nerf.pdf import sample_pdf
from fastgen.ops.nerf.reference import sample_pdf_nerf_pytorch
from fastgen.testing import benchmark_after_warm_up

SUITE = "nerf"
DTYPE = torch.float32
RAYS, COARSE, FINE = 65536, 64, 128
PROVIDERS = ["fastgen", "eager", "compile"]


def make_coarse_pass(rays: int = RAYS, coarse: int = COARSE, near: float = 2.0, far: float = 6.0):
    """Edges (midpoints of stratified coarse samples) [R, coarse - 1] and their weights [R, coarse - 2]."""
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, coarse, dtype=DTYPE)
    z_vals = near + (far - near) * (t + torch.rand(rays, coarse, generator=gen, dtype=DTYPE) / coarse)
    mids = 0.5 * (z_vals[:, 1:] + z_vals[:, :-1])
    weights = torch.rand(rays, coarse, generator=gen, dtype=DTYPE) ** 4  # peaky, as trained densities
    return mids, weights[:, 1:-1].contiguous()


def make_sampler(provider: str, bins: torch.Tensor, weights: torch.Tensor, deterministic: bool):
    if provider == "fastgen":
        return lambda: sample_pdf(bins, weights, FINE, deterministic)
    if provider == "eager":
        return lambda: sample_pdf_nerf_pytorch(bins, weights, FINE, deterministic)
    if provider == "compile":
        torch._dynamo.reset()  # a clean slate, so compile_s is a full compile
        compiled = torch.compile(sample_pdf_nerf_pytorch, fullgraph=True, dynamic=False)
        return lambda: compiled(bins, weights, FINE, deterministic)
    raise ValueError(provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "rand"])
def test_sample_pdf(benchmark, deterministic, provider):
    bins, weights = make_coarse_pass()
    benchmark.group = f"sample_pdf R={RAYS} S={weights.shape[1]} n={FINE} {'det' if deterministic else 'rand'}"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "sample_pdf", "provider": provider, "shape": [RAYS, weights.shape[1], FINE],
        "deterministic": deterministic, "dtype": str(DTYPE).removeprefix("torch.")})
    benchmark_after_warm_up(benchmark, provider, make_sampler(provider, bins, weights, deterministic))
