"""fastgen's command line: ``fastgen info``, ``fastgen fid`` and ``fastgen train`` (also ``python -m fastgen ...``)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

from fastgen.models import nerf

FID_DESCRIPTION = """\
Fréchet Inception Distance between PATH1 and PATH2, each a folder of images (.png, .jpg, .jpeg
directly in it, read in name order) or an .npz of statistics (mu, sigma; pytorch-fid's format).
Prints "FID: <value>" on stdout; warnings and the progress go to stderr. Errors exit with status 2.

Images are resized to the model's input as the model itself would: 299x299 bilinear for
inception, 8x8 area averaging for digits.

--model inception (the default) needs pytorch-fid's weight file, which fastgen never downloads:
pass it with --weights, or save it in torch hub's cache. --model digits uses a small classifier
shipped with fastgen (64-d features, meaningful for digit-like images only); --weights then loads
another state_dict for it. Statistics only compare with statistics of the same model."""


def _print_info(as_json: bool) -> int:
    from fastgen import info

    report = info()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    for section in ("versions", "machine"):
        print(f"{section}:")
        for key, value in report[section].items():
            print(f"  {key:<16} {value if value is not None else 'not installed'}")
    print("backends:")
    for name, why in report["backends"].items():
        print(f"  {name:<32} {'available' if why is None else 'unavailable: ' + why}")
    print(f"FASTGEN_BACKEND={report['forced_backend']}")
    print("ops:")
    for op, backends in report["ops"].items():
        print(f"  fastgen::{op}")
        for backend, why in backends.items():
            print(f"    {backend:<8} {'available' if why is None else 'unavailable: ' + why}")
    return 0


# -- fastgen fid -------------------------------------------------------------------------------------

def _int_at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def _device(text: str) -> Any:
    import torch

    try:
        device = torch.device(text)
        torch.empty(0, device=device)  # an unknown or absent device fails here, before any work
    except (RuntimeError, AssertionError) as error:  # torch asserts when it was built without CUDA
        raise argparse.ArgumentTypeError(f"cannot use device {text!r}: {_one_line(error)}") from error
    return device


def _one_line(error: BaseException | str) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


class _Progress:
    """``progress(done, total)`` over one folder's images, on ``stream``: one line redrawn with \\r on a
    terminal; otherwise (CI logs) a line at the start and at each quarter, five lines at most."""

    BAR_WIDTH = 25

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label, self.stream = label, stream
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.quarters_shown = -1
        self.line_open = False
        self.line_length = 0

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.start
        if self.tty:
            filled = self.BAR_WIDTH * done // total
            if done == total:
                timing = f"{elapsed:.1f}s"
            else:
                timing = f"{elapsed / done * (total - done):.0f}s left" if done else "starting"
            status = f" |{'#' * filled}{'.' * (self.BAR_WIDTH - filled)}| {done}/{total} images, {timing}"
            room = shutil.get_terminal_size().columns - 1 - len(status)
            label = self.label if len(self.label) <= room else "..." + self.label[len(self.label) - room + 3:]
            line = (label if room > 3 else "") + status
            # Padded over the previous line's tail, which \r alone leaves on screen.
            self.stream.write("\r" + line.ljust(self.line_length))
            self.line_length = len(line)
            self.line_open = done < total
            if not self.line_open:
                self.stream.write("\n")
        elif 4 * done // total > self.quarters_shown:
            self.quarters_shown = 4 * done // total
            self.stream.write(f"{self.label}: {done}/{total} images ({100 * done // total}%), {elapsed:.1f}s\n")
        self.stream.flush()

    def close(self) -> None:
        """End an unfinished terminal line, so that an error message starts on its own line."""
        if self.line_open:
            self.stream.write("\n")
            self.line_open = False


@dataclass
class _Input:
    """PATH1 or PATH2: the image files of a folder, or the (mu, sigma, count) of an .npz."""

    name: str
    path: str
    images: list[str] | None = None
    stats: tuple[Any, Any, int | None] | None = None


def _open_input(name: str, path: str) -> _Input:
    from fastgen.metrics.images import list_images

    if not os.path.exists(path):
        raise ValueError(f"{name}: {path} does not exist (expected a folder of images or an .npz of statistics)")
    if os.path.isdir(path):
        try:
            images = list_images(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{name}: {error}") from error
        if len(images) < 2:
            raise ValueError(f"{name}: {path} holds {len(images)} image; a covariance needs at least 2")
        return _Input(name, path, images=images)
    if not path.lower().endswith(".npz"):
        raise ValueError(f"{name}: {path} is a file but not an .npz (expected a folder of images or an .npz "
                         "of statistics)")
    return _Input(name, path, stats=_load_npz(name, path))


def _load_npz(name: str, path: str) -> tuple[Any, Any, int | None]:
    import zipfile

    from fastgen.metrics.fid import load_stats

    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it, or read a plain .npy
        raise ValueError(f"{name}: {path} is not an .npz archive")
    try:
        mu, sigma, count = load_stats(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name}: cannot read statistics from {path}: {_one_line(error)}") from error
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{name}: {path} holds mu of shape {mu.shape} and sigma of shape {sigma.shape}; "
                         "expected a vector [d] and a matrix [d, d]")
    return mu, sigma, count


def _model_input(model: str) -> tuple[int, tuple[int, int], str]:
    """(feature dim, input size, resize mode) of --model: the resize the network does itself."""
    if model == "inception":
        from fastgen.metrics import inception

        return inception.FEATURE_DIM, (inception.INPUT_SIZE, inception.INPUT_SIZE), "bilinear"
    from fastgen.metrics import digits

    return digits.FEATURE_DIM, (digits.DIGITS_SIZE, digits.DIGITS_SIZE), "area"


def _load_model(args: argparse.Namespace) -> Any:
    import pickle

    from fastgen.metrics import inception
    from fastgen.metrics.digits import DigitsFeatureExtractor

    if args.weights is not None and not os.path.isfile(args.weights):
        raise ValueError(f"--weights: {args.weights} is not a file")
    if args.model == "inception" and args.weights is None:
        default = inception.default_inception_weights_path()
        if not os.path.isfile(default):
            raise ValueError(
                f"--model inception needs pytorch-fid's Inception weights, which fastgen never downloads: fetch "
                f"{inception.FID_WEIGHTS_URL} and pass it with --weights FILE, or save it as {default} (torch hub's "
                "cache). --model digits runs with no download (a digits classifier shipped with fastgen, for "
                "digit-like images)")
    try:
        if args.model == "inception":
            model = inception.InceptionV3FID(weights=args.weights or "default")
        else:
            model = DigitsFeatureExtractor(weights=args.weights or "default")
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
        what = f"--weights: cannot load {args.weights}" if args.weights else f"--model {args.model}: cannot load"
        raise ValueError(f"{what} as {args.model} weights: {_one_line(error)}") from error
    return model.eval().to(args.device)


def _folder_stats(source: _Input, model: Any, args: argparse.Namespace) -> Any:
    import torch

    from fastgen.metrics.images import image_feature_stats

    _, size, mode = _model_input(args.model)
    progress = _Progress(f"{source.name} {source.path}", sys.stderr)
    try:
        return image_feature_stats(source.images, model, batch_size=args.batch_size, size=size, mode=mode,
                                   device=args.device, num_workers=args.num_workers, progress=progress)
    except ValueError as error:
        raise ValueError(f"{source.name}: {error}") from error
    except torch.OutOfMemoryError as error:
        raise ValueError(f"{source.name}: out of memory on {args.device} at --batch-size {args.batch_size} (try a "
                         f"smaller one): {_one_line(error)}") from error
    finally:
        progress.close()


def _print_fid(args: argparse.Namespace) -> None:
    from fastgen.metrics.fid import frechet_distance

    sources = [_open_input("PATH1", args.path1), _open_input("PATH2", args.path2)]
    files = [s for s in sources if s.stats is not None]
    if len(files) == 2 and files[0].stats[0].size != files[1].stats[0].size:
        raise ValueError(f"PATH1 holds {files[0].stats[0].size}-d statistics and PATH2 {files[1].stats[0].size}-d "
                         "ones: they come from different feature extractors")
    model = None
    if len(files) < 2:
        # Checked before any image is read: extracting a large folder only to fail here would waste minutes.
        dim = _model_input(args.model)[0]
        for s in files:
            if s.stats[0].size != dim:
                raise ValueError(f"{s.name}: {s.path} holds {s.stats[0].size}-d statistics, but --model "
                                 f"{args.model} gives {dim}-d features")
        model = _load_model(args)
    results = []
    for s in sources:
        if s.stats is None:
            stats = _folder_stats(s, model, args)
            results.append((*stats.compute(), stats.count))
        else:
            results.append(s.stats)
    (mu1, sigma1, n1), (mu2, sigma2, n2) = results
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = frechet_distance(mu1, sigma1, mu2, sigma2,
                                 num_samples=None if n1 is None or n2 is None else (n1, n2))
    for warning in caught:
        print(f"fastgen fid: warning: {_one_line(str(warning.message))}", file=sys.stderr)
    print(f"FID: {float(value)!r}")


def _save_stats(args: argparse.Namespace) -> None:
    source = _open_input("PATH1", args.path1)
    if source.images is None:
        raise ValueError(f"PATH1: with --save-stats, PATH1 must be a folder of images, got the file {args.path1}")
    out = args.path2
    if not out.lower().endswith(".npz"):
        raise ValueError(f"PATH2: with --save-stats, PATH2 is the output and must end in .npz, got {out}")
    if os.path.exists(out):
        raise ValueError(f"PATH2: {out} exists; not overwriting statistics (remove it first)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ValueError(f"PATH2: the folder of {out} does not exist")
    stats = _folder_stats(source, _load_model(args), args)
    stats.save(out)
    print(f"Saved the statistics of {stats.count} images ({stats.dim}-d {args.model} features) to {out}")


def _fid(args: argparse.Namespace) -> int:
    if args.device is None:
        import torch

        args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        (_save_stats if args.save_stats else _print_fid)(args)
    except (OSError, ValueError) as error:
        print(f"fastgen fid: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


# -- fastgen train -----------------------------------------------------------------------------------

TRAIN_DESCRIPTION = """\
Train a reference model on data that needs no download, with a progress bar and the losses logged
on stderr; writes OUT/samples.png (samples or reconstructions), OUT/checkpoint.pt (state_dicts, loads
with torch.load(weights_only=True)) and OUT/log.json. --resume CKPT continues a run up to --steps in
total. `fastgen train --list` lists the models; `fastgen train nerf --help` shows NeRF's own options."""


def _train(argv: list[str]) -> int:
    from fastgen.models import training

    if argv[:1] == ["nerf"]:
        parser = argparse.ArgumentParser(prog="fastgen train nerf", description="Train NeRF on the procedural scene.")
        nerf.add_arguments(parser)
        return nerf.run(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="fastgen train", description=TRAIN_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", metavar="MODEL", help="the model to train (see --list)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--steps", type=_int_at_least(1), metavar="N", help="updates in total (default: the model's)")
    parser.add_argument("--batch-size", type=_int_at_least(1), metavar="B", help="examples per update (default: the "
                        "model's)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, the batches and the noise (default 0)")
    parser.add_argument("--out", metavar="DIR", help="where to write the outputs (default: runs/MODEL)")
    parser.add_argument("--resume", metavar="CKPT", help="a checkpoint.pt of the same model to continue from")
    parser.add_argument("--log-every", type=_int_at_least(1), metavar="N",
                        help="steps between logged losses (default: a tenth of the run)")
    args = parser.parse_args(argv)
    specs = training.registered()
    if args.list:
        width = max(map(len, [*specs, "nerf"]))
        for name, spec in specs.items():
            print(f"{name:<{width}}  {spec.summary}")
        print(f"{'nerf':<{width}}  NeRF on the procedural scene, dense or --accelerated (own options: "
              "fastgen train nerf --help)")
        return 0
    try:
        if args.model is None:
            raise ValueError("give a MODEL (fastgen train --list shows them)")
        spec = training.get_spec(args.model)
        if args.resume is not None and not os.path.isfile(args.resume):
            raise ValueError(f"--resume: {args.resume} is not a file")
        out = args.out or os.path.join("runs", spec.name)
        result = training.train(spec, steps=args.steps, batch_size=args.batch_size, seed=args.seed, out_dir=out,
                                resume=args.resume, log_every=args.log_every)
    except (OSError, ValueError) as error:
        print(f"fastgen train: error: {_one_line(error)}", file=sys.stderr)
        return 2
    print(f"trained {spec.name} to step {result.steps} in {result.seconds:.1f}s: wrote {result.grid_path} and "
          f"{result.checkpoint_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own parser: MODEL's options depend on MODEL (nerf has others)
        return _train(argv[1:])
    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info_cmd = commands.add_parser("info", help="versions, backends per op, and why any is unavailable")
    info_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    fid_cmd = commands.add_parser("fid", help="FID between two image folders or .npz statistics",
                                  description=FID_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    fid_cmd.add_argument("path1", metavar="PATH1", help="folder of images, or .npz statistics")
    fid_cmd.add_argument("path2", metavar="PATH2", help="folder of images, or .npz statistics "
                         "(with --save-stats: the .npz to write)")
    fid_cmd.add_argument("--model", choices=("inception", "digits"), default="inception",
                         help="feature extractor (default: %(default)s)")
    fid_cmd.add_argument("--weights", metavar="FILE",
                         help="the model's state_dict (default: inception: torch hub's cache; digits: shipped)")
    fid_cmd.add_argument("--batch-size", type=_int_at_least(1), default=50, metavar="N",
                         help="images per forward pass (default: %(default)s)")
    fid_cmd.add_argument("--device", type=_device, metavar="DEVICE",
                         help="torch device to run the model on (default: cuda when available, else cpu)")
    fid_cmd.add_argument("--num-workers", type=_int_at_least(0), default=min(8, os.cpu_count() or 1),
                         metavar="N", help="threads decoding images, 0 for none (default: %(default)s)")
    fid_cmd.add_argument("--save-stats", action="store_true",
                         help="write the statistics of the image folder PATH1 to PATH2 (.npz) instead of an FID")
    # Listed for `fastgen --help`; `fastgen train ...` is parsed by _train.
    commands.add_parser("train", help="train a reference model on data that needs no download (--list)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _print_info(args.json)
    if args.command == "fid":
        return _fid(args)
    if args.command == "train":
        return _train([])
    return 2
