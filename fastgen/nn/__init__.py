"""Modules users drop in, built on fastgen.ops."""
from fastgen.nn.adain import AdaIN
from fastgen.nn.spectral_norm import spectral_norm
from fastgen.nn.vq import VectorQuantizer, VQOutput

__all__ = ["AdaIN", "VQOutput", "VectorQuantizer", "spectral_norm"]
