"""The one version string of s2-sam-pipelines.

Packaging (setup.cfg), the container image tags and the compiled pipelines all
derive from it, so a compiled pipeline always names the image that holds the
same code.
"""

__version__ = "0.1.0"
