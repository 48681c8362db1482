"""The shared training surface: fastgen.data's digits, the trainer (batches, log, PNG grid,
checkpoint and resume) and ``fastgen train``."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from fastgen.cli import main
from fastgen.data import load_digits_images
from fastgen.models import training
from fastgen.models.training import TrainSpec, get_spec, registered, save_image_grid, train

# Every model of the issue "Reference models I", reachable from fastgen train.
MODELS_I = {"autoencoder", "denoising_autoencoder", "vae", "beta_vae", "hierarchical_vae", "pixelcnn", "vqvae",
            "vqvae_prior", "glow", "realnvp"}


# --- data --------------------------------------------------------------------------------------------

def test_digits_values_range_and_labels():
    images, labels = load_digits_images()
    raw = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() == 0 and images.max() == 1
    # Shuffled, but the same (image, label) pairs as scikit-learn's, pixels k / 16.
    order = np.lexsort(raw.data.T)
    ours = np.lexsort((images.view(-1, 64) * 16).round().numpy().T)
    np.testing.assert_array_equal((images.view(-1, 64) * 16).round().numpy()[ours], raw.data[order])
    assert sorted(labels.tolist()) == sorted(raw.target.tolist())


def test_digits_value_range_size_and_seed():
    small, labels = load_digits_images(seed=5)
    signed, labels_signed = load_digits_images(value_range=(-1.0, 1.0), seed=5)
    torch.testing.assert_close(signed, small * 2 - 1)
    assert torch.equal(labels, labels_signed)
    big, _ = load_digits_images(size=16, seed=5)
    assert big.shape == (1797, 1, 16, 16) and torch.equal(big[:, :, ::2, ::2], small) and torch.equal(big[:, :, 1::2, 1::2], small)
    assert torch.equal(load_digits_images(seed=5)[0], small) and not torch.equal(load_digits_images(seed=6)[0], small)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 12}, "size must be a multiple of 8"),
    ({"value_range": (1.0, 0.0)}, "value_range must have lo < hi"),
    ({"value_range": "ab"}, "value_range must be two numbers"),
])
def test_digits_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_digits_images(**kwargs)


# --- grid PNG ----------------------------------------------------------------------------------------

def test_image_grid_layout_and_pixels(tmp_path):
    images = torch.zeros(10, 1, 2, 3)
    images[3] = 1.0  # row 0, column 3
    images[9, 0, 1, 2] = 0.5  # row 2, column 1: its bottom-right pixel
    path = save_image_grid(images, tmp_path / "grid.png", nrow=4, scale=2, padding=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * (2 * 2 + 1) + 1, 4 * (3 * 2 + 1) + 1)  # 3 rows, 4 columns of 4x6 cells

    def cell(row, col):
        return grid[1 + row * 5:1 + row * 5 + 4, 1 + col * 7:1 + col * 7 + 6]

    assert (cell(0, 3) == 255).all() and (cell(0, 0) == 0).all()
    expected = np.zeros((4, 6), np.uint8)
    expected[2:, 4:] = 128  # the one pixel, scaled 2x (nearest)
    np.testing.assert_array_equal(cell(2, 1), expected)
    assert (cell(2, 2) == 128).all() and (grid[0] == 128).all()  # empty cells and the frame are grey
    rgb = save_image_grid(torch.rand(3, 3, 4, 4), tmp_path / "rgb.png")
    assert Image.open(rgb).mode == "RGB"


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 2, 4, 4), r"C in \(1, 3\)"),
    (torch.zeros(0, 1, 4, 4), "N >= 1"),
    (torch.full((1, 1, 2, 2), float("nan")), "NaN"),
])
def test_image_grid_bad_input(tmp_path, images, message):
    with pytest.raises(ValueError, match=message):
        save_image_grid(images, tmp_path / "x.png")


# --- the trainer -------------------------------------------------------------------------------------

def _tiny_spec() -> TrainSpec:
    """A linear auto-encoder on the digits with a noisy step: resume must restore the RNG too."""
    def step(model, optimizers, batch, step_index):
        images = batch[0].view(len(batch[0]), -1)
        loss = ((model(images + 0.1 * torch.randn_like(images)) - images) ** 2).mean()
        optimizers["model"].zero_grad()
        loss.backward()
        optimizers["model"].step()
        return {"loss": loss.item(), "step_index": float(step_index)}

    return TrainSpec(name="tiny", summary="test", build=lambda: torch.nn.Linear(64, 64),
                     data=lambda seed: load_digits_images(seed=seed),
                     optimizers=lambda model: {"model": torch.optim.Adam(model.parameters(), lr=1e-2)},
                     step=step, grid=lambda model, batch: model(batch[0].view(-1, 64)).view(-1, 1, 8, 8).clamp(0, 1),
                     batch_size=32, steps=10)


def test_train_writes_grid_checkpoint_and_log(tmp_path):
    result = train(_tiny_spec(), steps=40, log_every=10, out_dir=tmp_path, stream=io.StringIO())
    assert [entry["step"] for entry in result.log] == [10, 20, 30, 40]
    assert result.log[1]["step_index"] == pytest.approx(14.5)  # the mean of steps 10..19
    assert result.log[-1]["loss"] < result.log[0]["loss"]
    assert Image.open(result.grid_path).size == (8 * 33 + 1, 8 * 33 + 1)  # 64 images, 8 per row, 8x8 at 4x
    checkpoint = torch.load(result.checkpoint_path, weights_only=True)
    assert checkpoint["step"] == 40 and checkpoint["model_name"] == "tiny"
    for key, value in result.model.state_dict().items():
        assert torch.equal(checkpoint["model"][key], value)
    assert json.loads((tmp_path / "log.json").read_text()) == result.log


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    whole = train(_tiny_spec(), steps=130, out_dir=tmp_path / "whole", stream=io.StringIO())  # > 1 epoch of 56
    train(_tiny_spec(), steps=70, out_dir=tmp_path / "first", stream=io.StringIO())
    resumed = train(_tiny_spec(), steps=130, resume=tmp_path / "first" / "checkpoint.pt", out_dir=tmp_path / "rest",
                    stream=io.StringIO())
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.log[0]["step"] == 78  # the first logging point after step 70 (every 130 // 10 = 13 steps)


def test_batches_cover_each_epoch_once():
    n, batch = 1797, 64
    epoch = torch.cat([training._batch_indices(n, batch, 0, step) for step in range(n // batch)])
    assert len(epoch.unique()) == len(epoch) == (n // batch) * batch
    assert not torch.equal(training._batch_indices(n, batch, 0, n // batch), training._batch_indices(n, batch, 0, 0))


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an int >= 1"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ({"batch_size": 5000}, "batch_size 5000 exceeds the 1797 training examples"),
    ({"log_every": 0}, "log_every must be an int >= 1"),
])
def test_train_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(_tiny_spec(), stream=io.StringIO(), **kwargs)


def test_resume_rejects_unreadable_foreign_and_finished_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.pt"):
        train(_tiny_spec(), steps=5, resume=tmp_path / "junk.pt", stream=io.StringIO())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fastgen train checkpoint"):
        train(_tiny_spec(), steps=5, resume=tmp_path / "other.pt", stream=io.StringIO())
    train("vae", steps=2, out_dir=tmp_path / "vae", stream=io.StringIO())
    with pytest.raises(ValueError, match="is a checkpoint of 'vae', not of 'tiny'"):
        train(_tiny_spec(), steps=5, resume=tmp_path / "vae" / "checkpoint.pt", stream=io.StringIO())
    with pytest.raises(ValueError, match="is at step 2; --steps must exceed it"):
        train("vae", steps=2, resume=tmp_path / "vae" / "checkpoint.pt", stream=io.StringIO())


def test_registry():
    assert MODELS_I <= set(registered())
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: .*vae"):
        get_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        training.register(get_spec("vae"))


# --- fastgen train -----------------------------------------------------------------------------------

def test_cli_list(capsys):
    assert main(["train", "--list"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert MODELS_I | {"nerf"} <= names


def test_cli_trains_writes_and_resumes(tmp_path, capsys):
    out = tmp_path / "ae"
    assert main(["train", "autoencoder", "--steps", "20", "--batch-size", "32", "--out", str(out)]) == 0
    assert "trained autoencoder to step 20" in capsys.readouterr().out
    assert Image.open(out / "samples.png").size[0] == 8 * 33 + 1
    assert main(["train", "autoencoder", "--steps", "30", "--resume", str(out / "checkpoint.pt"),
                 "--out", str(tmp_path / "more")]) == 0
    assert torch.load(tmp_path / "more" / "checkpoint.pt", weights_only=True)["step"] == 30


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "fastgen train: error: unknown model 'nope'"),
    (["train"], "fastgen train: error: give a MODEL"),
    (["train", "vae", "--resume", "/no/such/file.pt"], "fastgen train: error: --resume: /no/such/file.pt is not a file"),
])
def test_cli_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cli_rejects_steps_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vae", "--steps", "0"])
    assert exit_info.value.code == 2
    assert "argument --steps: expected an integer >= 1, got '0'" in capsys.readouterr().err


# style_transfer needs VGG16's ImageNet weights, which no test downloads: test_style_transfer.py
# drives its spec with random weights.
@pytest.mark.parametrize("name", sorted(set(registered()) - {"style_transfer"}))
def test_every_model_trains_and_writes_its_grid_and_checkpoint(name, tmp_path, one_thread_module):
    result = train(name, steps=2, batch_size=min(8, get_spec(name).batch_size), out_dir=tmp_path,
                   stream=io.StringIO())
    assert result.log[-1]["step"] == 2
    assert all(np.isfinite(value) for entry in result.log for value in entry.values()), result.log
    with Image.open(result.grid_path) as grid:
        assert grid.size[0] > 8 and grid.mode in ("L", "RGB")
    assert torch.load(result.checkpoint_path, weights_only=True)["step"] == 2
