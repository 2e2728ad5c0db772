"""Pixel boxes: the one window type of the core, in scene (or chip) pixel coordinates.

A :data:`Box` is half-open, ``(x0, y0, x1, y1)``: columns ``[x0, x1)`` and rows
``[y0, y1)``, the order of SAM's XYXY boxes and of shapely's bounds. Rasterio's
``Window`` (column offset, row offset, width, height) is made from it only where a
raster is read or written (:func:`components.io.raster`, :mod:`components.io.outputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray

from components.errors import InputError

Box = tuple[int, int, int, int]
"""Half-open pixel box ``(x0, y0, x1, y1)``: columns ``[x0, x1)``, rows ``[y0, y1)``."""


def mask_box(mask: NDArray[np.bool_]) -> Box | None:
    """Tight half-open box of a 2-D mask, ``None`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def intersect_boxes(a: Box, b: Box) -> Box | None:
    """Intersection of two half-open boxes, ``None`` when they share no pixel."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    if x0 >= x1 or y0 >= y1:
        return None
    return (x0, y0, x1, y1)


def union_box(a: Box, b: Box) -> Box:
    """Smallest box holding both boxes."""
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def overlapping_pairs(boxes: Sequence[Box]) -> NDArray[np.int64]:
    """Index pairs ``(i, j)``, ``i < j``, of boxes that share at least one pixel."""
    if len(boxes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(boxes, dtype=np.float64)
    # shrink by a hair so boxes that only touch along an edge do not pair up
    geoms = shapely.box(arr[:, 0] + 0.25, arr[:, 1] + 0.25, arr[:, 2] - 0.25, arr[:, 3] - 0.25)
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms, predicate="intersects")
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)


def box_shape(box: Box) -> tuple[int, int]:
    """``(height, width)`` of a box: the shape of an array that covers it."""
    return box[3] - box[1], box[2] - box[0]


UPSAMPLE_FACTORS = (1, 2, 3)
"""Scales segmentation may work at: a 1 ha field is 100 px at 10 m, 400 px at 2x."""


@dataclass(frozen=True)
class WorkGrid:
    """The pixel grid segmentation works on: the scene's, resampled by ``upsample``.

    Chips, prompts in pixels, masks and the cross-chip merge all live on this grid, so
    they need not know the factor; only reading chips (from the scene) and writing the
    outputs (back on the scene's grid) do. With ``upsample == 1`` it is the scene's grid.
    """

    height: int
    width: int
    transform: Affine
    upsample: int

    @classmethod
    def of(cls, height: int, width: int, transform: Affine, upsample: int = 1) -> WorkGrid:
        """The working grid of a ``height`` x ``width`` scene with ``transform``."""
        if upsample not in UPSAMPLE_FACTORS:
            raise ValueError(f"upsample must be one of {UPSAMPLE_FACTORS}, got {upsample!r}")
        scale = Affine.scale(1.0 / upsample)
        return cls(height * upsample, width * upsample, transform @ scale, upsample)

    def lattice_origin(self) -> tuple[int, int]:
        """``(row, col)`` of this grid's first pixel on its CRS's pixel lattice.

        Pixel ``(0, 0)`` of the lattice has its corner at the CRS origin; two windows
        of one raster (or of two rasters on one grid, as Sentinel-2 tiles of a UTM zone
        are) differ here by exactly their pixel offset, which is what a map-anchored
        chip grid needs. At ``upsample`` f the lattice is f times finer.

        Raises:
            InputError: The grid is rotated or sheared (not north-up).
        """
        t = self.transform
        if t.b != 0 or t.d != 0:
            raise InputError(
                "chip_anchor='map' needs a north-up raster (no rotation or shear in its "
                f"transform), got {tuple(t)[:6]}"
            )
        return round(t.f / t.e), round(t.c / t.a)

    def source_window(self, box: Box) -> Box:
        """The scene pixels a working-grid box lies in (rounded outwards)."""
        f = self.upsample
        x0, y0, x1, y1 = box
        return (x0 // f, y0 // f, -(-x1 // f), -(-y1 // f))
