"""Adapters to the outside world: network, STAC, rasters, outputs and the model registry.

The network helper, STAC search and signing, COG reading and mosaicking, scene
rasters, segmentation outputs (COG, GeoParquet, PNG) and the MLflow model registry.
"""
