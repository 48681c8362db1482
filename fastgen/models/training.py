"""What ``fastgen train MODEL`` needs from a model family, and the registry it reads.

A family module (``fastgen/models/<family>.py``) describes each trainable model with a
:class:`TrainSpec` and calls :func:`register` at import; ``fastgen.models`` imports every family,
so ``fastgen train --list`` sees them all. The loop that runs a spec (progress bar, loss log, grid
PNG, checkpoint and resume) lives in :func:`train`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
