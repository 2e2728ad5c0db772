"""Kubeflow pipeline definitions, their compiled YAML and the ``s2sam`` CLI."""

from components.version import __version__

__all__ = ["__version__"]
