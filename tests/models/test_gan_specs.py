"""The GANs' ``fastgen train`` specs (sngan, wgan_gp, progan, msggan, stylegan): each builds its
one-channel model, loads the digits upsampled (pixel repetition) to its resolution in [-1, 1], takes a
step that updates both networks, and draws a grid in [0, 1]. The file (default-width models, one step
at batch 8): 4 to 8.5 s on 2 shared cores at load average 2 (7.5 s at load 5) for the first two."""
from __future__ import annotations

import math

import pytest
import torch

from fastgen.models import msggan, progan, sngan, stylegan, wgan_gp  # noqa: F401  (importing registers the specs)
from fastgen.models.training import get_spec


@pytest.mark.parametrize("name, size, loss_keys", [
    ("sngan", 32, {"d_loss", "g_loss"}),
    ("wgan_gp", 32, {"critic_loss", "wasserstein", "gradient_penalty", "g_loss"}),
    ("progan", 16, {"d_loss", "g_loss", "wasserstein", "gradient_penalty", "stage", "alpha"}),
    ("msggan", 16, {"d_loss", "g_loss"}),
    ("stylegan", 32, {"d_loss", "g_loss", "r1"}),
])
def test_spec_builds_and_takes_one_step(name, size, loss_keys):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build()
    images, labels = spec.data(0)
    assert images.shape == (1797, 1, size, size) and images.min() == -1 and images.max() == 1
    # nearest upsampling: every block is one digit pixel
    block = size // 8
    assert torch.equal(images[:, :, ::block, ::block].repeat_interleave(block, 2).repeat_interleave(block, 3), images)
    before = {key: p.detach().clone() for key, p in model.named_parameters()}
    losses = spec.step(model, spec.optimizers(model), (images[:8], labels[:8]), 0)
    assert losses.keys() == loss_keys and all(math.isfinite(v) for v in losses.values())
    for part in ("generator", "discriminator"):
        assert any(not torch.equal(p, before[key]) for key, p in model.named_parameters()
                   if key.startswith(part)), f"{part} did not change"
    model.eval()
    with torch.no_grad():
        grid = spec.grid(model, (images[:8], labels[:8]))
    assert grid.shape == (64, 1, size, size) and 0 <= grid.min() and grid.max() <= 1
