"""The cache of CPU kernel output buffers (see csrc/cpu/output_cache.h).

Large outputs of fastgen's C++ kernels reuse buffers freed by earlier calls, so a
training loop does not page-fault a fresh multi-MiB tensor every step. Without the
native extension nothing is cached and these functions report or do nothing.
"""
from __future__ import annotations

import torch

from fastgen import _backends


def cpu_cache_info() -> dict[str, int] | None:
    """Free bytes and buffers held, hits and misses so far, and the limit; None without fastgen._C."""
    if not _backends.has_cext():
        return None
    free_bytes, buffers, hits, misses, limit = torch.ops.fastgen_C.cpu_cache_info()
    return {"free_bytes": free_bytes, "buffers": buffers, "hits": hits, "misses": misses, "limit_bytes": limit}


def cpu_cache_clear() -> None:
    """Return every cached free buffer to the system."""
    if _backends.has_cext():
        torch.ops.fastgen_C.cpu_cache_clear()


def cpu_cache_set_limit(megabytes: int) -> None:
    """Hold at most ``megabytes`` MiB of free buffers (0 turns caching off); frees what is held."""
    if not isinstance(megabytes, int) or megabytes < 0:
        raise ValueError(f"megabytes must be a non-negative int, got {megabytes!r}")
    if _backends.has_cext():
        torch.ops.fastgen_C.cpu_cache_set_limit(megabytes)
