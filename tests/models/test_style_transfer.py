"""Neural style transfer: VGG16 layout and weight loading, the losses, and the optimization.

Measured (random VGG weights, the bundled photos at 32x32, Adam lr 0.02): the total loss falls by
3.15x, 4.25x, 3.40x, 3.46x in 8 steps for seeds 0-3 (13.5 -> 4.31 for seed 0); the test asks for
1.5x on seeds 0 and 1, a 2x margin.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models import style_transfer as st
from fastgen.models.training import get_spec

# torchvision.models.vgg16().features: (index, out channels, in channels) of each 3x3 convolution.
TORCHVISION_CONVS = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
                     (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512),
                     (26, 512, 512), (28, 512, 512)]
TORCHVISION_POOLS = [4, 9, 16, 23, 30]


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch hub's cache ($TORCH_HOME/hub) in an empty temporary directory for the test. Not
    torch.hub.set_dir: it pins the directory for the rest of the process, TORCH_HOME included."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def test_vgg16_layout_and_keys_match_torchvision():
    features = st.vgg16_features()
    expected = {}
    for index, out_channels, in_channels in TORCHVISION_CONVS:
        expected[f"{index}.weight"] = (out_channels, in_channels, 3, 3)
        expected[f"{index}.bias"] = (out_channels,)
    assert {k: tuple(v.shape) for k, v in features.state_dict().items()} == expected
    assert len(features) == 31
    conv_indices = {index for index, _, _ in TORCHVISION_CONVS}
    for index, layer in enumerate(features):
        kind = nn.Conv2d if index in conv_indices else nn.MaxPool2d if index in TORCHVISION_POOLS else nn.ReLU
        assert isinstance(layer, kind), (index, layer)
    convs = [layer for layer in features if isinstance(layer, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_torchvision_checkpoint_loads_from_a_path_and_from_the_hub_cache(hub_dir):
    torch.manual_seed(0)
    source = st.vgg16_features()
    # torchvision's file holds the whole network: features.* and classifier.* keys.
    checkpoint = {f"features.{k}": v for k, v in source.state_dict().items()}
    checkpoint["classifier.0.weight"] = torch.zeros(2, 2)
    (hub_dir / "checkpoints").mkdir()
    path = hub_dir / "checkpoints" / st.VGG16_FILE
    torch.save(checkpoint, path)
    assert st.default_vgg16_path() == path
    for weights in (path, "imagenet"):
        loaded = st.load_vgg16_features(weights)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_weights_say_where_to_put_the_file(hub_dir):
    expected_path = str(hub_dir / "checkpoints" / st.VGG16_FILE)
    with pytest.raises(FileNotFoundError) as error:
        st.StyleFeatures()
    assert expected_path in str(error.value) and "weights=None" in str(error.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        st.load_vgg16_features(hub_dir / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match=st.VGG16_FILE):  # the registered spec needs the weights too
        get_spec("style_transfer").build()


def test_a_checkpoint_of_another_network_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="weights: .*not a torchvision VGG16 checkpoint"):
        st.load_vgg16_features(path)


def test_extractor_returns_the_loss_layers():
    torch.manual_seed(0)
    extractor = st.StyleFeatures(weights=None)
    maps = extractor(torch.rand(1, 3, 32, 32))
    assert {name: tuple(m.shape) for name, m in maps.items()} == {
        "relu1_1": (1, 64, 32, 32), "relu2_1": (1, 128, 16, 16), "relu3_1": (1, 256, 8, 8),
        "relu4_1": (1, 512, 4, 4), "relu4_2": (1, 512, 4, 4), "relu5_1": (1, 512, 2, 2)}
    assert all((m >= 0).all() for m in maps.values())  # ReLU outputs, not overwritten in place
    assert len(extractor.features) == 26 and not any(p.requires_grad for p in extractor.parameters())
    with pytest.raises(ValueError, match="images must be"):
        extractor(torch.rand(1, 1, 32, 32))


def test_style_loss_equals_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    shapes = {"relu1_1": (1, 3, 4, 5), "relu2_1": (1, 4, 2, 3), "relu3_1": (1, 2, 3, 3),
              "relu4_1": (1, 5, 2, 2), "relu5_1": (1, 3, 1, 2)}
    features = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in shapes.items()}
    targets = {n: torch.randn(1, s[1], s[1], generator=gen, dtype=torch.float64) for n, s in shapes.items()}
    expected = 0.0
    for name, (_, c, h, w) in shapes.items():
        rows = features[name][0].reshape(c, h * w).tolist()
        for i in range(c):
            for j in range(c):
                g = sum(a * b for a, b in zip(rows[i], rows[j])) / (c * h * w)
                expected += (g - targets[name][0, i, j].item()) ** 2 / (c * c)
    assert st.style_loss(features, targets).item() == pytest.approx(expected, rel=1e-12)
    content = {"relu4_2": features["relu4_1"]}
    assert st.content_loss(content, {"relu4_2": torch.zeros(1, 5, 2, 2, dtype=torch.float64)}).item() == \
        pytest.approx(features["relu4_1"].square().mean().item(), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_transfer_reduces_the_loss_with_random_weights(seed):
    content, style = st.default_images(32)
    torch.manual_seed(seed)
    image, history = st.transfer(content, style, steps=8, weights=None)
    assert history[-1]["loss"] < history[0]["loss"] / 1.5, [h["loss"] for h in history]
    assert image.shape == content.shape and 0 <= image.min() and image.max() <= 1
    assert not torch.equal(image, content)


def test_transfer_rejects_bad_arguments():
    content, style = st.default_images(16)
    with pytest.raises(ValueError, match="steps"):
        st.transfer(content, style, steps=0, weights=None)
    with pytest.raises(ValueError, match="content must be one RGB image"):
        st.transfer(content[:, :1], style, steps=1, weights=None)


def test_default_images_are_the_two_bundled_photos():
    content, style = st.default_images(24)
    assert content.shape == style.shape == (1, 3, 24, 24)
    assert 0 <= content.min() and content.max() <= 1 and 0 <= style.min() and style.max() <= 1
    assert (content - style).abs().mean() > 0.1


def test_registered_spec_steps_and_draws_the_grid():
    spec = get_spec("style_transfer")
    images, labels = spec.data(0)
    assert images.shape == (2, 3, st.IMAGE_SIZE, st.IMAGE_SIZE) and labels.tolist() == [0, 1]
    torch.manual_seed(0)
    content, style = F.avg_pool2d(images, 2).split(1)  # the spec's images at 32x32: a quicker step
    model = st.StyleTransfer(content, style, st.StyleFeatures(weights=None))
    optimizers = spec.optimizers(model)
    first = spec.step(model, optimizers, (images, labels), 0)
    second = spec.step(model, optimizers, (images, labels), 1)
    assert set(first) == {"loss", "content", "style"} and second["loss"] < first["loss"]
    grid = spec.grid(model, (images, labels))
    assert grid.shape == (3, 3, 32, 32) and 0 <= grid.min() and grid.max() <= 1
    assert torch.equal(grid[0], content[0]) and torch.equal(grid[1], style[0])
