"""fastgen: kernel-optimized toolkit for generative models.

Importing fastgen never compiles anything; the native extension ``fastgen._C`` is
loaded on first use and, when missing or broken, the reference path runs instead
(``fastgen info`` says why).
"""
__version__ = "0.1.0"

from fastgen import metrics, nn, ops  # noqa: E402
from fastgen._backends import info  # noqa: E402

__all__ = ["__version__", "info", "metrics", "nn", "ops"]
