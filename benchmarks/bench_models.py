"""One training step (forward + backward + optimizer step) of fastgen's reference models, batch 64.

Run:

    PYTHONPATH=. python -m pytest benchmarks/bench_models.py -q --benchmark-json=OUT.json

float32 on CPU. Models (one benchmark group each, both providers side by side):
    vqvae   ``fastgen.models.vqvae.train_step``: the default :class:`VQVAE` (hidden 32, 32 EMA codes of
            dimension 16) on 8x8 digits in [-1, 1], Adam 2e-3
    glow    ``fastgen.models.flows.train_step``: the ``fastgen train glow`` model (8x8, 2 scales of
            8 flow steps, hidden 64) on 8x8 digits in [0, 1], Adam 1e-3
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

from fastgen.models import flows, vqvae
from fastgen.models.training import get_spec
from fastgen.testing import benchmark_after_warm_up

SUITE = "models"
BATCH = 64
PROVIDERS = ["fastgen", "ref"]


def digits(n: int) -> torch.Tensor:
    """The first n digits as images [n, 1, 8, 8] with levels k / 16 in [0, 1]."""
    return torch.as_tensor(load_digits().data[:n], dtype=torch.float32).view(-1, 1, 8, 8) / 16


def make_step(model_name: str):
    """A fresh model and a no-argument function doing one training step on a fixed batch."""
    torch.manual_seed(0)
    images = digits(BATCH)
    if model_name == "vqvae":
        model = vqvae.VQVAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        batch = images * 2 - 1
        return lambda: vqvae.train_step(model, optimizer, batch)
    model = get_spec("glow").build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return lambda: flows.train_step(model, optimizer, images)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("model_name", ["vqvae", "glow"])
def test_train_step(benchmark, monkeypatch, model_name, provider):
    if provider == "ref":
        monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    else:
        monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    step = make_step(model_name)
    benchmark.group = f"train_step {model_name} batch={BATCH}"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "train_step", "model": model_name, "provider": provider, "batch": BATCH,
        "dtype": "float32", "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    benchmark_after_warm_up(benchmark, provider, step)
