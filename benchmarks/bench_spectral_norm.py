"""Spectral-norm benchmarks: one training step's spectral norm per layer, and a SN-GAN discriminator step.

Run (one JSON per allocator setting, read by ``benchmarks/report.py`` together with the AdaIN suite's):

    PYTHONPATH=. python -m pytest benchmarks/bench_spectral_norm.py -q --benchmark-json=OUT.json
    THP_MEM_ALLOC_ENABLE=1 PYTHONPATH=. python -m pytest benchmarks/bench_spectral_norm.py -q --benchmark-json=OUT2.json

All float32 on CPU, train mode (the weight is a Parameter, so autograd records what needs it),
one power iteration, u and v carried over from round to round as training does.

``spectral_norm_step`` groups, one per weight matrix [M, N] = [out, in * kernel]: 512x4608
(Conv2d(512, 512, 3)), 1024x1024 (Linear(1024, 1024)), 64x1024 (Conv2d(64, 64, 4)). Providers:
    fastgen         the op fastgen's spectral-norm layer runs per training step:
                    ``fastgen.ops.spectral_norm_step(W.flatten(1), u, v)`` -> sigma and the new u, v.
                    The layer divides its output by sigma (conv(x, W) / sigma + b), so no W / sigma here.
    fastgen-op-cpu  the same op forced to the C++ kernel (``impl="cpu"``; ``fastgen`` is ``impl="auto"``)
    fastgen-sigma   what the layer's forward calls per training step when it divides its output:
                    the spectral-norm parametrization's ``sigma(W)`` of a layer wrapped by
                    ``fastgen.nn.spectral_norm``: on the CPU in eager mode one C++ op with its autograd
                    in C++ (power iteration, buffer update, clamp), the op path elsewhere
    torch           ``torch.nn.utils.parametrizations.spectral_norm`` on the real layer: reading
                    ``layer.weight`` in train mode, which runs the power iteration and returns W / sigma,
                    as the layer's forward does every step
    compile         ``torch.compile`` of the same step written by hand (u = normalize(W v),
                    v = normalize(W^T u), sigma = u . (W v), W / sigma); compiled before timing,
                    ``compile_s`` and ``compile_cache_hits`` in extra_info
    fastgen-weight  ``layer.weight`` of a layer wrapped by ``fastgen.nn.spectral_norm``: W / sigma
                    materialized, as torch's parametrization returns it and as the layer's forward
                    uses it when its output is larger than its weight (one C++ op on the CPU)
The two layer providers are skipped while fastgen.nn.spectral_norm is missing.
``bytes_moved`` is the floor of what the provider computes, in bytes: reading W once for the power
iteration (fastgen's kernel does all of it in one pass) plus u, v in and out; the providers that
return W / sigma need a second read of W and a write of W / sigma (sigma needs all of W first).
W is at most 9.4 MB here and fits in the last-level cache, so ``x floor`` (measured against a
256 MiB copy) can drop below 1.

``sn_layer_forward`` groups: the training-mode forward (with autograd recording) of one spectrally
normalized layer, ``torch`` (torch's parametrization) against ``fastgen`` (``fastgen.nn.spectral_norm``),
per layer type: Conv2d(64, 64, 3) on 16x64x16x16, ConvTranspose2d(64, 64, 4, stride 2) on 16x64x8x8
(dim=1), Linear(1024, 1024) on 64x1024, Embedding(10000, 256) on 64x32 indices.

``sngan_d_step`` group: one discriminator step of ``fastgen.models.sngan.Discriminator()`` (its default
widths) at batch 64, 3x32x32: forward on a real batch and on a fake batch (two forwards, as
``sngan.train_step`` does, so the power iteration runs twice), ``sngan.d_hinge_loss`` and its backward
to every parameter. No optimizer step: it costs the same with and without spectral norm,
and leaving the weights fixed keeps every round the same work. Real and fake batches are random
values in [-1, 1] (D's cost does not depend on them; the fake batch would come from G, detached).
Providers: ``none`` (``use_spectral_norm=False``), ``torch`` and ``fastgen`` (``spectral_norm=`` torch's
parametrization or ``fastgen.nn.spectral_norm``). The spectral-norm overhead is a small part of a
~0.15 s step on a noisy 2-core machine, so the SN providers time a no-SN step untimed by pytest-benchmark
just before each of their rounds (``baseline_s`` in extra_info): the report takes the overhead as the
median of the paired differences, which other processes' load skews far less than a difference of
medians taken minutes apart. FASTGEN_BENCH_SNGAN_ROUNDS sets the rounds (default 60: the overhead is a few ms of a ~140 ms step).
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgen.ops
from fastgen.models import sngan
from fastgen.nn import spectral_norm as fastgen_spectral_norm
from fastgen.testing import benchmark_after_warm_up

SUITE = "spectral_norm"
EPS = 1e-12
DTYPE = torch.float32
N_POWER_ITERATIONS = 1
# Weight matrix [out, in * kernel] -> a layer whose weight flattens to it.
LAYERS = {
    (512, 4608): lambda: nn.Conv2d(512, 512, 3, padding=1),
    (1024, 1024): lambda: nn.Linear(1024, 1024),
    (64, 1024): lambda: nn.Conv2d(64, 64, 4, stride=2, padding=1),
}
STEP_PROVIDERS = ["torch", "compile", "fastgen", "fastgen-op-cpu", "fastgen-sigma", "fastgen-weight"]
SNGAN_PROVIDERS = ["none", "torch", "fastgen"]
SNGAN_BATCH = (64, 3, 32, 32)
SNGAN_ROUNDS = int(os.environ.get("FASTGEN_BENCH_SNGAN_ROUNDS", "60"))


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def step_bytes_moved(provider: str, shape: tuple[int, int], itemsize: int) -> int:
    """Read W once, read u and v, write u and v; W / sigma adds a second read of W and a write."""
    m, n = shape
    weight_passes = 1 if provider in ("fastgen", "fastgen-op-cpu", "fastgen-sigma") else 3
    return (weight_passes * m * n + 2 * (m + n)) * itemsize


def unit_vectors(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return tuple(F.normalize(torch.randn(k, generator=gen, dtype=DTYPE), dim=0, eps=EPS) for k in shape)


def compiled_step_ref(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
    """torch's parametrization written out: power iteration without gradient, sigma = u . (W v), W / sigma."""
    weight_mat = weight.flatten(1)
    with torch.no_grad():
        u = F.normalize(torch.mv(weight_mat, v), dim=0, eps=EPS)
        v = F.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=EPS)
    sigma = torch.dot(u, torch.mv(weight_mat, v))
    return weight / sigma, u, v


def make_step(provider: str, shape: tuple[int, int]):
    """A no-argument function running ``provider``'s step; u, v advance on every call."""
    torch.manual_seed(0)
    layer = LAYERS[shape]().to(DTYPE).train()
    if provider == "torch":
        layer = torch.nn.utils.parametrizations.spectral_norm(layer, n_power_iterations=N_POWER_ITERATIONS, eps=EPS)
        return lambda: layer.weight
    if provider in ("fastgen-weight", "fastgen-sigma"):
        layer = fastgen_spectral_norm(layer, n_power_iterations=N_POWER_ITERATIONS, eps=EPS).train()
        if provider == "fastgen-weight":
            return lambda: layer.weight
        parametrization, weight = layer.parametrizations.weight[0], layer.parametrizations.weight.original
        return lambda: parametrization.sigma(weight)
    weight = layer.weight
    state = list(unit_vectors(shape))  # rebound each call, as the layer keeps the newest u, v
    if provider == "compile":
        # A clean slate, so compile_s is a full compile; dynamic=False specializes each shape as a user would.
        torch._dynamo.reset()
        compiled = torch.compile(compiled_step_ref, fullgraph=True, dynamic=False)

        def compile_step():
            weight_sn, state[0], state[1] = compiled(weight, *state)
            return weight_sn
        return compile_step
    impl = "cpu" if provider == "fastgen-op-cpu" else "auto"

    def fastgen_step():
        sigma, state[0], state[1] = fastgen.ops.spectral_norm_step(
            weight.flatten(1), *state, N_POWER_ITERATIONS, EPS, impl=impl)
        return sigma
    return fastgen_step


def common_info(op: str, provider: str, shape: tuple[int, ...]) -> dict:
    return {"suite": SUITE, "op": op, "provider": provider, "shape": list(shape),
            "dtype": str(DTYPE).removeprefix("torch."), "n_power_iterations": N_POWER_ITERATIONS,
            "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")}


@pytest.mark.parametrize("provider", STEP_PROVIDERS)
@pytest.mark.parametrize("shape", list(LAYERS), ids=shape_id)
def test_spectral_norm_step(benchmark, shape, provider):
    step = make_step(provider, shape)
    benchmark.group = f"spectral_norm_step {shape_id(shape)}"
    benchmark.extra_info.update({
        **common_info("spectral_norm_step", provider, shape), "layer": repr(LAYERS[shape]()),
        "bytes_moved": step_bytes_moved(provider, shape, DTYPE.itemsize)})
    benchmark_after_warm_up(benchmark, provider, step)


# name -> (layer, input): the layer types fastgen.nn.spectral_norm gives its own forward.
SN_LAYERS = {
    "conv2d": (lambda: nn.Conv2d(64, 64, 3, padding=1), lambda: torch.randn(16, 64, 16, 16)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), lambda: torch.randn(16, 64, 8, 8)),
    "linear": (lambda: nn.Linear(1024, 1024), lambda: torch.randn(64, 1024)),
    "embedding": (lambda: nn.Embedding(10000, 256), lambda: torch.randint(0, 10000, (64, 32))),
}


@pytest.mark.parametrize("provider", ["torch", "fastgen"])
@pytest.mark.parametrize("layer_name", list(SN_LAYERS))
def test_sn_layer_forward(benchmark, layer_name, provider):
    make_layer, make_input = SN_LAYERS[layer_name]
    torch.manual_seed(0)
    spectral_norm = fastgen_spectral_norm if provider == "fastgen" else torch.nn.utils.parametrizations.spectral_norm
    layer, x = spectral_norm(make_layer().to(DTYPE)).train(), make_input()
    benchmark.group = f"sn_layer_forward {layer_name}"
    benchmark.extra_info.update({**common_info("sn_layer_forward", provider, tuple(x.shape)), "layer": layer_name})
    benchmark_after_warm_up(benchmark, provider, lambda: layer(x))


def make_discriminator_step(provider: str):
    """A no-argument D step (two forwards, hinge loss, backward; no optimizer step) for ``provider``."""
    spectral_norm = (fastgen_spectral_norm if provider == "fastgen"
                     else torch.nn.utils.parametrizations.spectral_norm if provider == "torch" else None)
    torch.manual_seed(0)  # the same weights for every provider
    disc = sngan.Discriminator(use_spectral_norm=spectral_norm is not None, spectral_norm=spectral_norm)
    disc = disc.to(DTYPE).train()
    params = [p for p in disc.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(2)
    real, fake = (torch.rand(SNGAN_BATCH, generator=gen, dtype=DTYPE) * 2 - 1 for _ in range(2))

    def d_step():
        loss = sngan.d_hinge_loss(disc(real), disc(fake))
        # autograd.grad returns the gradients instead of accumulating them into .grad
        return torch.autograd.grad(loss, params)
    return d_step


@pytest.mark.parametrize("provider", SNGAN_PROVIDERS)
def test_sngan_d_step(benchmark, provider):
    step = make_discriminator_step(provider)
    benchmark.group = f"sngan_d_step {shape_id(SNGAN_BATCH)}"
    benchmark.extra_info.update({**common_info("sngan_d_step", provider, SNGAN_BATCH), "optimizer_step": False})
    step()  # warm-up: first-call allocations, oneDNN primitive creation
    if provider == "none":
        benchmark.pedantic(step, rounds=SNGAN_ROUNDS, iterations=1, warmup_rounds=0)
        return
    baseline, baseline_s = make_discriminator_step("none"), []
    baseline()

    def paired_baseline():  # untimed by pytest-benchmark: the no-SN step just before each timed round
        start = time.perf_counter()
        baseline()
        baseline_s.append(time.perf_counter() - start)
    benchmark.extra_info["baseline_s"] = baseline_s
    benchmark.pedantic(step, setup=paired_baseline, rounds=SNGAN_ROUNDS, iterations=1, warmup_rounds=0)
