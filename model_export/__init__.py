"""SAM checkpoint -> ONNX encoder/decoder export, parity check and registration."""

from components.version import __version__

__all__ = ["__version__"]
