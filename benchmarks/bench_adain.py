"""AdaIN benchmarks: provider x shape x pass x op, float32 on CPU.

Run (one JSON per allocator setting, read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_adain.py -q --benchmark-json=OUT.json
    THP_MEM_ALLOC_ENABLE=1 PYTHONPATH=. python -m pytest benchmarks/bench_adain.py -q --benchmark-json=OUT2.json

Providers:
    fastgen-cpu    the ``fastgen::`` op forced to the C++ kernel (skipped while fastgen._C is not built);
                   its outputs come from fastgen's CPU output cache (csrc/cpu/output_cache.h)
    fastgen-cpu-nocache  the same with that cache turned off: every output is a fresh allocation,
                   as for the other providers, so the page-fault cost shows
    eager          the plain-torch reference called directly
    instance_norm  ``F.instance_norm`` then scale and shift, the usual hand-written AdaIN
    compile        ``torch.compile(reference, fullgraph=True)``; compiled before timing; ``compile_s`` and
                   ``compile_cache_hits`` (Inductor graphs loaded from its on-disk cache) in extra_info
"""
from __future__ import annotations

import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fastgen.ops
from fastgen.ops.adain.reference import adain_from_style_ref, adain_ref
from fastgen.testing import benchmark_after_warm_up

EPS = 1e-5
DTYPE = torch.float32
SHAPES = [(16, 512, 32, 32), (8, 256, 64, 64), (64, 128, 8, 8)]
PASSES = ["fwd", "fwd+bwd"]
OPS = ["adain_from_style", "adain"]
PROVIDERS = ["eager", "instance_norm", "compile", "fastgen-cpu", "fastgen-cpu-nocache"]
REFERENCES = {"adain_from_style": adain_from_style_ref, "adain": adain_ref}
DEFAULT_CACHE_MB = int(os.environ.get("FASTGEN_CPU_CACHE_MB", "1024"))


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def bytes_moved(op: str, pass_: str, shape: tuple[int, ...], itemsize: int) -> int:
    """The bandwidth floor: bytes a kernel that touches every tensor once must move.

    With n = N*C*H*W elements per feature map (style has the content's shape) and
    k = N*C elements per statistics vector:

    fwd  adain_from_style  read content, style; write out                          3n
         adain             read content, style_mean, style_std; write out          2n + 2k
    bwd  adain_from_style  read grad_out, content, style;
                           write grad_content, grad_style                          5n
         adain             read grad_out, content, style_std;
                           write grad_content, grad_mean, grad_std                 3n + 3k

    fwd+bwd is fwd + bwd: the backward reads its inputs again, as a fused kernel must.
    """
    n, k = math.prod(shape), shape[0] * shape[1]
    fwd = {"adain_from_style": 3 * n, "adain": 2 * n + 2 * k}[op]
    bwd = {"adain_from_style": 5 * n, "adain": 3 * n + 3 * k}[op]
    return (fwd if pass_ == "fwd" else fwd + bwd) * itemsize


def _instance_norm_adain(content, style_mean, style_std, eps):
    return F.instance_norm(content, eps=eps) * style_std[..., None, None] + style_mean[..., None, None]


def _instance_norm_from_style(content, style, eps):
    var, mean = torch.var_mean(style, dim=(2, 3), correction=0)
    return _instance_norm_adain(content, mean, (var + eps).sqrt(), eps)


def make_provider(provider: str, op: str):
    reference = REFERENCES[op]
    if provider.startswith("fastgen-cpu"):
        return functools.partial(getattr(fastgen.ops, op), impl="cpu")
    if provider == "eager":
        return reference
    if provider == "instance_norm":
        return _instance_norm_from_style if op == "adain_from_style" else _instance_norm_adain
    # A clean slate, so compile_s is a full compile and earlier shapes don't count
    # against the recompile limit; dynamic=False specializes each shape as a user would.
    torch._dynamo.reset()
    return torch.compile(reference, fullgraph=True, dynamic=False)


def make_inputs(op: str, shape: tuple[int, ...], requires_grad: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    content = torch.randn(shape, generator=gen, dtype=DTYPE)
    if op == "adain_from_style":
        tensors = [content, torch.randn(shape, generator=gen, dtype=DTYPE) * 2 + 0.5]
    else:
        stats = torch.randn(2, *shape[:2], generator=gen, dtype=DTYPE)
        tensors = [content, stats[0], stats[1].abs() + 0.5]
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.fixture
def output_cache(provider):
    """Turns fastgen's CPU output cache off for the nocache provider, and back on after."""
    if provider == "fastgen-cpu-nocache":
        fastgen.ops.cpu_cache_set_limit(0)
    yield
    fastgen.ops.cpu_cache_set_limit(DEFAULT_CACHE_MB)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.usefixtures("output_cache")
def test_adain(benchmark, op, pass_, shape, provider):
    fn = make_provider(provider, op)
    backward = pass_ == "fwd+bwd"
    inputs = make_inputs(op, shape, requires_grad=backward)
    grad_out = torch.randn(shape, dtype=DTYPE)

    def step():
        out = fn(*inputs, EPS)
        # autograd.grad returns the gradients instead of accumulating them into .grad
        return torch.autograd.grad(out, inputs, grad_out) if backward else out

    benchmark.group = f"{op} {pass_} {shape_id(shape)}"
    benchmark.extra_info.update({
        "op": op, "provider": provider, "shape": list(shape), "dtype": str(DTYPE).removeprefix("torch."),
        "pass": pass_, "bytes_moved": bytes_moved(op, pass_, shape, DTYPE.itemsize),
        "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    with torch.set_grad_enabled(backward):
        benchmark_after_warm_up(benchmark, provider, step)
