"""Seams end to end in the pure core: chips -> per-chip masks -> merge -> polygons.

The scene is a window of a larger georeferenced raster (its origin is not at the
raster's pixel (0, 0)), which is exactly where FarmVibes' two-frame box comparison
loses or duplicates masks. Objects are defined as polygons in the CRS; a perfect
per-chip segmenter returns each object's visible part in every chip; after merge
and vectorisation each object must come back once, in the right place, uncut.
"""

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize

from components.core.chips import chip_grid
from components.core.merge import masks_from_chip, merge_automatic
from components.core.rendering import render_labels
from components.core.vectorize import MaskAttributes, polygonize_labels

CRS = "EPSG:32633"
SOURCE_TRANSFORM = Affine(10.0, 0.0, 359130.0, 0.0, -10.0, 5352340.0)  # a 10 m UTM raster
ROW_OFF, COL_OFF = 1311, 2047  # the scene's window in that raster
SHAPE = (700, 900)
CHIP = 256


def scene_transform():
    return SOURCE_TRANSFORM @ Affine.translation(COL_OFF, ROW_OFF)


def fields_in_crs():
    """Axis-aligned parcels (in whole pixels) placed across the chip seams."""
    t = scene_transform()

    def parcel(col0, row0, col1, row1):
        x0, y0 = t @ (col0, row0)
        x1, y1 = t @ (col1, row1)
        return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    return [
        parcel(100, 100, 180, 170),  # across the first column seam
        parcel(200, 220, 300, 290),  # across a row and a column seam
        parcel(40, 400, 860, 450),  # longer than any chip: stitched from fragments
        parcel(600, 620, 700, 700),  # on the scene's bottom border
        parcel(0, 0, 50, 60),  # in the top-left corner
    ]


def test_each_field_comes_back_once_in_the_right_place():
    grid = chip_grid(*SHAPE, size=CHIP, spatial_overlap=0.5)
    assert len(grid) > 12
    transform = scene_transform()
    fields = fields_in_crs()
    truth = [
        rasterize([f], out_shape=SHAPE, transform=transform, dtype=np.uint8).astype(bool)
        for f in fields
    ]
    rng = np.random.default_rng(0)
    masks = []
    for chip in grid:
        stack = []
        for obj in truth:
            local = np.zeros((CHIP, CHIP), dtype=bool)
            h, w = chip.valid_height, chip.valid_width
            local[:h, :w] = obj[chip.row : chip.row + h, chip.col : chip.col + w]
            if local.any():
                stack.append(local)
        if stack:
            n = len(stack)
            masks += masks_from_chip(
                chip, np.stack(stack), rng.uniform(0.9, 1, n), rng.uniform(0.9, 1, n)
            )

    merged = merge_automatic(masks, grid)
    labels = render_labels(merged, (0, 0, SHAPE[1], SHAPE[0]))
    attrs = [
        MaskAttributes(k + 1, None, m.predicted_iou, m.stability_score)
        for k, m in enumerate(merged)
    ]
    polygons = polygonize_labels(labels, transform, CRS, attrs)

    assert len(polygons) == len(fields)
    for field in fields:
        hits = [p for p in polygons if p.geometry.intersects(field)]
        assert len(hits) == 1, f"field {field.bounds} came back {len(hits)} times"
        assert hits[0].geometry.symmetric_difference(field).area < 1e-6
        assert abs(hits[0].area_m2 - field.area) < 1e-6
