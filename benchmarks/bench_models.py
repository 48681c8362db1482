"""One training step (forward + backward + optimizer step) of fastgen's reference models.

Run:

    PYTHONPATH=. python -m pytest benchmarks/bench_models.py -q --benchmark-json=OUT.json

float32 on CPU, one benchmark group per model with both providers side by side. Each timed call is one
step of the model's ``fastgen train`` spec (its model, optimizers and data), batch 64 unless stated:
    vqvae    the default VQVAE (hidden 32, 32 EMA codes of dimension 16), 8x8 digits in [-1, 1], Adam 2e-3
    glow     8x8, 2 scales of 8 flow steps, hidden 64, 8x8 digits in [0, 1], Adam 1e-3
    stylegan batch 32, 32x32, one channel, 8 AdaIN layers, digits upsampled to 32x32 in [-1, 1]: one D
             update with the R1 penalty (a double backward through D), one G update through the fused
             AdaIN; style mixing draws its crossover at random, so rounds vary slightly in cost
    sngan    32x32, one channel, base 32, spectral norm on every D layer, digits upsampled to 32x32 in
             [-1, 1]
Providers:
    fastgen  fastgen's ops pick their backend as usual (``FASTGEN_BACKEND`` unset: the C++ kernels here)
    ref      ``FASTGEN_BACKEND=ref``: every fastgen op runs its plain-torch reference
Glow uses no fastgen op, so its two rows time the same code: their difference is the noise floor
that the VQ-VAE's difference should be read against.
The model is built (and Glow's ActNorm initialized) outside the timing; each timed call is one step on
the same batch, so the model keeps training across rounds, as it would in a run.
"""
from __future__ import annotations

import os

import pytest
import torch

import fastgen.models  # noqa: F401  (registers every model's spec)
from fastgen.models.training import get_spec
from fastgen.testing import benchmark_after_warm_up

SUITE = "models"
BATCHES = {"vqvae": 64, "glow": 64, "stylegan": 32, "sngan": 64}
PROVIDERS = ["fastgen", "ref"]


def make_step(model_name: str):
    """A fresh model of the ``fastgen train`` spec and a no-argument function doing one of its training
    steps (the spec's own optimizers, data range and size) on a fixed batch."""
    spec = get_spec(model_name)
    torch.manual_seed(0)
    model = spec.build()
    optimizers = spec.optimizers(model)
    images, labels = spec.data(0)
    batch = (images[:BATCHES[model_name]], labels[:BATCHES[model_name]])
    return lambda: spec.step(model, optimizers, batch, 0)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("model_name", ["vqvae", "glow", "stylegan", "sngan"])
def test_train_step(benchmark, monkeypatch, model_name, provider):
    if provider == "ref":
        monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    else:
        monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    step = make_step(model_name)
    benchmark.group = f"train_step {model_name} batch={BATCHES[model_name]}"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "train_step", "model": model_name, "provider": provider, "batch": BATCHES[model_name],
        "dtype": "float32", "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    benchmark_after_warm_up(benchmark, provider, step)
