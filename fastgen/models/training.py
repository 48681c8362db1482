"""What ``fastgen train MODEL`` needs from a model family, and the registry it reads.

A family module (``fastgen/models/<family>.py``) describes each trainable model with a
:class:`TrainSpec` and calls :func:`register` at import; ``fastgen.models`` imports every family,
so ``fastgen train --list`` sees them all. The loop that runs a spec (progress bar, loss log, grid
PNG, checkpoint and resume) lives in :func:`train`.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

# A batch is always (images [B, C, H, W] float32, labels [B] int64); unconditional models ignore labels.
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainSpec:
    """One trainable model.

    ``build()`` -> a fresh module (random init; the trainer seeds torch first).
    ``data(seed)`` -> the whole training set as a :data:`Batch` (see :mod:`fastgen.data`).
    ``optimizers(model)`` -> named optimizers (``{"model": ...}``, or ``{"generator": ..., "discriminator": ...}``).
    ``step(model, optimizers, batch, step)`` -> the losses of one update as floats (``step`` counts from 0,
    for schedules such as the beta warm-up).
    ``grid(model, batch)`` -> images [N, C, H, W] in [0, 1] for the PNG: samples or reconstructions
    of ``batch``, under ``torch.no_grad`` and ``model.eval()`` (the trainer sets both).
    ``batch_size`` and ``steps`` are the defaults of ``--batch-size`` and ``--steps``.
    """

    name: str
    summary: str
    build: Callable[[], nn.Module]
    data: Callable[[int], Batch]
    optimizers: Callable[[nn.Module], dict[str, torch.optim.Optimizer]]
    step: Callable[[nn.Module, dict[str, torch.optim.Optimizer], Batch, int], dict[str, float]]
    grid: Callable[[nn.Module, Batch], torch.Tensor]
    batch_size: int = 64
    steps: int = 1000


_REGISTRY: dict[str, TrainSpec] = {}


def register(spec: TrainSpec) -> TrainSpec:
    """Make ``spec`` reachable as ``fastgen train <spec.name>``; a second spec of the same name is an error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a trainable model named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registered() -> dict[str, TrainSpec]:
    """Every registered spec by name, in name order."""
    return dict(sorted(_REGISTRY.items()))


def get_spec(name: str) -> TrainSpec:
    """The spec called ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 4,
                    padding: int = 1) -> Path:
    """Write images [N, C, H, W] (C = 1 or 3, values in [0, 1], clamped) as one PNG grid of ``nrow``
    columns, each image scaled up ``scale`` times (nearest: 8x8 digits stay visible) and framed by
    ``padding`` grey pixels. Returns the path."""
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3) \
            or images.shape[0] == 0:
        raise ValueError(f"images must be a tensor [N, C, H, W] with N >= 1 and C in (1, 3), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    for name, value in (("nrow", nrow), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n, c, h, w = images.shape
    images = images.detach().float().cpu().clamp(0, 1).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    cell_h, cell_w = h * scale + padding, w * scale + padding
    grid = torch.full((c, rows * cell_h + padding, cols * cell_w + padding), 0.5)
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * cell_h, padding + (i % nrow) * cell_w
        grid[:, top:top + h * scale, left:left + w * scale] = image
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
    return path


@dataclass
class TrainResult:
    """What :func:`train` did: the trained model, the logged losses (per logging point, the mean of
    each loss since the previous one, with its "step"), the step reached, the training time in
    seconds, and the files written (None without ``out_dir``)."""

    model: nn.Module
    log: list[dict[str, float]]
    steps: int
    seconds: float
    grid_path: Path | None = None
    checkpoint_path: Path | None = None


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The examples of step ``step``: epochs of full batches, each epoch a fresh permutation drawn from
    (seed, epoch) alone, so that a resumed run sees the batches an uninterrupted one would."""
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size]


def _load_checkpoint(path: str | Path, spec: TrainSpec) -> dict:
    import pickle
    import zipfile

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read checkpoint {path}: not a file torch.save wrote, or it holds more than "
                         f"tensors and containers ({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or not {"model", "optimizers", "step", "model_name"} <= checkpoint.keys():
        raise ValueError(f"{path} is not a fastgen train checkpoint (expected the keys model, optimizers, step, "
                         "model_name)")
    if checkpoint["model_name"] != spec.name:
        raise ValueError(f"{path} is a checkpoint of {checkpoint['model_name']!r}, not of {spec.name!r}")
    return checkpoint


class _ProgressLine:
    """One line redrawn with \\r on a terminal (at most ten times a second); nothing otherwise (the
    logged lines are the progress in CI logs)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.tty, self.last, self.open = stream, stream.isatty(), 0.0, False

    def update(self, step: int, total: int, seconds: float) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.1 and step < total):
            return
        self.last = now
        filled = 25 * step // total
        eta = seconds / step * (total - step) if step else 0.0
        self.stream.write(f"\r|{'#' * filled}{'.' * (25 - filled)}| step {step}/{total}, {eta:.0f}s left  ")
        self.stream.flush()
        self.open = True

    def write_line(self, text: str) -> None:
        self.stream.write(("\r" if self.open else "") + text + "\n")
        self.stream.flush()
        self.open = False


def train(spec: TrainSpec | str, steps: int | None = None, batch_size: int | None = None, seed: int = 0,
          out_dir: str | Path | None = None, resume: str | Path | None = None, log_every: int | None = None,
          stream: TextIO | None = None) -> TrainResult:
    """Train ``spec`` (or the registered model of that name) for ``steps`` updates in total (default
    ``spec.steps``) of ``batch_size`` examples (default ``spec.batch_size``).

    Seeds torch with ``seed``, builds the model and its optimizers, loads the data once and draws
    full batches, reshuffled every epoch. Every ``log_every`` steps (default: a tenth of the run) a
    line with the mean of each loss goes to ``stream`` (default stderr), with a progress bar between
    them on a terminal. With ``out_dir``: writes ``samples.png`` (the spec's grid of the first
    examples), ``checkpoint.pt`` (model and optimizer state_dicts, step, RNG state; loads with
    ``weights_only=True``) and ``log.json``. ``resume`` continues from such a checkpoint up to
    ``steps`` in total, ending with the weights an uninterrupted run would have had.
    """
    import json

    spec = get_spec(spec) if isinstance(spec, str) else spec
    steps = spec.steps if steps is None else steps
    batch_size = spec.batch_size if batch_size is None else batch_size
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    log_every = log_every if log_every is not None else max(1, steps // 10)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be an int >= 1, got {log_every!r}")
    stream = sys.stderr if stream is None else stream

    torch.manual_seed(seed)
    model = spec.build()
    optimizers = spec.optimizers(model)
    images, labels = spec.data(seed)
    if batch_size > len(images):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} training examples")
    first = 0
    if resume is not None:
        checkpoint = _load_checkpoint(resume, spec)
        model.load_state_dict(checkpoint["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        torch.set_rng_state(checkpoint["rng_state"])
        first = int(checkpoint["step"])
        if first >= steps:
            raise ValueError(f"{resume} is at step {first}; --steps must exceed it to train on, got {steps}")

    progress, log, sums, counts = _ProgressLine(stream), [], {}, {}
    seconds, start = 0.0, time.perf_counter()
    for step in range(first, steps):
        model.train()
        index = _batch_indices(len(images), batch_size, seed, step)
        losses = spec.step(model, optimizers, (images[index], labels[index]), step)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
        done = step + 1
        seconds = time.perf_counter() - start
        if done % log_every == 0 or done == steps:
            means = {key: sums[key] / counts[key] for key in sums}
            log.append({"step": done, **means})
            progress.write_line(f"{spec.name} step {done}/{steps}  " + "  ".join(
                f"{key} {value:.4g}" for key, value in means.items()) + f"  {seconds:.1f}s")
            sums, counts = {}, {}
        else:
            progress.update(done, steps, seconds)

    result = TrainResult(model=model, log=log, steps=steps, seconds=seconds)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.eval()
        with torch.no_grad():
            grid = spec.grid(model, (images[:64], labels[:64]))
        result.grid_path = save_image_grid(grid, out / "samples.png")
        result.checkpoint_path = out / "checkpoint.pt"
        torch.save({"model": model.state_dict(),
                    "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                    "step": steps, "model_name": spec.name, "seed": seed, "rng_state": torch.get_rng_state()},
                   result.checkpoint_path)
        (out / "log.json").write_text(json.dumps(log, indent=1))
    return result
