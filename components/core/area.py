"""The area to ingest: a validated polygon in lon/lat, and the 10 m UTM grid it gets.

Everything a bad area can get wrong is checked here, before any network call, with
the input and the problem named: not JSON, not a polygon, empty, coordinates that are
not lon/lat, self-intersecting or otherwise invalid, crossing the antimeridian,
outside UTM, or larger than ``max_area_km2`` (a guard against a typo that would
download a continent; the default holds a whole 110 km Sentinel-2 tile with room), or
smaller than a pixel (lon/lat numbers under a projected ``crs``); size, nesting, features
and coordinates are bounded (:mod:`components.core.limits`), so bad input fails at once.

Accepted input is GeoJSON (RFC 7946, lon/lat): a ``Polygon`` or ``MultiPolygon``
geometry, a ``Feature`` holding one, or a ``FeatureCollection`` of them (their union
is the area: a farm of several fields is one area). The legacy ``crs`` member
(``{"type": "name", "properties": {"name": "EPSG:32633"}}``) is honoured, as the
prompt files do.

The output grid is in the UTM zone of the area's centroid (with the Norway and
Svalbard exceptions of MGRS, so an area inside a tile gets that tile's zone) and is
snapped to whole multiples of the resolution. Sentinel-2 tile origins are multiples
of 60 m, so in the tile's own zone every grid pixel coincides with a source pixel
(10 m bands) or lies inside exactly one (20 m bands): reading is then a copy, not a
resampling.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS, Geod, Transformer
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from components.core.geojson_crs import (
    LONLAT,
    check_projected,
    document_crs,
    finite_coordinates,
    load_document,
    short_repr,
    transformer,
)
from components.core.limits import MAX_FEATURES, MIN_AREA_M2
from components.errors import InputError

DEFAULT_MAX_AREA_KM2 = 15_000.0
"""Largest area accepted by default: a whole 110 x 110 km tile (12,100 km²) fits."""
UTM_LAT_RANGE = (-80.0, 84.0)
"""Latitudes covered by UTM zones (and by Sentinel-2's MGRS tiles)."""

DENSIFY_DEG = 0.001
"""Vertex spacing (about 100 m) before projecting edges, so curved edges keep their
extent: a straight lon/lat edge bows in UTM."""
DENSIFY_MAX_VERTICES = 100_000
"""Most vertices densifying adds: the spacing grows for longer outlines (over 100° or
10,000 km, far beyond any area limit) so the work stays bounded."""

_POLYGONAL = ("Polygon", "MultiPolygon")
_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
_POSITION = re.compile(r"\[\s*(-?[\d.eE+-]+)\s+(-?[\d.eE+-]+)\s*\]")


@dataclass(frozen=True)
class Area:
    """A validated area: a polygon or multipolygon in lon/lat."""

    geometry: Polygon | MultiPolygon
    area_km2: float
    """Geodesic area on the WGS 84 ellipsoid."""

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in degrees: what a STAC search takes."""
        west, south, east, north = self.geometry.bounds
        return (float(west), float(south), float(east), float(north))

    @property
    def centroid(self) -> tuple[float, float]:
        """``(lon, lat)`` of the centroid; it picks the output UTM zone."""
        point = self.geometry.centroid
        return (float(point.x), float(point.y))

    def to_geojson(self) -> dict[str, Any]:
        """The area as a GeoJSON geometry mapping (lon/lat)."""
        mapping: dict[str, Any] = json.loads(shapely.to_geojson(self.geometry))
        return mapping


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: where the output pixels lie."""

    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def crs(self) -> str:
        """``"EPSG:<code>"``, for rasterio and pyproj."""
        return f"EPSG:{self.epsg}"

    @property
    def resolution(self) -> float:
        """Pixel size in metres."""
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        right = left + self.width * self.transform.a
        bottom = top + self.height * self.transform.e
        return (float(left), float(bottom), float(right), float(top))

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)


def parse_area(
    geojson: str | Mapping[str, Any], max_area_km2: float = DEFAULT_MAX_AREA_KM2
) -> Area:
    """Validate an area given as GeoJSON text or a parsed mapping.

    Raises:
        ValueError: The geometry is unusable; the message names the feature and
            says what is wrong (see the module docstring for the rules).
    """
    if not (isinstance(max_area_km2, int | float) and max_area_km2 > 0):
        raise InputError(f"max_area_km2 must be a positive number, got {max_area_km2!r}")
    doc = _document(geojson)
    crs = document_crs(doc, "geometry ")
    parts = [_polygonal(where, geometry, crs) for where, geometry in _geometries(doc)]
    geometry = parts[0] if len(parts) == 1 else _union(parts)
    if not crs.equals(CRS.from_user_input(LONLAT)):
        geometry = _reproject(geometry, crs, CRS.from_user_input(LONLAT))
    _check_extent(geometry)
    area_km2 = geodesic_area_km2(geometry)
    if area_km2 <= 0.0:
        raise InputError("geometry has zero area: the area must be a polygon with an inside")
    if area_km2 * 1e6 < MIN_AREA_M2:
        raise InputError(
            f"geometry covers {area_km2 * 1e6:.4g} m², less than one 10 m pixel "
            f"({MIN_AREA_M2:g} m², MIN_AREA_M2): are the coordinates in the units of the "
            f"CRS {crs.name!r}?"
        )
    if area_km2 > max_area_km2:
        raise InputError(
            f"geometry covers {area_km2:,.1f} km², more than the limit of "
            f"{max_area_km2:,.1f} km² (max_area_km2); split the area or raise the limit"
        )
    if not isinstance(geometry, Polygon | MultiPolygon):  # pragma: no cover - union of polygons
        raise InputError(f"geometry union is a {geometry.geom_type}, not a polygon")
    return Area(geometry=geometry, area_km2=area_km2)


def _document(geojson: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """The GeoJSON object of the area, from text (within the limits) or as given."""
    doc = load_document(geojson, "geometry")
    if not isinstance(doc, Mapping):
        raise InputError(f"geometry must be a GeoJSON object, got {type(doc).__name__}")
    return doc


def _check_extent(geometry: BaseGeometry) -> None:
    """One side of the antimeridian, inside the latitudes where UTM (and S2 tiles) exist."""
    west, south, east, north = geometry.bounds
    if east - west > 180.0:
        raise InputError(
            f"geometry spans {east - west:.1f}° of longitude: areas crossing the "
            "antimeridian are not supported; ingest each side separately"
        )
    if south < UTM_LAT_RANGE[0] or north > UTM_LAT_RANGE[1]:
        raise InputError(
            f"geometry reaches latitude {south if south < UTM_LAT_RANGE[0] else north:.3f}, "
            f"outside the UTM range {UTM_LAT_RANGE} where Sentinel-2 tiles are defined"
        )


def geodesic_area_km2(geometry: BaseGeometry) -> float:
    """Area of a lon/lat geometry on the WGS 84 ellipsoid, in km²."""
    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(geometry)
    return abs(float(area)) / 1e6


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone (WGS 84) that holds ``(lon, lat)``.

    Zones are 6° wide from 180° W; MGRS widens zone 32V to 3°-12° E (Norway) and
    uses only odd zones 31X-37X at Svalbard; Sentinel-2 tiles follow MGRS, so these
    exceptions keep an area in the zone of the tiles that hold it.
    """
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90 or abs(lon) > 180:
        raise InputError(f"not a lon/lat position: ({lon!r}, {lat!r})")
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat <= 84.0 and 0.0 <= lon < 42.0:
        zone = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    return (32600 if lat >= 0.0 else 32700) + zone


def project(geometry: BaseGeometry, epsg: int) -> BaseGeometry:
    """A lon/lat geometry in ``EPSG:<epsg>``, edges densified so they keep their shape."""
    return _reproject(geometry, CRS.from_user_input(LONLAT), CRS.from_epsg(epsg))


def area_grid(
    area: Area, resolution: float = 10.0, margin_m: float = 0.0, epsg: int | None = None
) -> Grid:
    """The grid covering ``area`` plus ``margin_m``, snapped to multiples of ``resolution``.

    Args:
        area: The validated area.
        resolution: Pixel size in metres (10 for the output, 20 for SCL statistics).
        margin_m: Extra ground around the area's bounds on every side, in metres.
        epsg: The grid's CRS; default the UTM zone of the area's centroid.
    """
    if not (math.isfinite(resolution) and resolution > 0):
        raise InputError(f"resolution must be a positive number of metres, got {resolution!r}")
    if not (math.isfinite(margin_m) and margin_m >= 0):
        raise InputError(f"margin must be a non-negative number of metres, got {margin_m!r}")
    code = utm_epsg(*area.centroid) if epsg is None else epsg
    left, bottom, right, top = project(area.geometry, code).bounds
    return snapped_grid(
        (left - margin_m, bottom - margin_m, right + margin_m, top + margin_m), resolution, code
    )


def snapped_grid(bounds: tuple[float, float, float, float], resolution: float, epsg: int) -> Grid:
    """The smallest grid of whole ``resolution`` multiples that holds ``bounds``.

    Bounds within a thousandth of a pixel (1 cm at 10 m) of a grid line count as on
    it: projection noise must not add a row or column.
    """
    left, bottom, right, top = (v / resolution for v in bounds)
    eps = 1e-3
    col0, col1 = math.floor(left + eps), math.ceil(right - eps)
    row0, row1 = math.floor(bottom + eps), math.ceil(top - eps)
    width, height = max(1, col1 - col0), max(1, row1 - row0)
    transform = Affine(resolution, 0.0, col0 * resolution, 0.0, -resolution, row1 * resolution)
    return Grid(epsg, transform, width, height)


# --- parsing helpers -------------------------------------------------------------------


def _geometries(doc: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(where, geometry mapping)`` pairs of a Geometry, Feature or FeatureCollection."""
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, Sequence) or isinstance(features, str):
            raise InputError("FeatureCollection 'features' must be a list")
        if not features:
            raise InputError("geometry is empty: the FeatureCollection has no features")
        if len(features) > MAX_FEATURES:
            raise InputError(
                f"geometry has {len(features):,} features, more than the limit of "
                f"{MAX_FEATURES:,} (MAX_FEATURES)"
            )
        out = []
        for i, feature in enumerate(features):
            if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
                raise InputError(f"feature {i} is not a GeoJSON Feature")
            out.append((f"feature {i}", feature.get("geometry")))
        return out
    if kind == "Feature":
        return [("the feature", doc.get("geometry"))]
    if kind in _GEOMETRY_TYPES:
        return [("the geometry", doc)]
    raise InputError(
        "geometry must be a GeoJSON Polygon, MultiPolygon, Feature or FeatureCollection, "
        f"got type {short_repr(kind)}"
    )


def _polygonal(where: str, geometry: Any, crs: CRS) -> Polygon | MultiPolygon:
    """One validated polygonal geometry (still in its input CRS)."""
    if geometry is None:
        raise InputError(f"geometry is empty: {where} has no geometry")
    if not isinstance(geometry, Mapping):
        raise InputError(f"{where}: geometry must be a GeoJSON object")
    kind = geometry.get("type")
    if kind not in _POLYGONAL:
        raise InputError(
            f"{where} is a {kind}, not a polygon: the area must be a Polygon or MultiPolygon"
        )
    if not finite_coordinates(geometry.get("coordinates"), 4 if kind == "MultiPolygon" else 3):
        raise InputError(f"{where} has non-finite or non-numeric coordinates")
    try:
        geom = shape(geometry)
    except Exception as err:  # shapely raises several types for malformed input
        raise InputError(f"{where}: malformed {kind} coordinates ({err})") from err
    if geom.is_empty:
        raise InputError(f"geometry is empty: {where} has no coordinates")
    coords = shapely.get_coordinates(geom)
    check_projected(where, coords, crs)
    if crs.is_geographic:
        lon, lat = coords[:, 0], coords[:, 1]
        if (abs(lon) > 180).any() or (abs(lat) > 90).any():
            bad = coords[((abs(lon) > 180) | (abs(lat) > 90))][0]
            raise InputError(
                f"{where} has coordinates ({bad[0]:g}, {bad[1]:g}) outside lon/lat range: "
                "GeoJSON positions are longitude, latitude in degrees (projected "
                "coordinates need a 'crs' member)"
            )
    reason = shapely.is_valid_reason(geom)
    if reason != "Valid Geometry":
        raise InputError(f"{where} is {_describe_invalid(reason)}")
    assert isinstance(geom, Polygon | MultiPolygon)
    return geom


def _union(parts: list[Polygon | MultiPolygon]) -> BaseGeometry:
    """The union of the parts, unioning only the clusters of parts that meet.

    GEOS takes 12 s for 10,000 separate fields, 0.4 s for 10,000 adjacent ones.
    """
    left, right = shapely.STRtree(parts).query(parts, predicate="intersects")
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(len(parts), len(parts)))
    _, cluster = connected_components(graph, directed=False)
    order = np.argsort(cluster, kind="stable")
    pieces: list[Polygon] = []
    for members in np.split(order, np.flatnonzero(np.diff(cluster[order])) + 1):
        union = shapely.union_all([parts[i] for i in members])
        pieces += list(getattr(union, "geoms", [union]))
    return pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)


def _describe_invalid(reason: str) -> str:
    """GEOS's validity reason as a phrase: ``self-intersecting at (x, y)`` etc."""
    where = _POSITION.search(reason)
    at = f" at ({float(where.group(1)):g}, {float(where.group(2)):g})" if where else ""
    if "Self-intersection" in reason:
        return f"self-intersecting{at}: its edges cross (fix the ring order or split it)"
    return f"an invalid polygon: {reason.split('[')[0].strip().lower()}{at}"


def _reproject(geometry: BaseGeometry, src: CRS, dst: CRS) -> BaseGeometry:
    """``geometry`` from ``src`` to ``dst``, densified first (in ``src`` units)."""
    spacing = DENSIFY_DEG if src.is_geographic else DENSIFY_DEG * 1e5
    spacing = max(spacing, float(geometry.length) / DENSIFY_MAX_VERTICES)
    dense = shapely.segmentize(geometry, max_segment_length=spacing)
    to_dst = transformer(src, dst, "geometry")
    return shapely.transform(dense, lambda xy: _transform_xy(to_dst, xy))


def _transform_xy(to_dst: Transformer, xy: NDArray[np.float64]) -> NDArray[np.float64]:
    x, y = to_dst.transform(xy[:, 0], xy[:, 1])
    out = np.column_stack([x, y])
    if not np.isfinite(out).all():
        raise InputError("geometry cannot be projected: some positions fall outside the CRS")
    return out


# --- window arithmetic -----------------------------------------------------------------


def aligned_offset(
    transform: Affine, epsg: int | None, grid: Grid, tolerance: float = 1e-6
) -> tuple[int, int] | None:
    """``(col, row)`` of the grid's origin in a raster's pixels, when reading is a copy.

    That is when the raster is in the grid's CRS, north-up, with the same pixel size,
    and its pixel edges fall on the grid's (``tolerance`` in pixels); otherwise
    ``None`` and the raster has to be resampled onto the grid.
    """
    t, g = transform, grid.transform
    if epsg != grid.epsg or t.b != 0.0 or t.d != 0.0:
        return None
    if not (math.isclose(t.a, g.a, rel_tol=1e-9) and math.isclose(t.e, g.e, rel_tol=1e-9)):
        return None
    col = (g.c - t.c) / t.a
    row = (g.f - t.f) / t.e
    if abs(col - round(col)) > tolerance or abs(row - round(row)) > tolerance:
        return None
    return (round(col), round(row))


def axis_overlap(start: int, length: int, offset: int, size: int) -> tuple[int, int, int]:
    """Where ``length`` grid pixels from ``start`` meet a source axis of ``size`` pixels.

    The grid's pixel ``i`` is the source's pixel ``i + offset``. Returns
    ``(source_start, destination_start, count)``, destination relative to ``start``;
    ``count`` is 0 when they do not meet.
    """
    first = max(start + offset, 0)
    last = min(start + length + offset, size)
    if last <= first:
        return (0, 0, 0)
    return (first, first - offset - start, last - first)
