"""numpy's own LAPACK, called in place through ctypes: Cholesky and eigenvalue-only solves without
the copies ``numpy.linalg`` makes.

numpy's PyPI wheels bundle OpenBLAS (the ``scipy-openblas64`` build: symbols ``scipy_<name>_64_``,
64-bit integers). ``numpy.linalg.cholesky`` and ``eigvalsh`` copy their input into column-major
order and back, which at d = 2048 float64 costs more than the difference between OpenBLAS and
torch's MKL; calling the routines on our own buffers avoids that. Any other numpy build (conda's
MKL, a system OpenBLAS) has no such library, and :func:`load` returns None: callers fall back to
torch and ``numpy.linalg``.

Row-major buffers are passed as they are: LAPACK reads the transpose, which for a symmetric
matrix is the matrix itself with the triangles swapped ("U" in LAPACK is our lower triangle).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

_int = ctypes.c_int64


def _ref(value: int) -> ctypes._CArgObject:
    return ctypes.byref(_int(value))


class NumpyLapack:
    """The routines of one bundled OpenBLAS library, for float32 ("s") and float64 ("d") arrays."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._library = library

    def _routine(self, name: str, dtype: np.dtype) -> ctypes._CFuncPtr:
        prefix = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}[np.dtype(dtype)]
        return getattr(self._library, f"scipy_{prefix}{name}_64_")

    def cholesky_lower_in_place(self, x: np.ndarray) -> int:
        """x: C-contiguous, symmetric (only its lower triangle is read). Its lower triangle becomes
        L with L L^T = x; the strict upper triangle is left as it was. Returns LAPACK's info (> 0:
        not positive definite)."""
        n = x.shape[0]
        info = _int()
        # Column-major "U" is our lower triangle; the trailing argument is the Fortran length of "U".
        self._routine("potrf", x.dtype)(ctypes.c_char_p(b"U"), _ref(n), x.ctypes.data_as(ctypes.c_void_p), _ref(n),
                                        ctypes.byref(info), ctypes.c_size_t(1))
        return info.value

    def eigvalsh_of_upper_in_place(self, x: np.ndarray) -> np.ndarray:
        """Eigenvalues (ascending) of the symmetric matrix whose upper triangle the C-contiguous x
        holds (the strict lower triangle is never read); x is overwritten.

        LAPACK reduces that triangle as its "L" (our upper is its lower): the reduction then starts
        from the first row and column. For FID's M = L^T B L, whose entries shrink down the
        diagonal, the other order ("U", from the last row) lost accuracy: 4.9e-9 relative to the
        Fréchet distance on the benchmark's statistics, against 5e-13 this way.
        """
        n = x.shape[0]
        routine = self._routine("syevd", x.dtype)
        eigenvalues = np.empty(n, dtype=x.dtype)
        info = _int()

        def call(work: np.ndarray, iwork: np.ndarray, lwork: int, liwork: int) -> None:
            routine(ctypes.c_char_p(b"N"), ctypes.c_char_p(b"L"), _ref(n), x.ctypes.data_as(ctypes.c_void_p), _ref(n),
                    eigenvalues.ctypes.data_as(ctypes.c_void_p), work.ctypes.data_as(ctypes.c_void_p), _ref(lwork),
                    iwork.ctypes.data_as(ctypes.c_void_p), _ref(liwork), ctypes.byref(info),
                    ctypes.c_size_t(1), ctypes.c_size_t(1))

        work, iwork = np.empty(1, dtype=x.dtype), np.empty(1, dtype=np.int64)
        call(work, iwork, -1, -1)  # workspace query: the blocked reduction needs its optimal size
        lwork, liwork = int(work[0]), int(iwork[0])
        call(np.empty(lwork, dtype=x.dtype), np.empty(liwork, dtype=np.int64), lwork, liwork)
        if info.value != 0:
            raise RuntimeError(f"LAPACK {x.dtype.char}syevd failed (info = {info.value}): the eigenvalue "
                               "iteration did not converge")
        return eigenvalues


@functools.cache
def load() -> NumpyLapack | None:
    """numpy's bundled OpenBLAS, or None when this numpy has none (or lacks a routine)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(folder, "libscipy_openblas64_*.so*"))):
        try:
            library = ctypes.CDLL(path)  # already loaded by numpy: the same library and thread pool
        except OSError:
            continue
        if all(hasattr(library, f"scipy_{p}{name}_64_") for p in "sd" for name in ("potrf", "syevd")):
            return NumpyLapack(library)
    return None
