"""Gram-matrix benchmarks: provider x shape x pass, float32 on CPU.

Run (one JSON per allocator setting, read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_gram.py -q --benchmark-json=OUT.json

Providers:
    fastgen    ``fastgen.ops.gram_matrix`` (the C++ kernel on CPU: lower triangle only, mirrored)
    bmm        ``torch.bmm(F, F.transpose(1, 2))``, what style-transfer code usually writes
    compile    ``torch.compile`` of that bmm, fullgraph; compiled before timing, ``compile_s`` in extra_info

Shapes are [B, C, N]: 8 VGG conv3 maps of 64x64 (the headline), one conv4 map of a 32x32 image
(the single-image case: fewer samples than threads), and 4 conv1 maps of 128x128 (few channels, long N).
"""
from __future__ import annotations

import os

import pytest
import torch

import fastgen.ops
from fastgen.testing import benchmark_after_warm_up

DTYPE = torch.float32
SHAPES = [(8, 256, 64 * 64), (1, 512, 32 * 32), (4, 64, 128 * 128)]
PASSES = ["fwd", "fwd+bwd"]
PROVIDERS = ["bmm", "compile", "fastgen"]


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _bmm_gram(features: torch.Tensor) -> torch.Tensor:
    return torch.bmm(features, features.transpose(1, 2))


def make_provider(provider: str):
    if provider == "fastgen":
        return fastgen.ops.gram_matrix
    if provider == "bmm":
        return _bmm_gram
    # A clean slate, so compile_s is a full compile; dynamic=False specializes each shape as a user would.
    torch._dynamo.reset()
    return torch.compile(_bmm_gram, fullgraph=True, dynamic=False)


def flops(shape: tuple[int, ...], pass_: str) -> int:
    """Multiply-adds x 2 of the general products: the forward F F^T is 2 B C^2 N (a symmetric kernel
    does about half of it); the backward (dG + dG^T) F another 2 B C^2 N."""
    b, c, n = shape
    return 2 * b * c * c * n * (1 if pass_ == "fwd" else 2)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("pass_", PASSES)
def test_gram(benchmark, pass_, shape, provider):
    fn = make_provider(provider)
    backward = pass_ == "fwd+bwd"
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(shape, generator=gen, dtype=DTYPE).requires_grad_(backward)
    grad_out = torch.randn(shape[0], shape[1], shape[1], generator=gen, dtype=DTYPE)

    def step():
        out = fn(features)
        # autograd.grad returns the gradient instead of accumulating it into .grad
        return torch.autograd.grad(out, features, grad_out) if backward else out

    benchmark.group = f"gram_matrix {pass_} {shape_id(shape)}"
    benchmark.extra_info.update({
        "suite": "gram", "op": "gram_matrix", "provider": provider, "shape": list(shape),
        "dtype": str(DTYPE).removeprefix("torch."), "pass": pass_, "flops": flops(shape, pass_),
        "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    with torch.set_grad_enabled(backward):
        benchmark_after_warm_up(benchmark, provider, step)
