"""Modules users drop in, built on fastgen.ops."""
from fastgen.nn.adain import AdaIN

__all__ = ["AdaIN"]
