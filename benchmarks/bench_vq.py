"""VQ nearest-codebook search: fastgen against torch's ways of writing it and faiss.

Run (the JSON is read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_vq.py -q --benchmark-json=OUT.json

float32 on CPU, D = 64, N in {16384, 65536} encoder vectors, K in {512, 1024, 8192} codes, random
normal z and codebook. Every provider returns the nearest code's index per row. Providers:
    fastgen   ``fastgen.ops.vq_nearest(z, codebook)``: indices and squared distances, without the
              N x K distance matrix
    cdist     ``torch.cdist(z, codebook).argmin(1)``
    addmm     ``torch.addmm(|e|^2, z, e^T, alpha=-2).argmin(1)``: the expanded |z|^2 + |e|^2 - 2 z.e
              without the |z|^2 term, which does not change the argmin
    compile   ``torch.compile`` of the addmm form (compiled before timing; ``compile_s`` in extra_info)
    faiss     ``faiss.IndexFlatL2(D)`` holding the codebook, ``search(z, 1)`` (faiss-cpu, a benchmark-only
              extra; skipped when it is not installed)
extra_info: ``flops`` = 2 N K D (the multiply-adds of the search; ``report.py`` turns it into GFLOP/s
and a fraction of this machine's sgemm rate measured in the same run) and ``peak_extra_bytes``, how far
one call raised the process's peak resident memory above what it held before (inputs excluded), which
``report.py`` compares with the N x K float32 matrix.
"""
from __future__ import annotations

import os

import pytest
import torch

import fastgen.ops
from fastgen.testing import benchmark_after_warm_up, peak_memory_increase

SUITE = "vq"
DTYPE = torch.float32
D = 64
SIZES = [(n, k) for n in (16384, 65536) for k in (512, 1024, 8192)]
PROVIDERS = ["fastgen", "cdist", "addmm", "compile", "faiss"]


def expanded_argmin(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.addmm((codebook * codebook).sum(1), z, codebook.t(), alpha=-2).argmin(1)


def make_search(provider: str, z: torch.Tensor, codebook: torch.Tensor):
    """A no-argument function returning the nearest code of every row of z."""
    if provider == "fastgen":
        return lambda: fastgen.ops.vq_nearest(z, codebook)[0]
    if provider == "cdist":
        return lambda: torch.cdist(z, codebook).argmin(1)
    if provider == "addmm":
        return lambda: expanded_argmin(z, codebook)
    if provider == "compile":
        torch._dynamo.reset()  # a clean slate, so compile_s is a full compile
        compiled = torch.compile(expanded_argmin, fullgraph=True, dynamic=False)
        return lambda: compiled(z, codebook)
    if provider == "faiss":
        faiss = pytest.importorskip("faiss", reason="faiss-cpu is a benchmark-only extra: pip install faiss-cpu")
        faiss.omp_set_num_threads(torch.get_num_threads())  # the same cores as torch
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(codebook.numpy())
        z_numpy = z.numpy()
        return lambda: index.search(z_numpy, 1)[1]
    raise ValueError(provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"N{s[0]}-K{s[1]}")
def test_vq_nearest(benchmark, size, provider):
    n, k = size
    gen = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(n, D, generator=gen, dtype=DTYPE), torch.randn(k, D, generator=gen, dtype=DTYPE)
    search = make_search(provider, z, codebook)
    benchmark.group = f"vq_nearest N={n} K={k} D={D}"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "vq_nearest", "provider": provider, "shape": [n, k, D],
        "dtype": str(DTYPE).removeprefix("torch."), "flops": 2 * n * k * D,
        "nxk_float32_bytes": n * k * 4, "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    benchmark_after_warm_up(benchmark, provider, search)
    benchmark.extra_info["peak_extra_bytes"] = peak_memory_increase(search)
