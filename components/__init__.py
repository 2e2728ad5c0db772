"""Code that runs inside the pipeline containers.

Pure modules (no file or network I/O): :mod:`components.core.chips`,
:mod:`components.core.prompts`, :mod:`components.core.radiometry`, :mod:`components.core.amg`,
:mod:`components.core.merge`, :mod:`components.core.vectorize`.
"""

from components.version import __version__

__all__ = ["__version__"]
