"""The VQ-VAE on scikit-learn's bundled 8x8 digits (no download): shapes, and that training works.

Measured on 2 CPU cores, one thread (300 steps of 64, seeds 0-5, both codebook kinds): the
reconstruction MSE over all 1797 digits falls from 0.68-0.78 untrained to 0.031-0.051 (4.5-7%),
every code is used on the whole set, training batches use 95-100% of the codes (mean of the last
20 steps), and a run takes ~1.7 s. The bounds below leave a 2x margin on the loss ratio.
"""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from fastgen.models import VQVAE, digits_to_images
from fastgen.models.vqvae import train_step

STEPS, BATCH, CODES = 300, 64, 32
MAX_LOSS_RATIO = 0.15  # final / untrained reconstruction MSE
MIN_USAGE = 0.8  # fraction of the codes used by the whole set, and by training batches


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return digits_to_images(load_digits().data)


def evaluate(model: VQVAE, images: torch.Tensor) -> tuple[float, float]:
    """Reconstruction MSE and the fraction of codes used, over all images, in eval mode."""
    model.eval()
    with torch.no_grad():
        reconstruction, vq = model(images)
    return F.mse_loss(reconstruction, images).item(), vq.usage.item()


def test_digits_are_scaled_to_images_in_minus_one_one(digits):
    assert digits.shape == (1797, 1, 8, 8) and digits.dtype == torch.float32
    assert digits.min().item() == -1.0 and digits.max().item() == 1.0
    with pytest.raises(ValueError, match="data must have shape"):
        digits_to_images(torch.zeros(3, 63))


def test_shapes_and_decoding_from_indices(digits):
    torch.manual_seed(0)
    model = VQVAE(hidden=8, codebook_size=CODES).eval()
    reconstruction, vq = model(digits[:5])
    assert reconstruction.shape == (5, 1, 8, 8)
    assert vq.indices.shape == (5, 4, 4) and vq.quantized.shape == (5, 16, 4, 4)
    torch.testing.assert_close(model.decode_indices(vq.indices), reconstruction)


@pytest.mark.parametrize("decay", [0.99, None], ids=["ema-codebook", "trained-codebook"])
def test_training_on_digits_reconstructs_them_with_most_codes_in_use(digits, decay, one_thread):
    torch.manual_seed(0)
    model = VQVAE(hidden=16, codebook_size=CODES, decay=decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    initial_loss, _ = evaluate(model, digits)
    batches = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    history = [train_step(model, optimizer, digits[torch.randint(len(digits), (BATCH,), generator=batches)])
               for _ in range(STEPS)]
    elapsed = time.perf_counter() - start
    final_loss, usage = evaluate(model, digits)
    recent_batch_usage = sum(h["usage"] for h in history[-20:]) / 20
    report = (f"reconstruction MSE {initial_loss:.4f} -> {final_loss:.4f}, usage {usage:.3f} (batches "
              f"{recent_batch_usage:.3f}), {elapsed:.1f} s")
    assert final_loss < MAX_LOSS_RATIO * initial_loss, report
    assert usage >= MIN_USAGE and recent_batch_usage >= MIN_USAGE, report
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()), report


def test_training_steps_match_between_the_fast_backends_and_the_reference(digits, monkeypatch):
    """The quantizer's ops (vq_nearest, vq_cluster_stats) are the VQ-VAE's (and its prior's) hot path:
    ten steps under FASTGEN_BACKEND=ref end with the weights the C++ kernels give."""
    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = VQVAE(hidden=8, codebook_size=CODES)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        for step in range(10):
            train_step(model, optimizer, digits[64 * step:64 * (step + 1)])
        return model.state_dict()

    monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    fast = run()
    monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    reference = run()
    for key, value in fast.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-5, msg=key)
