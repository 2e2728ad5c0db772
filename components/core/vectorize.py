"""Segment masks to polygons in the scene's CRS, one record per instance.

Polygonisation uses ``rasterio.features.shapes`` with **4-connectivity**: pixels of
one instance that touch only at a corner become separate parts of the instance's
MultiPolygon. 8-connectivity would join them into one ring that touches itself at
that corner: an invalid OGC polygon, which GEOS-based readers of the GeoParquet
then reject or silently "repair" in overlays. With 4-connectivity GDAL's rings are
valid as they come, and the instance still stays one row, so nothing is lost.

Each record carries ``area_m2``: planar area for a projected CRS (scaled to
metres by the CRS's axis unit), geodesic area on the CRS's ellipsoid for a
geographic one, so areas are comparable whatever CRS a scene comes in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyproj
import shapely
from affine import Affine
from numpy.typing import ArrayLike, NDArray
from pyproj.exceptions import CRSError
from rasterio.features import shapes
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.polygon import orient

CONNECTIVITY = 4
"""Pixel connectivity of polygon parts (see the module docstring)."""

BACKGROUND = 0
"""Label of pixels that belong to no instance."""


@dataclass(frozen=True)
class MaskAttributes:
    """What SAM said about one mask, carried to its polygon."""

    id: int
    """Instance id: the mask's label in a label raster; unique per output."""
    prompt_id: int | str | None
    """The user prompt that produced the mask; ``None`` in automatic mode."""
    predicted_iou: float
    stability_score: float


@dataclass(frozen=True)
class SegmentPolygon:
    """One instance as a vector feature, in the scene's CRS."""

    geometry: Polygon | MultiPolygon
    """Polygon, or MultiPolygon when the instance falls apart into pieces; exterior
    rings counter-clockwise, holes clockwise (GeoParquet's recommended orientation)."""
    id: int
    prompt_id: int | str | None
    predicted_iou: float
    stability_score: float
    area_m2: float
    pixel_count: int

    def as_record(self) -> dict[str, object]:
        """Flat mapping of column name to value, geometry included, for a table row."""
        return {
            "id": self.id,
            "prompt_id": self.prompt_id,
            "predicted_iou": self.predicted_iou,
            "stability_score": self.stability_score,
            "area_m2": self.area_m2,
            "pixel_count": self.pixel_count,
            "geometry": self.geometry,
        }


def as_crs(crs: object) -> pyproj.CRS:
    """A pyproj CRS from anything ``pyproj.CRS.from_user_input`` takes."""
    try:
        return pyproj.CRS.from_user_input(crs)
    except CRSError as err:
        raise ValueError(f"{crs!r} is not a CRS pyproj understands") from err


def oriented(geometry: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """Exterior rings counter-clockwise, holes clockwise."""
    if isinstance(geometry, MultiPolygon):
        return MultiPolygon([orient(part) for part in geometry.geoms])
    return orient(geometry)


def area_m2(geometry: Polygon | MultiPolygon, crs: object) -> float:
    """Area in square metres of a geometry in ``crs`` (anything pyproj accepts).

    Projected: planar area times the axis unit's metre factor squared (map area;
    UTM's scale error is below 0.1 %). Geographic: geodesic area on the CRS's
    ellipsoid, with x as longitude as in rasterio's transforms.
    """
    crs = as_crs(crs)
    unit = crs.axis_info[0] if crs.axis_info else None
    if crs.is_geographic and unit is not None:
        degrees = unit.unit_conversion_factor / math.radians(1.0)
        if not math.isclose(degrees, 1.0, rel_tol=1e-9):  # grads and the like
            geometry = shapely.transform(geometry, lambda xy: xy * degrees)
        geod = crs.get_geod()
        if geod is None:
            raise ValueError(f"geographic CRS {crs.name!r} has no ellipsoid to measure on")
        # pyproj adds hole areas with their sign: holes must wind against the shell.
        signed, _ = geod.geometry_area_perimeter(oriented(geometry))
        return abs(float(signed))
    if crs.is_projected and unit is not None:
        return float(geometry.area) * unit.unit_conversion_factor**2
    raise ValueError(f"cannot measure areas in CRS {crs.name!r}: neither projected nor geographic")


def _attributes_by_id(attributes: Iterable[MaskAttributes]) -> dict[int, MaskAttributes]:
    """Attributes keyed by instance id; ids must be unique (they key the output)."""
    by_id: dict[int, MaskAttributes] = {}
    for attrs in attributes:
        if attrs.id in by_id:
            raise ValueError(f"duplicate instance id {attrs.id} in the mask attributes")
        by_id[attrs.id] = attrs
    return by_id


def _instances(index: NDArray[np.int32], transform: Affine) -> dict[int, tuple[list[Polygon], int]]:
    """Polygon parts in CRS coordinates and pixel count of each non-zero value."""
    values: list[int] = []
    pixel_parts: list[Polygon] = []
    for geojson, value in shapes(index, mask=index != BACKGROUND, connectivity=CONNECTIVITY):
        values.append(int(value))
        pixel_parts.append(shape(geojson))
    if not pixel_parts:
        return {}
    # Polygonising in pixel space gives integer vertices, so areas are exact pixel
    # counts: no bincount over ids that may be sparse and large.
    pixels = np.rint(shapely.area(pixel_parts)).astype(np.int64)
    a, b, c, d, e, f = transform[:6]
    parts = shapely.transform(
        np.asarray(pixel_parts, dtype=object),
        lambda xy: np.column_stack(
            [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]
        ),
    )
    out: dict[int, tuple[list[Polygon], int]] = {}
    for value, part, count in zip(values, parts, pixels.tolist(), strict=True):
        polygons, total = out.get(value, ([], 0))
        polygons.append(part)
        out[value] = (polygons, total + count)
    return out


def _segment(
    parts: list[Polygon], attrs: MaskAttributes, pixel_count: int, crs: pyproj.CRS
) -> SegmentPolygon:
    geometry = oriented(parts[0] if len(parts) == 1 else MultiPolygon(parts))
    return SegmentPolygon(
        geometry=geometry,
        id=attrs.id,
        prompt_id=attrs.prompt_id,
        predicted_iou=attrs.predicted_iou,
        stability_score=attrs.stability_score,
        area_m2=area_m2(geometry, crs),
        pixel_count=pixel_count,
    )


def polygonize_labels(
    labels: ArrayLike,
    transform: Affine,
    crs: object,
    attributes: Iterable[MaskAttributes],
) -> list[SegmentPolygon]:
    """Polygons of an instance label raster, one per id present, in id order.

    Args:
        labels: ``(H, W)`` integer ids in ``[0, 2**31)`` (e.g. uint32), 0 = background.
        transform: Pixel-to-CRS transform of ``labels`` (the scene's, or a window's).
        crs: The raster's CRS, anything ``pyproj.CRS.from_user_input`` takes.
        attributes: One entry per id; entries for ids absent from ``labels``
            (masks fully overwritten in the merge) are ignored.

    Raises:
        ValueError: A non-integer label raster, ids out of range, or an id
            without attributes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a (height, width) label raster, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label raster must hold integer ids, got dtype {labels.dtype}")
    by_id = _attributes_by_id(attributes)
    if labels.size == 0:
        return []
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > np.iinfo(np.int32).max:
        # GDAL's polygoniser reads int32 at most (float32 is exact only to 2**24).
        raise ValueError(f"label ids must lie in [0, 2**31), got [{low}, {high}]")
    instances = _instances(labels.astype(np.int32, copy=False), transform)
    missing = sorted(set(instances) - set(by_id))
    if missing:
        raise ValueError(f"no attributes for instance ids {missing[:10]} (of {len(missing)})")
    crs = as_crs(crs)
    return [
        _segment(parts, by_id[value], pixel_count, crs)
        for value, (parts, pixel_count) in sorted(instances.items())
    ]


def polygonize_masks(
    masks: ArrayLike,
    transform: Affine,
    crs: object,
    attributes: Sequence[MaskAttributes],
) -> list[SegmentPolygon]:
    """Polygons of binary masks, e.g. one band per prompt; masks may overlap.

    Args:
        masks: ``(N, H, W)`` boolean or integer masks, non-zero = inside;
            threshold probabilities or logits before.
        transform: Pixel-to-CRS transform of the masks.
        crs: The raster's CRS, anything ``pyproj.CRS.from_user_input`` takes.
        attributes: ``N`` entries, the i-th describing mask i; ids unique.

    Returns:
        One record per non-empty mask, in band order; empty masks give none.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (masks, height, width), got shape {masks.shape}")
    if not (masks.dtype == np.bool_ or np.issubdtype(masks.dtype, np.integer)):
        raise ValueError(f"masks must be boolean or integer, got dtype {masks.dtype}")
    if len(attributes) != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {len(attributes)} attribute entries")
    _attributes_by_id(attributes)
    crs = as_crs(crs)
    out = []
    for mask, attrs in zip(masks, attributes, strict=True):
        inside = mask != 0
        rows = np.flatnonzero(inside.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(inside.any(axis=0))
        # Polygonise the mask's bounding box only: GDAL's cost grows with the
        # pixels it scans, and a prompt's mask is small next to its window.
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = inside[r0:r1, c0:c1].astype(np.int32)
        parts, pixel_count = _instances(box, transform @ Affine.translation(c0, r0))[1]
        out.append(_segment(parts, attrs, pixel_count, crs))
    return out


def merge_pieces(pieces: Iterable[SegmentPolygon], crs: object) -> list[SegmentPolygon]:
    """One record per instance from pieces of it polygonised block by block.

    Blocks share edges exactly (pixel corners), so the union of an instance's pieces is
    the polygon a single pass over the whole raster would give; pixel counts add up.
    """
    by_id: dict[int, list[SegmentPolygon]] = {}
    for piece in pieces:
        by_id.setdefault(piece.id, []).append(piece)
    crs = as_crs(crs)
    out = []
    for _, parts in sorted(by_id.items()):
        if len(parts) == 1:
            out.append(parts[0])
            continue
        union = shapely.union_all([p.geometry for p in parts])
        polygons = [g for g in getattr(union, "geoms", [union]) if isinstance(g, Polygon)]
        attrs = MaskAttributes(
            parts[0].id, parts[0].prompt_id, parts[0].predicted_iou, parts[0].stability_score
        )
        out.append(_segment(polygons, attrs, sum(p.pixel_count for p in parts), crs))
    return out
