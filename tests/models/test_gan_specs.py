"""``fastgen train sngan`` and ``fastgen train wgan_gp``: the registered specs build one-channel 32x32
models, load the digits upsampled to 32x32 in [-1, 1], take a step that updates both networks, and
draw a grid in [0, 1]. The file (default-width models, one step at batch 8): 4 to 8.5 s on 2 shared
cores at load average 2 (7.5 s at load 5)."""
from __future__ import annotations

import math

import pytest
import torch

from fastgen.models import sngan, wgan_gp  # noqa: F401  (importing them registers the specs)
from fastgen.models.training import get_spec


@pytest.mark.parametrize("name, loss_keys", [
    ("sngan", {"d_loss", "g_loss"}),
    ("wgan_gp", {"critic_loss", "wasserstein", "gradient_penalty", "g_loss"}),
])
def test_spec_builds_and_takes_one_step(name, loss_keys):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build()
    images, labels = spec.data(0)
    assert images.shape == (1797, 1, 32, 32) and images.min() == -1 and images.max() == 1
    # nearest upsampling: every 4x4 block is one digit pixel
    assert torch.equal(images[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3), images)
    before = {key: p.detach().clone() for key, p in model.named_parameters()}
    losses = spec.step(model, spec.optimizers(model), (images[:8], labels[:8]), 0)
    assert losses.keys() == loss_keys and all(math.isfinite(v) for v in losses.values())
    for part in ("generator", "discriminator"):
        assert any(not torch.equal(p, before[key]) for key, p in model.named_parameters()
                   if key.startswith(part)), f"{part} did not change"
    model.eval()
    with torch.no_grad():
        grid = spec.grid(model, (images[:8], labels[:8]))
    assert grid.shape == (64, 1, 32, 32) and 0 <= grid.min() and grid.max() <= 1
