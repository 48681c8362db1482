"""What fastgen can run here, and why not where it cannot.

Everything is probed lazily and cached: ``import fastgen`` never compiles, and a
missing or broken native extension only turns its backend off (``fastgen info``
says why).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import platform

import torch

BACKEND_ENV = "FASTGEN_BACKEND"
BACKEND_CHOICES = ("auto", "ref", "cpu", "triton", "cuda")


@functools.cache
def cext_reason() -> str | None:
    """None when the native extension ``fastgen._C`` is loaded, else why not."""
    if os.environ.get("FASTGEN_DISABLE_EXT") == "1":
        return "disabled by FASTGEN_DISABLE_EXT=1"
    try:
        importlib.import_module("fastgen._C")
    except ImportError as exc:
        return f"fastgen._C is not built ({exc}); install with `pip install --no-build-isolation -e .`"
    except Exception as exc:  # a broken build (ABI mismatch, bad symbol) must not break import
        return f"fastgen._C failed to load: {type(exc).__name__}: {exc}"
    return None


def has_cext() -> bool:
    return cext_reason() is None


def cuda_kernels_reason() -> str | None:
    """None when ``fastgen._C`` carries the CUDA kernels (built with FASTGEN_WITH_CUDA=ON)."""
    if (reason := cext_reason()) is not None:
        return reason
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fastgen_C::adain_fwd", "CUDA"):
        return "fastgen._C was built without CUDA kernels (rebuild with FASTGEN_WITH_CUDA=ON)"
    return None


def has_cuda() -> bool:
    return torch.cuda.is_available() and cuda_kernels_reason() is None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def triton_reason() -> str | None:
    """None when Triton is importable; device support is checked per input."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def has_triton() -> bool:
    return triton_reason() is None


@functools.cache
def cupy_reason() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (optional extra for GPU machines)"
    return None


def has_cupy() -> bool:
    return cupy_reason() is None


def forced_backend() -> str:
    """The backend named by FASTGEN_BACKEND (``auto`` when unset)."""
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"{BACKEND_ENV}={choice!r}: expected one of {', '.join(BACKEND_CHOICES)}")
    return choice


def info() -> dict:
    """Versions and per-op backend availability, as printed by ``fastgen info``."""
    from fastgen import __version__
    from fastgen.ops._library import registered_ops
    from fastgen.ops.fid import _numpy_lapack

    versions = {
        "fastgen": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version_of("triton"),
        "cupy": _version_of("cupy"),
    }
    machine = {
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    backends = {
        "cpu (C++ fastgen._C)": cext_reason(),
        "triton": triton_reason() or (None if torch.cuda.is_available() or triton_interpret()
                                      else "no CUDA device (set TRITON_INTERPRET=1 to run on CPU tensors)"),
        "cuda (fastgen._C CUDA kernels)": cuda_kernels_reason() if torch.cuda.is_available()
        else "no CUDA device",
        "numpy OpenBLAS (FID)": None if _numpy_lapack.load() is not None
        else "this numpy bundles no scipy-openblas64: torch's Cholesky and numpy.linalg.eigvalsh run instead",
    }
    ops = {spec.name: spec.availability() for spec in registered_ops()}
    return {"versions": versions, "machine": machine, "backends": backends,
            "forced_backend": os.environ.get(BACKEND_ENV, "auto"), "ops": ops}


def _version_of(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.import_module(module).__version__
    except Exception as exc:
        return f"import failed: {exc}"
