"""FID Inception-v3: architecture and names against pytorch-fid's, weight loading, inputs.

The expected parameter names and shapes are written out here from the architecture description
(torchvision's Inception3 names, pytorch-fid's FID blocks), independently of the module. Random
weights throughout: nothing is downloaded. Full 299x299 forwards use 2 images; most checks run
with resize=False on 75x75 inputs, the smallest the network takes, to stay fast on 2 CPU cores.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastgen.metrics.inception import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    BasicConv2d,
    InceptionV3FID,
    default_inception_weights_path,
    load_inception_weights,
)
from fastgen.testing import assert_close

ConvSpec = tuple[str, int, int, int, int]  # name, in channels, out channels, kernel height, kernel width


def inception_a(name: str, c_in: int, pool_features: int) -> list[ConvSpec]:
    return [(f"{name}.branch1x1", c_in, 64, 1, 1), (f"{name}.branch5x5_1", c_in, 48, 1, 1),
            (f"{name}.branch5x5_2", 48, 64, 5, 5), (f"{name}.branch3x3dbl_1", c_in, 64, 1, 1),
            (f"{name}.branch3x3dbl_2", 64, 96, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", c_in, pool_features, 1, 1)]


def inception_c(name: str, c7: int) -> list[ConvSpec]:
    return [(f"{name}.branch1x1", 768, 192, 1, 1), (f"{name}.branch7x7_1", 768, c7, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", c7, 192, 7, 1),
            (f"{name}.branch7x7dbl_1", 768, c7, 1, 1), (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7), (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", c7, 192, 1, 7), (f"{name}.branch_pool", 768, 192, 1, 1)]


def inception_e(name: str, c_in: int) -> list[ConvSpec]:
    return [(f"{name}.branch1x1", c_in, 320, 1, 1), (f"{name}.branch3x3_1", c_in, 384, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", c_in, 448, 1, 1), (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{name}.branch_pool", c_in, 192, 1, 1)]


EXPECTED_CONVS: list[ConvSpec] = [
    ("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
    ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3),
    *inception_a("Mixed_5b", 192, 32), *inception_a("Mixed_5c", 256, 64), *inception_a("Mixed_5d", 288, 64),
    ("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
    ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
    *inception_c("Mixed_6b", 128), *inception_c("Mixed_6c", 160), *inception_c("Mixed_6d", 160),
    *inception_c("Mixed_6e", 192),
    ("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
    ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
    ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
    *inception_e("Mixed_7b", 1280), *inception_e("Mixed_7c", 2048),
]


def expected_state_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, c_in, c_out, kh, kw in EXPECTED_CONVS:
        shapes[f"{name}.conv.weight"] = (c_out, c_in, kh, kw)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{suffix}"] = (c_out,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"] = (1008, 2048)
    shapes["fc.bias"] = (1008,)
    return shapes


pytestmark = pytest.mark.usefixtures("one_thread_module")  # see tests/conftest.py


@pytest.fixture(scope="module")
def model(one_thread_module) -> InceptionV3FID:
    torch.manual_seed(0)
    return InceptionV3FID()


def small_images(n: int = 2, size: int = 75, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def without_resize(model: InceptionV3FID) -> InceptionV3FID:
    model.resize = False
    return model


def test_state_dict_names_and_shapes_match_pytorch_fid(model: InceptionV3FID) -> None:
    assert len(EXPECTED_CONVS) == 94
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == expected_state_shapes()
    assert len(list(model.parameters())) == 94 * 3 + 2  # conv weight, bn weight and bias; fc weight and bias
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    assert all(model.get_submodule(name).bn.eps == 0.001 for name, *_ in EXPECTED_CONVS)
    assert all(model.get_submodule(name).conv.bias is None for name, *_ in EXPECTED_CONVS)
    assert not any(name.startswith("AuxLogits") for name in actual)


def test_output_shapes_at_299(model: InceptionV3FID) -> None:
    images = small_images(size=299)
    with torch.no_grad():
        features, logits = model.features_and_logits(images)
        assert torch.equal(model(images), features)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert features.dtype == torch.float32
    assert bool((features >= 0).all())  # averaged ReLU outputs
    assert_close(logits, features @ model.fc.weight.T + model.fc.bias)


def test_block_widths_and_fid_pooling(model: InceptionV3FID) -> None:
    """Each block's output width, and the pool branches pytorch-fid patches: padding-excluding
    average pools in A, C and the first E block; a 3x3 max-pool in the last E block."""
    generator = torch.Generator().manual_seed(2)
    cases = [("Mixed_5b", 192, 256, 32, "avg"), ("Mixed_6b", 768, 768, 192, "avg"),
             ("Mixed_7b", 1280, 2048, 192, "avg"), ("Mixed_7c", 2048, 2048, 192, "max")]
    for name, c_in, c_out, pool_width, pool in cases:
        block = model.get_submodule(name)
        x = torch.rand(1, c_in, 5, 5, generator=generator)
        if pool == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            counting_padding = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        else:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
            counting_padding = None
        with torch.no_grad():
            out = block(x)
            assert out.shape == (1, c_out, 5, 5), name
            assert_close(out[:, -pool_width:], block.branch_pool(pooled), msg=name)
            if counting_padding is not None:
                assert not torch.allclose(out[:, -pool_width:], counting_padding), name
    with torch.no_grad():
        assert model.Mixed_6a(torch.rand(1, 288, 7, 7)).shape == (1, 768, 3, 3)
        assert model.Mixed_7a(torch.rand(1, 768, 7, 7)).shape == (1, 1280, 3, 3)


def test_resize_and_normalization_match_pytorch_fid_preprocessing(model: InceptionV3FID) -> None:
    images = small_images(size=64)
    resized = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    try:
        with torch.no_grad():
            expected = model(images)
            without_resize(model)
            assert_close(model(resized), expected)
            model.normalize_input = False
            assert_close(model(2 * resized - 1), expected)
    finally:
        model.resize, model.normalize_input = True, True


def test_deterministic_and_independent_of_batching_in_train_mode(model: InceptionV3FID) -> None:
    images = small_images(n=3)
    try:
        without_resize(model)
        model.train()
        assert not any(m.training for m in model.modules())
        with torch.no_grad():
            batched = model(images)
            assert torch.equal(model(images), batched)
            one_by_one = torch.cat([model(image[None]) for image in images])
        assert_close(one_by_one, batched)
    finally:
        model.resize = True


def test_same_seed_same_weights(model: InceptionV3FID) -> None:
    torch.manual_seed(0)
    again = InceptionV3FID()
    for (name, expected), actual in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(actual, expected), name


def test_parameters_frozen_but_images_get_gradients(model: InceptionV3FID) -> None:
    assert not any(p.requires_grad for p in model.parameters())
    images = small_images(n=1).requires_grad_()
    try:
        without_resize(model)(images).sum().backward()
    finally:
        model.resize = True
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)


def test_load_weights_from_path_and_from_hub_cache(model: InceptionV3FID, tmp_path, monkeypatch) -> None:
    state = model.state_dict()
    full_path = tmp_path / "full.pth"
    torch.save(state, full_path)
    # pytorch-fid's file has no num_batches_tracked buffers; "default" finds it in torch hub's cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub_path = default_inception_weights_path()
    assert hub_path == os.path.join(str(tmp_path / "torch_home"), "hub", "checkpoints", FID_WEIGHTS_FILENAME)
    os.makedirs(os.path.dirname(hub_path))
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, hub_path)
    for weights in (full_path, "default"):
        torch.manual_seed(5)
        loaded = InceptionV3FID(weights=weights)
        for name, expected in state.items():
            assert torch.equal(loaded.state_dict()[name], expected), (weights, name)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_load_rejects_other_key_mismatches(tmp_path) -> None:
    target = BasicConv2d(3, 4, 1)
    good = {k: v.clone() for k, v in BasicConv2d(3, 4, 1).state_dict().items()}
    cases = {
        "missing keys: conv.weight": {k: v for k, v in good.items() if k != "conv.weight"},
        "unexpected keys: AuxLogits.fc.weight": {**good, "AuxLogits.fc.weight": torch.zeros(1)},
        "shape mismatches: bn.bias (5,) (expected (4,))": {**good, "bn.bias": torch.zeros(5)},
    }
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for message, state in cases.items():
        path = tmp_path / "bad.pth"
        torch.save(state, path)
        with pytest.raises(ValueError, match="does not hold FID Inception-v3 weights") as error:
            load_inception_weights(target, path)
        assert message in str(error.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="must hold a state_dict"):
        load_inception_weights(target, tmp_path / "list.pth")
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a failed load"
    without_counter = {k: v for k, v in good.items() if k != "bn.num_batches_tracked"}
    torch.save(without_counter, tmp_path / "ok.pth")
    assert load_inception_weights(target, tmp_path / "ok.pth") is target
    assert torch.equal(target.conv.weight, good["conv.weight"])


def test_missing_weights_file_says_where_to_put_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected_path = os.path.join(str(tmp_path), "hub", "checkpoints", FID_WEIGHTS_FILENAME)
    with pytest.raises(FileNotFoundError) as error:
        InceptionV3FID(weights="default")
    assert expected_path in str(error.value) and FID_WEIGHTS_URL in str(error.value)
    elsewhere = str(tmp_path / "elsewhere.pth")
    with pytest.raises(FileNotFoundError, match="never downloads") as error:
        InceptionV3FID(weights=elsewhere)
    assert elsewhere in str(error.value)


@pytest.mark.parametrize("images, error, message", [
    ([[0.0]], TypeError, "images must be a torch.Tensor"),
    (torch.rand(3, 75, 75), ValueError, r"4-D tensor \[N, C, H, W\]"),
    (torch.rand(1, 1, 75, 75), ValueError, "must have 3 channels"),
    (torch.zeros(1, 3, 75, 75, dtype=torch.uint8), TypeError, "float tensor with values in"),
])
def test_bad_images(model: InceptionV3FID, images, error, message) -> None:
    with pytest.raises(error, match=message):
        model(images)


def test_too_small_without_resize(model: InceptionV3FID) -> None:
    try:
        with pytest.raises(ValueError, match="at least 75x75 when resize=False"):
            without_resize(model)(torch.rand(1, 3, 74, 80))
    finally:
        model.resize = True
