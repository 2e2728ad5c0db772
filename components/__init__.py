"""Code that runs inside the pipeline containers, in layers whose imports only go down.

``steps`` (one module per pipeline step) -> ``inference`` (the model interface, SAM on
ONNX Runtime, prompted and automatic modes) and ``io`` (STAC, rasters, outputs, the
model registry) -> ``core`` (pure: chips, prompts, radiometry, AMG math, merge, the
parameter table). ``tasks`` holds the KFP shells over the steps; ``errors`` the errors
a user can act on.
"""

from components.version import __version__

__all__ = ["__version__"]
