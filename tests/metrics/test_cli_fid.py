"""``fastgen fid`` and the image-folder loading behind it (``fastgen.metrics.images``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastgen.cli import main
from fastgen.metrics.digits import digits_split
from fastgen.metrics.fid import FeatureStats, load_stats, save_stats
from fastgen.metrics.images import image_feature_stats, iter_image_batches, list_images, load_image

FID_LINE = re.compile(r"^FID: (\S+)$", re.MULTILINE)


def _write_digits(folder, images: torch.Tensor, scale: int = 2, jpeg_every: int = 0) -> None:
    """images [N, 1, 8, 8] in [0, 1] as 8*scale-pixel grayscale PNGs (every jpeg_every-th an RGB JPEG)."""
    folder.mkdir()
    for i, image in enumerate(images):
        pixels = (image[0].repeat_interleave(scale, 0).repeat_interleave(scale, 1) * 255).round().byte().numpy()
        if jpeg_every and i % jpeg_every == 0:
            Image.fromarray(pixels).convert("RGB").save(folder / f"{i:03d}.JPG", quality=95)
        else:
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of 40 different sklearn digits each, and one of 40 ones and sevens only."""
    (images, labels), _ = digits_split()
    root = tmp_path_factory.mktemp("fid")
    _write_digits(root / "a", images[:40])
    _write_digits(root / "b", images[40:80], jpeg_every=3)
    _write_digits(root / "ones_sevens", images[(labels == 1) | (labels == 7)][:40])
    return {name: str(root / name) for name in ("a", "b", "ones_sevens")}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``fastgen`` in-process; argparse's own errors exit via SystemExit."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def fid_of(argv: list[str], capsys) -> float:
    status, out, err = run(["fid", *argv], capsys)
    assert status == 0, err
    match = FID_LINE.search(out)
    assert match and out == match.group(0) + "\n", out
    return float(match.group(1))


# -- fastgen.metrics.images --------------------------------------------------------------------------

def test_list_images_takes_image_files_directly_in_the_folder_sorted(tmp_path) -> None:
    for name in ("b.PNG", "a.jpeg", "c.Jpg", "notes.txt", "d.gif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert [os.path.basename(p) for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "c.Jpg"]
    with pytest.raises(ValueError, match="holds no images"):
        list_images(tmp_path / "dir.png")  # a folder with an image's name, itself empty
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        list_images(tmp_path / "notes.txt")


def test_load_image_gives_rgb_floats_in_unit_range(tmp_path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    image = load_image(tmp_path / "gray.png")
    assert image.dtype == torch.float32 and image.shape == (3, 3, 4)
    expected = torch.from_numpy(gray).float() / 255
    for channel in image:
        assert torch.equal(channel, expected)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert torch.equal(load_image(tmp_path / "rgba.png")[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image(tmp_path / "broken.png")


def test_batches_resize_to_one_size_in_order_whatever_the_threads(tmp_path) -> None:
    generator = np.random.default_rng(0)
    sizes = [(6, 5), (9, 12), (6, 5), (3, 4), (7, 7)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(generator.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    paths = list_images(tmp_path)
    batches = list(iter_image_batches(paths, batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 6, 5), (2, 3, 6, 5), (1, 3, 6, 5)]  # the first image's size
    # Each image is resized alone exactly as a model resizing the whole batch would.
    expected = F.interpolate(load_image(paths[1])[None], size=(6, 5), mode="bilinear", align_corners=False)
    assert torch.equal(batches[0][1:2], expected)
    assert torch.equal(batches[0][0], load_image(paths[0]))
    threaded = list(iter_image_batches(paths, batch_size=2, size=(4, 4), mode="area", num_workers=3))
    plain = list(iter_image_batches(paths, batch_size=2, size=(4, 4), mode="area"))
    assert all(torch.equal(t, p) for t, p in zip(threaded, plain, strict=True))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            next(iter_image_batches(paths, batch_size=bad))


def test_feature_stats_stream_a_model_over_the_images(tmp_path) -> None:
    """A fake extractor (per-channel means and a product) against the features computed directly."""
    generator = np.random.default_rng(1)
    for i in range(7):
        Image.fromarray(generator.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    paths = list_images(tmp_path)

    def fake(images: torch.Tensor) -> torch.Tensor:
        means = images.mean((2, 3))
        return torch.cat([means, means[:, :1] * means[:, 1:2]], 1)

    calls = []
    stats = image_feature_stats(paths, fake, batch_size=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 7), (3, 7), (6, 7), (7, 7)]
    features = fake(torch.stack([load_image(p) for p in paths])).double().numpy()
    mu, sigma = stats.compute()
    assert stats.count == 7 and stats.dim == 4
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match=r"features \[batch, dim\]"):
        image_feature_stats(paths, lambda images: images.mean((1, 2, 3)))


# -- fastgen fid with the digits extractor ------------------------------------------------------------

def test_fid_of_a_folder_with_itself_is_zero_and_grows_with_the_difference(folders, capsys) -> None:
    same = fid_of([folders["a"], folders["a"], "--model", "digits"], capsys)
    # FeatureStats' float32 products leave the covariance's null space (40 samples, 64 dims) as
    # eigenvalues of either sign around 1e-7 of its scale (trace ~90): zero to within about 1e-6.
    assert abs(same) < 1e-5
    near = fid_of([folders["a"], folders["b"], "--model", "digits", "--batch-size", "7"], capsys)
    far = fid_of([folders["a"], folders["ones_sevens"], "--model", "digits"], capsys)
    assert 0 < near < far


def test_threads_do_not_change_the_value_and_batch_size_barely(folders, capsys) -> None:
    argv = [folders["a"], folders["b"], "--model", "digits", "--device", "cpu"]
    plain = fid_of([*argv, "--num-workers", "0"], capsys)
    assert fid_of([*argv, "--num-workers", "2"], capsys) == plain
    # FeatureStats does not depend on the batching, but the convolutions' blocking does, in the last bits.
    assert fid_of([*argv, "--num-workers", "2", "--batch-size", "13"], capsys) == pytest.approx(plain, rel=1e-6)


def test_save_stats_round_trip_and_mixing_npz_with_folders(folders, tmp_path, capsys) -> None:
    out = tmp_path / "a.npz"
    status, stdout, _ = run(["fid", "--save-stats", folders["a"], str(out), "--model", "digits"], capsys)
    assert status == 0 and f"40 images (64-d digits features) to {out}" in stdout
    mu, sigma, count = load_stats(out)
    assert mu.shape == (64,) and sigma.shape == (64, 64) and count == 40
    reference = fid_of([folders["a"], folders["b"], "--model", "digits"], capsys)
    assert fid_of([str(out), folders["b"], "--model", "digits"], capsys) == reference
    assert fid_of([folders["b"], str(out), "--model", "digits"], capsys) == pytest.approx(reference, rel=1e-12)
    out_b = tmp_path / "b.npz"
    assert run(["fid", "--save-stats", folders["b"], str(out_b), "--model", "digits"], capsys)[0] == 0
    # Two .npz files need no model at all: no Inception weights, even with the default --model.
    assert fid_of([str(out), str(out_b)], capsys) == reference


def test_pytorch_fid_npz_without_count_works(folders, tmp_path, capsys) -> None:
    stats = FeatureStats(64)
    stats.update(torch.randn(100, 64))
    mu, sigma = stats.compute()
    np.savez(tmp_path / "plain.npz", mu=mu, sigma=sigma)  # as pytorch-fid writes it
    value = fid_of([str(tmp_path / "plain.npz"), folders["a"], "--model", "digits"], capsys)
    assert value > 0


def test_progress_and_warnings_go_to_stderr_in_few_lines(folders, capsys) -> None:
    status, out, err = run(["fid", folders["a"], folders["b"], "--model", "digits", "--batch-size", "4"], capsys)
    assert status == 0 and out.startswith("FID: ")
    lines = err.splitlines()
    progress1 = [line for line in lines if line.startswith(f"PATH1 {folders['a']}: ")]
    progress2 = [line for line in lines if line.startswith(f"PATH2 {folders['b']}: ")]
    # 10 batches each, but not a TTY: a start line and one per quarter.
    assert len(progress1) == len(progress2) == 5
    assert progress1[0].endswith("0/40 images (0%), 0.0s") and "40/40 images (100%)" in progress1[-1]
    # 40 samples of 64-d features: frechet_distance's bias warning, as one line without a source location.
    assert any(line.startswith("fastgen fid: warning: frechet_distance: 40 samples") for line in lines)
    assert "Warning" not in err and ".py:" not in err


def test_terminal_progress_is_one_redrawn_line(folders, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    status, _, err = run(["fid", folders["a"], folders["a"], "--model", "digits", "--batch-size", "10"], capsys)
    assert status == 0
    first_folder = err.split("\n")[0]
    assert first_folder.count("\r") == 5 and first_folder.endswith("s")  # 0, 10, 20, 30, 40 images
    assert "40/40 images" in first_folder.split("\r")[-1]


def test_python_dash_m_entry_point(folders) -> None:
    result = subprocess.run([sys.executable, "-m", "fastgen", "fid", folders["a"], folders["b"], "--model", "digits"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert FID_LINE.fullmatch(result.stdout.strip()) and float(result.stdout.split()[1]) > 0
    assert "PATH1" in result.stderr and "Traceback" not in result.stderr


# -- errors: exit status 2 and one line, never a traceback ---------------------------------------------

@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "single").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "single" / "only.png")
    (tmp_path / "corrupt").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "corrupt" / "0.png")
    (tmp_path / "corrupt" / "1.jpg").write_bytes(b"\xff\xd8 truncated")
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3))
    np.savez(tmp_path / "bad_shapes.npz", mu=np.zeros(3), sigma=np.eye(4))
    save_stats(tmp_path / "small.npz", np.zeros(3), np.eye(3), 10)
    save_stats(tmp_path / "digits.npz", np.zeros(64), np.eye(64), 10)
    np.save(tmp_path / "array.npy", np.zeros(3))
    os.rename(tmp_path / "array.npy", tmp_path / "array.npz")
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong_weights.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["{t}/missing", "{a}"], r"PATH1: \S+/missing does not exist"),
    (["{a}", "{t}/empty"], r"PATH2: \S+/empty holds no images \(expected .png, .jpg, .jpeg"),
    (["{t}/single", "{a}"], r"PATH1: \S+/single holds 1 image; a covariance needs at least 2"),
    (["{t}/corrupt", "{a}"], r"PATH1: cannot read image \S+/corrupt/1\.jpg"),
    (["{t}/notes.txt", "{a}"], r"PATH1: \S+/notes\.txt is a file but not an \.npz"),
    (["{t}/no_sigma.npz", "{a}"], r"PATH1: cannot read statistics from \S+: .*missing \['sigma'\]"),
    (["{t}/bad_shapes.npz", "{a}"], r"PATH1: \S+ holds mu of shape \(3,\) and sigma of shape \(4, 4\)"),
    (["{t}/array.npz", "{a}"], r"PATH1: \S+/array\.npz is not an \.npz archive"),
    (["{t}/small.npz", "{t}/digits.npz"], r"PATH1 holds 3-d statistics and PATH2 64-d ones"),
    (["{t}/small.npz", "{a}"], r"PATH1: \S+ holds 3-d statistics, but --model digits gives 64-d features"),
    (["{a}", "{a}", "--weights", "{t}/nope.pt"], r"--weights: \S+/nope\.pt is not a file"),
    (["{a}", "{a}", "--weights", "{t}/wrong_weights.pt"], r"--weights: cannot load \S+ as digits weights: .*Missing"),
    (["{a}", "{a}", "--weights", "{t}/garbage.pt"], r"--weights: cannot load \S+/garbage\.pt as digits weights"),
    (["--save-stats", "{t}/digits.npz", "{t}/out.npz"], r"PATH1: with --save-stats, PATH1 must be a folder"),
    (["--save-stats", "{a}", "{t}/out.txt"], r"PATH2: with --save-stats, PATH2 is the output and must end in \.npz"),
    (["--save-stats", "{a}", "{t}/digits.npz"], r"PATH2: \S+ exists; not overwriting"),
    (["--save-stats", "{a}", "{t}/no/such/out.npz"], r"PATH2: the folder of \S+ does not exist"),
])
def test_bad_inputs_exit_2_with_one_line(argv, message, folders, bad_inputs, capsys) -> None:
    argv = [arg.format(t=bad_inputs, a=folders["a"]) for arg in argv]
    status, out, err = run(["fid", *argv, "--model", "digits"], capsys)
    assert status == 2 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith("fastgen fid: error: ") and re.search(message, last), err
    assert err.endswith(last + "\n") and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["--batch-size", "two"], "argument --batch-size: expected an integer >= 1, got 'two'"),
    (["--num-workers", "-1"], "argument --num-workers: expected an integer >= 0, got '-1'"),
    (["--device", "toaster"], "argument --device: cannot use device 'toaster'"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
])
def test_bad_options_are_argparse_errors(argv, message, folders, capsys) -> None:
    status, out, err = run(["fid", folders["a"], folders["a"], *argv], capsys)
    assert status == 2 and out == "" and message in err.splitlines()[-1]


# -- fastgen fid with Inception --------------------------------------------------------------------------

def test_missing_inception_weights_say_where_to_put_them(folders, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    status, out, err = run(["fid", folders["a"], folders["b"]], capsys)
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    expected = os.path.join(str(tmp_path / "torch_home"), "hub", "checkpoints", "pt_inception-2015-12-05-6726825d.pth")
    assert err.startswith("fastgen fid: error: --model inception needs pytorch-fid's Inception weights")
    assert expected in err and "pytorch-fid/releases" in err and "--model digits runs with no download" in err


def test_inception_with_a_weights_file(tmp_path, capsys, one_thread) -> None:
    """Random Inception weights saved as a state_dict; three 32x32 images at batch size 2 (resized to
    299). Statistics only: a 2048-d FID of singular covariances alone takes tens of seconds on a CPU."""
    from fastgen.metrics.inception import InceptionV3FID

    torch.manual_seed(0)
    model = InceptionV3FID(weights=None)
    torch.save(model.state_dict(), tmp_path / "inception.pt")
    (tmp_path / "x").mkdir()
    generator = np.random.default_rng(2)
    for i in range(3):
        pixels = generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "x" / f"{i}.png")
    out = tmp_path / "x.npz"
    argv = ["fid", "--save-stats", str(tmp_path / "x"), str(out), "--weights", str(tmp_path / "inception.pt"),
            "--batch-size", "2", "--num-workers", "0"]
    status, stdout, err = run(argv, capsys)
    assert status == 0 and "3 images (2048-d inception features)" in stdout, err
    mu, sigma, count = load_stats(out)
    with torch.inference_mode():
        direct = model(torch.stack([load_image(p) for p in list_images(tmp_path / "x")])).double().numpy()
    assert count == 3
    np.testing.assert_allclose(mu, direct.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(direct, rowvar=False), rtol=1e-3, atol=1e-6)
