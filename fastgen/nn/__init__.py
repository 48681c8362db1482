"""Modules users drop in, built on fastgen.ops."""
from fastgen.nn.adain import AdaIN
from fastgen.nn.spectral_norm import spectral_norm

__all__ = ["AdaIN", "spectral_norm"]
