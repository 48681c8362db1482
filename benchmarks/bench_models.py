"""One training step (forward + backward + optimizer step) of fastgen's reference models.

Run:

    PYTHONPATH=. python -m pytest benchmarks/bench_models.py -q --benchmark-json=OUT.json

float32 on CPU. Models (one benchmark group each, both providers side by side), batch 64 unless stated:
    vqvae    ``fastgen.models.vqvae.train_step``: the default :class:`VQVAE` (hidden 32, 32 EMA codes of
             dimension 16) on 8x8 digits in [-1, 1], Adam 2e-3
    glow     ``fastgen.models.flows.train_step``: the ``fastgen train glow`` model (8x8, 2 scales of
             8 flow steps, hidden 64) on 8x8 digits in [0, 1], Adam 1e-3
    stylegan ``fastgen.models.stylegan.train_step``, batch 32: the ``fastgen train stylegan`` model (32x32,
             one channel, 8 AdaIN layers) on digits upsampled to 32x32 in [-1, 1]: one D update with the
             R1 penalty (a double backward through D), one G update through the fused AdaIN; style
             mixing draws its crossover at random, so rounds vary slightly in cost
    sngan    ``fastgen.models.sngan.train_step``: the ``fastgen train sngan`` model (32x32, one channel,
             base 32, spectral norm on every D layer) on digits upsampled to 32x32 in [-1, 1]
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
from sklearn.datasets import load_digits

from fastgen.models import flows, sngan, stylegan, vqvae
from fastgen.models.training import get_spec
from fastgen.testing import benchmark_after_warm_up

SUITE = "models"
BATCHES = {"vqvae": 64, "glow": 64, "stylegan": 32, "sngan": 64}
PROVIDERS = ["fastgen", "ref"]


def digits(n: int) -> torch.Tensor:
    """The first n digits as images [n, 1, 8, 8] with levels k / 16 in [0, 1]."""
    return torch.as_tensor(load_digits().data[:n], dtype=torch.float32).view(-1, 1, 8, 8) / 16


def make_step(model_name: str):
    """A fresh model and a no-argument function doing one training step on a fixed batch."""
    torch.manual_seed(0)
    images = digits(BATCHES[model_name])
    if model_name in ("stylegan", "sngan"):
        model = get_spec(model_name).build()
        optimizers = get_spec(model_name).optimizers(model)
        batch = (images * 2 - 1).repeat_interleave(4, 2).repeat_interleave(4, 3)  # nearest, to 32x32
        if model_name == "stylegan":
            return lambda: stylegan.train_step(model, optimizers["generator"], optimizers["discriminator"], batch)
        G, D = model["generator"], model["discriminator"]
        return lambda: sngan.train_step(G, D, optimizers["generator"], optimizers["discriminator"], batch, G.z_dim)
    if model_name == "vqvae":
        model = vqvae.VQVAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        batch = images * 2 - 1
        return lambda: vqvae.train_step(model, optimizer, batch)
    model = get_spec("glow").build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return lambda: flows.train_step(model, optimizer, images)


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
