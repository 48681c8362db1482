"""Fast ops, each a ``fastgen::`` custom op with a plain-torch reference."""
from fastgen.ops._library import BackendUnavailableError
from fastgen.ops.adain import adain, adain_from_style

__all__ = ["BackendUnavailableError", "adain", "adain_from_style"]
