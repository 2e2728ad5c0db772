"""Code that runs inside the pipeline containers.

Pure modules (no file or network I/O): :mod:`components.chips`,
:mod:`components.prompts`, :mod:`components.radiometry`, :mod:`components.amg`,
:mod:`components.merge`, :mod:`components.vectorize`.
"""

from components.version import __version__

__all__ = ["__version__"]
