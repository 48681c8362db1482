"""Argument checks shared by the public ops and modules: each error names the argument and what it expected."""
from __future__ import annotations

import math

import torch

from fastgen.ops._library import FLOAT_DTYPES


def tensor(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def float_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def like(name: str, t: torch.Tensor, like_name: str, other: torch.Tensor) -> None:
    """t has the dtype and device of ``other`` (the argument called ``like_name``)."""
    if t.dtype != other.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({other.dtype}), got {t.dtype}")
    if t.device != other.device:
        raise ValueError(f"{name} must be on the device of {like_name} ({other.device}), got {t.device}")


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def positive_float(name: str, value: object, why: str = "") -> float:
    """``why``, e.g. " (it keeps ... finite)", goes after "a positive float" in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive float{why}, got {value!r}")
    return float(value)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in t. A sum propagates both in one pass without a temporary the size of t; only
    when it is not finite (finite values can overflow it, in half precision above all) does the exact
    elementwise test run. True while tracing: the check reads values."""
    if torch.compiler.is_compiling() or not t.numel():
        return True
    t = t.detach()
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())
