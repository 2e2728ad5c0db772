"""Container images of the components, tagged with the package version.

A compiled pipeline names images by this tag, and each image installs this package
at the same version, so the component code in the YAML and the code in the image
always agree. Build them with ``make images`` (``images/``).
"""

from __future__ import annotations

import os
from typing import Literal

from components.version import __version__

ImageKind = Literal["cpu", "gpu", "export"]
DEFAULT_REGISTRY = "ghcr.io/s2-sam-pipelines"
REGISTRY_ENV = "S2SAM_IMAGE_REGISTRY"
"""Set at compile time to point the compiled pipelines at your own registry."""


def image(kind: ImageKind) -> str:
    """Full reference of one image, e.g. ``ghcr.io/s2-sam-pipelines/s2sam-cpu:0.1.0``."""
    registry = os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY).rstrip("/")
    return f"{registry}/s2sam-{kind}:{__version__}"
