"""SAM inference: the model interface, its implementations, prompted and automatic modes.

Also the embedding cache. Imports only go down: to :mod:`components.core` and to the
raster reader of :mod:`components.io` that hands chips to the encoder.
"""
