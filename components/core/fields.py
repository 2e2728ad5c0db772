"""Field polygons cleaned in ground units: holes filled, slivers opened, outlines simplified.

SAM's masks vectorised pixel by pixel (:mod:`components.core.vectorize`) are staircases
at the raster's resolution, with pinholes, one-pixel spurs and crumbs. Users compare them
with Fields of The World's ``ftw inference polygonize`` (simplified at 15 m, fields under
500 m² dropped) and samgeo's ``raster_to_vector``/``regularize``. :func:`clean_fields`
does the same kind of cleaning, as pure functions on one scene's polygons, in this order:

1. **fill holes** smaller than ``fill_holes_m2`` that no other field occupies, so a
   field inside a field keeps its place;
2. **open** (optional): ``buffer(-d).buffer(+d)`` with mitre joins, clipped to the
   field, which removes parts narrower than ``2 d`` and never grows a field;
3. **simplify the coverage**: every edge between two nodes of the polygons' shared line
   network is simplified *once* (Douglas-Peucker, topology-preserving), so an edge two
   fields share stays shared, touching fields never merge and no simplified edge crosses
   another (:func:`simplify_coverage`);
4. **filter by area**, measured on the cleaned outline.

Why not ``shapely.coverage_simplify``: it is Visvalingam-Whyatt, whose tolerance is the
square root of the triangle areas it removes, not a distance. On 10 m staircases it leaves
outlines untouched at 5 m and moves them up to twice the tolerance at 10 m; FTW's
tolerance, and ours, bounds how far an outline moves (the Hausdorff distance).

Nothing is lost silently: every input is either kept (:class:`CleanedField`) or dropped
with its reason (:class:`DroppedField`), and the caller writes the dropped ones into a
layer of their own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from components.core.vectorize import as_crs, oriented
from components.errors import InputError

DropReason = Literal[
    "empty", "empty_after_opening", "too_small", "too_large", "beyond_format_limits"
]
"""Why an input has no cleaned polygon: ``empty`` (empty input, or nothing left of it
once the coverage is noded), ``empty_after_opening``, ``too_small``, ``too_large``; and,
set by a writer after cleaning, ``beyond_format_limits`` (fiboa: area above 100,000 ha
or perimeter above 125 km, a lake or a cloud rather than a field)."""

NODING_GRID_M = 1e-3
"""Coarsest grid, in metres, the coverage's line network is snap-rounded to. Outlines
that should coincide but differ by float noise (after an opening, or from two rasters)
become one edge; a millimetre is far below any pixel, so no real shape changes. The grid
is a power of ten in the CRS's unit (1 mm, or 0.1 mm in feet), so round coordinates stay
where they are."""


@dataclass(frozen=True)
class FieldCleaning:
    """How field polygons are cleaned, in metres and square metres on the ground."""

    simplify_m: float = field(
        default=5.0,
        metadata={
            "doc": "Simplification tolerance in metres: how far an outline may move (0: off)."
        },
    )
    """Half a 10 m Sentinel-2 pixel: an outline moves no further than the rasterisation's
    own error, which flattens shallow staircases. A 45° staircase of 10 m pixels needs
    more than 7.1 m; FTW's ``polygonize`` uses 15 m."""
    min_area_m2: float = field(
        default=500.0,
        metadata={"doc": "Fields smaller than this, in m², are dropped (FTW's limit)."},
    )
    max_area_m2: float = field(
        default=0.0, metadata={"doc": "Fields larger than this, in m², are dropped (0: no limit)."}
    )
    fill_holes_m2: float = field(
        default=500.0, metadata={"doc": "Holes smaller than this, in m², are filled (0: off)."}
    )
    """The smallest field kept: a hole smaller than any field is noise, not a feature."""
    opening_m: float = field(
        default=0.0,
        metadata={"doc": "Opening distance in metres: parts narrower than twice it go (0: off)."},
    )
    """Off by default: it also removes whole fields narrower than ``2 * opening_m``."""

    def __post_init__(self) -> None:
        for name in ("simplify_m", "min_area_m2", "max_area_m2", "fill_holes_m2", "opening_m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and float(value) >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if 0 < self.max_area_m2 < self.min_area_m2:
            raise InputError(
                f"max_area_m2 ({self.max_area_m2}) is below min_area_m2 ({self.min_area_m2}): "
                "every field would be dropped"
            )


@dataclass(frozen=True)
class CleanedField:
    """One input's cleaned polygon."""

    index: int
    """Position of the input in the list given to :func:`clean_fields`."""
    geometry: Polygon | MultiPolygon
    """Valid; exterior rings counter-clockwise, holes clockwise (as the vectoriser's)."""
    area_m2: float


@dataclass(frozen=True)
class DroppedField:
    """One input that has no cleaned polygon, and why."""

    index: int
    reason: DropReason
    area_m2: float
    """Area when it was dropped: of the cleaned outline for the area filters, else 0."""


@dataclass(frozen=True)
class CleaningResult:
    """Every input once: kept or dropped, each in input order."""

    kept: tuple[CleanedField, ...]
    dropped: tuple[DroppedField, ...]
    simplified: bool
    """False when outlines were not simplified: ``simplify_m`` is 0, or GEOS could not
    keep the line network's topology (see :func:`simplify_coverage`); worth a warning."""


def metres_per_unit(crs: object) -> float:
    """Metres per unit of a projected CRS's axes; a geographic CRS is refused.

    Tolerances and areas are ground distances: in degrees they would change with
    latitude and direction, so the caller reprojects first (the scene's UTM zone).
    """
    try:
        crs = as_crs(crs)
    except ValueError as err:
        raise InputError(str(err)) from err
    unit = crs.axis_info[0] if crs.axis_info else None
    if not crs.is_projected or unit is None:
        raise InputError(
            f"field cleaning works in ground units: reproject the polygons from "
            f"{crs.name!r} to a projected CRS in metres (e.g. the scene's UTM zone) first"
        )
    return float(unit.unit_conversion_factor)


def _polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """The polygonal part of a geometry, valid, or ``None`` when there is none."""
    if not shapely.is_valid(geometry):
        geometry = shapely.make_valid(geometry)
    parts = [p for p in shapely.get_parts(geometry) if isinstance(p, Polygon) and not p.is_empty]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    joined = MultiPolygon(parts)
    # make_valid's collections may hold polygons that share edges: dissolve them.
    return joined if joined.is_valid else _polygonal(shapely.union_all(parts))


def _checked_input(index: int, geometry: Any) -> Polygon | MultiPolygon | None:
    """An input made valid (only if it is not), ``None`` if empty; non-polygons refused."""
    if geometry is None:
        return None
    if not isinstance(geometry, Polygon | MultiPolygon):
        kind = type(geometry).__name__
        raise InputError(f"field {index} is a {kind}: field cleaning takes polygons")
    return None if geometry.is_empty else _polygonal(geometry)


def _fill_holes(geoms: NDArray[Any], max_area: float) -> NDArray[Any]:
    """Each geometry with its holes under ``max_area`` filled, unless a field is in them.

    A hole another field occupies (even in part) is that field's place: filling it
    would make two fields overlap. Holes at or above ``max_area`` are real (a farmyard,
    a pond) and stay.
    """
    if max_area <= 0 or not shapely.get_num_interior_rings(shapely.get_parts(geoms)).any():
        return geoms
    tree = shapely.STRtree(geoms)
    out = geoms.copy()
    for i, geometry in enumerate(geoms):
        parts = shapely.get_parts(geometry)
        filled = [_filled(part, max_area, tree, i) for part in parts]
        if any(new is not old for new, old in zip(filled, parts, strict=True)):
            # A filled hole may hold a crumb of the same field: dissolve it in.
            out[i] = filled[0] if len(filled) == 1 else _polygonal(shapely.union_all(filled))
    return out


def _filled(part: Polygon, max_area: float, tree: shapely.STRtree, own: int) -> Polygon:
    """``part`` without its small, unoccupied holes (itself when none is filled)."""
    kept = []
    for ring in part.interiors:
        hole = Polygon(ring)
        others = [j for j in tree.query(hole, predicate="intersects").tolist() if j != own]
        occupied = bool(shapely.relate_pattern(hole, tree.geometries[others], "T********").any())
        if hole.area >= max_area or occupied:
            kept.append(ring)
    return part if len(kept) == len(part.interiors) else Polygon(part.exterior, kept)


def _opened(geoms: NDArray[Any], distance: float) -> list[Polygon | MultiPolygon | None]:
    """Morphological opening of each geometry by ``distance``; ``None`` when nothing is left.

    Mitre joins make the opening of a pixel outline the raster opening by a square, so
    a field's square corners and its straight shared edges stay where they are; round
    joins would cut every corner and open gaps between neighbours. The result is
    clipped to the input because regrowing an eroded polygon can reach past a
    chamfered corner into a neighbour.
    """
    eroded = shapely.buffer(geoms, -distance, join_style="mitre")
    regrown = shapely.buffer(eroded, distance, join_style="mitre")
    return [_polygonal(g) for g in shapely.intersection(geoms, regrown)]


def _edge_sets(faces: NDArray[Any], edges: NDArray[Any], eps: float) -> list[frozenset[int]]:
    """For each face, the indices of the edges on its boundary.

    An edge's midpoint lies on the boundary of exactly the faces on either side of it
    (edges meet only at their ends), so the set names a face whatever its coordinates.
    """
    midpoints = shapely.line_interpolate_point(edges, 0.5, normalized=True)
    face_index, edge_index = shapely.STRtree(midpoints).query(
        shapely.boundary(faces), predicate="dwithin", distance=eps
    )
    sets: list[set[int]] = [set() for _ in range(len(faces))]
    for f, e in zip(face_index.tolist(), edge_index.tolist(), strict=True):
        sets[f].add(e)
    return [frozenset(s) for s in sets]


def _simplified_faces(
    faces: NDArray[Any], edges: NDArray[Any], tolerance: float, eps: float
) -> NDArray[Any] | None:
    """``faces`` rebuilt from their edges simplified once each; ``None`` if that fails.

    GEOS's topology-preserving simplifier keeps each line's end points and lets no line
    cross another, so the simplified network has the same faces bounded by the same
    edges: a face is found again by its set of edges. It fails only if GEOS changes the
    network anyway (its documented limit: rings tiny next to the tolerance).
    """
    network = shapely.simplify(
        shapely.MultiLineString(edges.tolist()), tolerance, preserve_topology=True
    )
    simple = shapely.get_parts(network)
    if len(simple) != len(edges):
        return None
    new_faces = shapely.get_parts(shapely.polygonize(simple))
    where = {s: j for j, s in enumerate(_edge_sets(new_faces, simple, eps))}
    old_sets = _edge_sets(faces, edges, eps)
    if len(where) != len(faces) or any(s not in where for s in old_sets):
        return None
    return np.array([new_faces[where[s]] for s in old_sets], dtype=object)


def simplify_coverage(
    geometries: Sequence[Polygon | MultiPolygon], tolerance: float, grid_size: float
) -> tuple[list[Polygon | MultiPolygon | None], bool]:
    """Each polygon simplified within ``tolerance``, shared edges simplified once.

    All outlines are noded together (snap-rounded to ``grid_size``) into one line
    network; each edge between two nodes is simplified once, so two fields that share it
    get the same line, and the faces are rebuilt and handed back to the inputs they lie
    in. Polygons that overlap (prompted masks) work too: their overlap is a face of both.
    Units are the CRS's. ``None`` for an input with no face left (thinner than the grid).

    Every boundary point moves at most ``tolerance`` (Douglas-Peucker's bound). The
    flag says whether outlines were simplified: they are not, only noded, when
    ``tolerance`` is 0 or GEOS cannot keep the network's topology.
    """
    geoms = np.asarray(geometries, dtype=object)
    if len(geoms) == 0:
        return [], tolerance > 0
    lines = shapely.union_all(shapely.boundary(geoms), grid_size=grid_size)
    edges = shapely.get_parts(shapely.line_merge(lines))
    faces = shapely.get_parts(shapely.polygonize(edges))
    owners, members = shapely.STRtree(geoms).query(
        shapely.point_on_surface(faces), predicate="within"
    )
    simplified = _simplified_faces(faces, edges, tolerance, grid_size / 10) if tolerance else None
    faces = faces if simplified is None else simplified
    pieces: list[list[Polygon]] = [[] for _ in range(len(geoms))]
    for face, member in zip(owners.tolist(), members.tolist(), strict=True):
        pieces[member].append(faces[face])
    return [_joined(p) for p in pieces], simplified is not None


def _joined(faces: list[Polygon]) -> Polygon | MultiPolygon | None:
    """One input's faces as one valid geometry (faces of an arrangement never overlap)."""
    if len(faces) <= 1:
        return _polygonal(faces[0]) if faces else None
    return _polygonal(shapely.coverage_union_all(faces))


def _verdict(
    index: int, geometry: Polygon | MultiPolygon | None, scale: float, params: FieldCleaning
) -> CleanedField | DroppedField:
    """Keep or drop one cleaned field: kept when ``min_area_m2 <= area <= max_area_m2``."""
    if geometry is None:
        return DroppedField(index, "empty", 0.0)
    area = float(geometry.area) * scale**2
    if area < params.min_area_m2:
        return DroppedField(index, "too_small", area)
    if params.max_area_m2 and area > params.max_area_m2:
        return DroppedField(index, "too_large", area)
    return CleanedField(index, oriented(geometry), area)


def clean_fields(
    geometries: Sequence[BaseGeometry | None],
    crs: object,
    params: FieldCleaning | None = None,
) -> CleaningResult:
    """Clean one scene's field polygons; each input is kept or dropped with its reason.

    Args:
        geometries: Polygons or MultiPolygons in ``crs``, e.g. the vectoriser's
            :class:`~components.core.vectorize.SegmentPolygon` geometries. They may
            touch (instance labels: a coverage) or overlap (prompted masks). Invalid
            ones are made valid first; ``None`` or empty ones are dropped as ``empty``.
        crs: A projected CRS (anything pyproj takes); tolerances and areas are
            converted with its axis unit, so feet work too.
        params: The cleaning; :class:`FieldCleaning`'s defaults when ``None``.

    Returns:
        Every input exactly once, in ``kept`` or ``dropped``. Two inputs never become
        one output, and fields that shared an edge still share it.

    Raises:
        InputError: A geographic or unknown CRS, or a geometry that is not polygonal.
    """
    params = params or FieldCleaning()
    scale = metres_per_unit(crs)
    dropped: list[DroppedField] = []
    work: dict[int, Polygon | MultiPolygon] = {}
    for index, geometry in enumerate(geometries):
        checked = _checked_input(index, geometry)
        if checked is None:
            dropped.append(DroppedField(index, "empty", 0.0))
        else:
            work[index] = checked
    filled = _fill_holes(
        np.array(list(work.values()), dtype=object), params.fill_holes_m2 / scale**2
    )
    work = dict(zip(work, filled, strict=True))
    if params.opening_m > 0:
        opened = _opened(np.array(list(work.values()), dtype=object), params.opening_m / scale)
        for index, geometry in zip(list(work), opened, strict=True):
            if geometry is None:
                dropped.append(DroppedField(index, "empty_after_opening", 0.0))
                del work[index]
            else:
                work[index] = geometry
    grid = 10.0 ** math.floor(math.log10(NODING_GRID_M / scale))
    cleaned, simplified = simplify_coverage(list(work.values()), params.simplify_m / scale, grid)
    verdicts = [_verdict(i, g, scale, params) for i, g in zip(work, cleaned, strict=True)]
    kept = [v for v in verdicts if isinstance(v, CleanedField)]
    dropped += [v for v in verdicts if isinstance(v, DroppedField)]
    return CleaningResult(tuple(kept), tuple(sorted(dropped, key=lambda d: d.index)), simplified)
