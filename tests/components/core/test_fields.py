from __future__ import annotations

import dataclasses
import math
from itertools import combinations, pairwise

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from components.core.fields import (
    NODING_GRID_M,
    CleaningResult,
    FieldCleaning,
    clean_fields,
    metres_per_unit,
    simplify_coverage,
)
from components.core.vectorize import MaskAttributes, polygonize_labels
from components.errors import InputError

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 4_000_000.0
PIXEL = 10.0
TRANSFORM = Affine(PIXEL, 0.0, X0, 0.0, -PIXEL, Y0)  # 10 m pixels, north up
OFF = {"simplify_m": 0.0, "min_area_m2": 0.0, "fill_holes_m2": 0.0}
"""Every step off: what a test turns on is the step under test."""

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def staircases(labels) -> list[Polygon | MultiPolygon]:
    """The vectoriser's polygons of a label raster (10 m pixels at UTM magnitudes)."""
    labels = np.asarray(labels, dtype=np.uint32)
    ids = [int(i) for i in np.unique(labels) if i]
    attributes = [MaskAttributes(i, None, 0.9, 0.9) for i in ids]
    return [p.geometry for p in polygonize_labels(labels, TRANSFORM, UTM, attributes)]


def clean(geometries, crs=UTM, **params) -> CleaningResult:
    return clean_fields(geometries, crs, FieldCleaning(**{**OFF, **params}))


def by_index(result: CleaningResult) -> dict[int, Polygon | MultiPolygon]:
    return {f.index: f.geometry for f in result.kept}


def slack(*geometries) -> float:
    """Float noise at these coordinates plus the noding grid's snap (half a cell, both axes)."""
    bounds = np.abs(shapely.bounds(np.asarray(geometries, dtype=object))).max()
    return 1e-9 * bounds + NODING_GRID_M


def check_invariants(inputs, result: CleaningResult) -> None:
    """Every input once; outputs valid polygons; no two outputs share area."""
    indices = sorted([f.index for f in result.kept] + [d.index for d in result.dropped])
    assert indices == list(range(len(inputs)))
    outputs = [f.geometry for f in result.kept]
    assert all(isinstance(g, Polygon | MultiPolygon) and not g.is_empty for g in outputs)
    assert shapely.is_valid(outputs).all(), [shapely.is_valid_reason(g) for g in outputs]
    for a, b in combinations(outputs, 2):
        assert a.intersection(b).area <= 1e-6


def shared_vertices(a, b) -> tuple[set, set]:
    """Vertices of ``a`` on ``b``'s boundary, and of ``b`` on ``a``'s."""

    def on(geometry, other):
        points = shapely.points(shapely.get_coordinates(geometry))
        return {p.coords[0] for p in points[shapely.dwithin(points, other.boundary, 1e-9)]}

    return on(a, b), on(b, a)


# --- parameters ----------------------------------------------------------------------


def test_defaults_and_their_one_sentence_docs():
    params = FieldCleaning()
    assert (params.simplify_m, params.min_area_m2, params.max_area_m2) == (5.0, 500.0, 0.0)
    assert (params.fill_holes_m2, params.opening_m) == (500.0, 0.0)
    for f in dataclasses.fields(FieldCleaning):
        doc = f.metadata["doc"]
        assert doc.endswith(".") and doc.count(". ") == 0, f.name


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(FieldCleaning)])
@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, "5", True, None])
def test_bad_parameters_name_themselves(name, value):
    with pytest.raises(InputError, match=name):
        FieldCleaning(**{name: value})


def test_a_maximum_below_the_minimum_is_refused():
    with pytest.raises(InputError, match=r"max_area_m2.*min_area_m2"):
        FieldCleaning(min_area_m2=1000, max_area_m2=999)
    assert FieldCleaning(min_area_m2=1000, max_area_m2=1000).max_area_m2 == 1000
    assert FieldCleaning(min_area_m2=np.int64(100), simplify_m=np.float32(2.5)).min_area_m2 == 100


# --- CRS ------------------------------------------------------------------------------


@pytest.mark.parametrize("crs", ["EPSG:4326", "OGC:CRS84", "EPSG:4979"])
def test_a_geographic_crs_is_refused_in_ground_units(crs):
    with pytest.raises(InputError, match="ground units"):
        clean_fields([box(10, 45, 10.01, 45.01)], crs)


def test_an_unknown_crs_is_an_input_error():
    with pytest.raises(InputError, match="CRS"):
        clean_fields([box(0, 0, 10, 10)], "not a crs")


def test_feet_are_converted_to_metres():
    """EPSG:2263 (US survey feet): tolerances and areas are ground metres all the same."""
    feet = metres_per_unit("EPSG:2263")
    assert feet == pytest.approx(0.3048006, rel=1e-6)
    side = 100.0  # ft: 929 m²
    square = box(1_000_000, 200_000, 1_000_000 + side, 200_000 + side)
    kept = clean([square], "EPSG:2263", min_area_m2=900).kept
    assert kept[0].area_m2 == pytest.approx(side**2 * feet**2, rel=1e-9)
    assert clean([square], "EPSG:2263", min_area_m2=930).dropped[0].reason == "too_small"
    # A 1-ft bump survives a 0.2 m tolerance (0.66 ft) and goes at 0.4 m (1.3 ft).
    bumped = Polygon([(0, 0), (50, 1), (100, 0), (100, 100), (0, 100)])
    assert len(by_index(clean([bumped], "EPSG:2263", simplify_m=0.2))[0].exterior.coords) == 6
    assert len(by_index(clean([bumped], "EPSG:2263", simplify_m=0.4))[0].exterior.coords) == 5


# --- inputs ---------------------------------------------------------------------------


def test_empty_and_missing_inputs_are_dropped_not_lost():
    result = clean([None, Polygon(), box(X0, Y0, X0 + 50, Y0 + 50)], min_area_m2=500)
    assert [(d.index, d.reason) for d in result.dropped] == [(0, "empty"), (1, "empty")]
    assert [f.index for f in result.kept] == [2]


@pytest.mark.parametrize("geometry", [Point(0, 0), LineString([(0, 0), (1, 1)])])
def test_non_polygons_are_refused(geometry):
    with pytest.raises(InputError, match="field 1 is a"):
        clean([box(0, 0, 1, 1), geometry])


def test_a_bow_tie_becomes_a_valid_multipolygon():
    bow_tie = Polygon([(X0, Y0), (X0 + 100, Y0 + 100), (X0 + 100, Y0), (X0, Y0 + 100)])
    assert not bow_tie.is_valid
    result = clean([bow_tie], simplify_m=5)
    check_invariants([bow_tie], result)
    (out,) = result.kept
    assert isinstance(out.geometry, MultiPolygon) and out.area_m2 == pytest.approx(5000)


def test_slivers_vanish_with_a_reason():
    """Thinner than the noding grid: nothing is left (empty); thicker: the area filter."""
    hair = box(X0, Y0, X0 + 100, Y0 + 1e-5)
    thin = box(X0, Y0 + 10, X0 + 100, Y0 + 10.05)
    result = clean([hair, thin], simplify_m=5, min_area_m2=500)
    assert [(d.index, d.reason) for d in result.dropped] == [(0, "empty"), (1, "too_small")]
    assert result.dropped[1].area_m2 == pytest.approx(5, rel=0.05)


# --- area filters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "kept"), [(24.999, False), (25.0, True), (50.0, True), (50.001, False)]
)
def test_area_filters_are_exact(height, kept):
    """Kept when 500 <= area <= 1000 m² (20 m wide fields)."""
    field = box(X0, Y0, X0 + 20, Y0 + height)
    result = clean([field], simplify_m=5, min_area_m2=500, max_area_m2=1000)
    assert bool(result.kept) is kept
    if not kept:
        (dropped,) = result.dropped
        assert dropped.reason == ("too_small" if height < 25 else "too_large")
        assert dropped.area_m2 == pytest.approx(20 * height)


def test_area_is_measured_after_cleaning():
    """A field of 10 pixels plus a 1-pixel spur: 1100 m² raw, 1000 m² once opened."""
    labels = np.zeros((5, 7), int)
    labels[1:3, 1:6] = 1
    labels[3, 3] = 1
    assert clean(staircases(labels), min_area_m2=1050).kept
    result = clean(staircases(labels), min_area_m2=1050, opening_m=5.0)
    assert result.dropped[0].reason == "too_small"


# --- holes ----------------------------------------------------------------------------


def ring_with_hole(hole_pixels: int) -> np.ndarray:
    labels = np.ones((8, 8), int)
    labels[2 : 2 + hole_pixels, 2:4] = 0  # a hole 2 pixels wide
    return labels


@pytest.mark.parametrize(("hole_pixels", "filled"), [(2, True), (3, False)])
def test_holes_below_the_threshold_are_filled(hole_pixels, filled):
    """400 m² is filled at 500 m², 600 m² stays."""
    (out,) = clean(staircases(ring_with_hole(hole_pixels)), fill_holes_m2=500).kept
    assert (len(out.geometry.interiors) == 0) is filled
    assert out.area_m2 == pytest.approx(6400 if filled else 6400 - 200 * hole_pixels)


def test_a_hole_another_field_occupies_is_not_filled():
    """A small field inside a hole keeps its place; nothing overlaps."""
    labels = ring_with_hole(2)
    labels[2, 2] = 2  # one pixel of the hole is another field, the rest is background
    inputs = staircases(labels)
    result = clean(inputs, fill_holes_m2=500)
    check_invariants(inputs, result)
    outer = by_index(result)[0]
    assert len(outer.interiors) == 1 and outer.area == pytest.approx(6000)


def test_a_hole_holding_a_crumb_of_the_same_field_is_filled_whole():
    labels = np.ones((8, 8), int)
    labels[2:5, 2:5] = 0
    labels[3, 3] = 1  # 4-connected to nothing: the field is a MultiPolygon
    (field,) = staircases(labels)
    assert isinstance(field, MultiPolygon)
    (out,) = clean([field], fill_holes_m2=1000).kept
    assert isinstance(out.geometry, Polygon) and not out.geometry.interiors
    assert out.area_m2 == pytest.approx(6400)


# --- opening --------------------------------------------------------------------------


def test_opening_removes_a_one_pixel_spur_and_keeps_square_corners():
    labels = np.zeros((9, 12), int)
    labels[1:6, 1:6] = 1
    labels[3, 6:10] = 1  # a spur 1 pixel wide, 4 long
    labels[1:6, 10:12] = 2  # a neighbour the spur touches
    inputs = staircases(labels)
    result = clean(inputs, opening_m=5.0)
    check_invariants(inputs, result)
    field, neighbour = by_index(result)[0], by_index(result)[1]
    assert shapely.equals(field, shapely.box(*shapely.bounds(field)))  # the 5x5 square
    assert field.area == pytest.approx(2500)
    assert shapely.equals(neighbour, inputs[1])


def test_a_field_narrower_than_the_opening_is_dropped_with_its_reason():
    labels = np.zeros((5, 8), int)
    labels[1, 1:7] = 1
    labels[3:5, 1:7] = 2
    result = clean(staircases(labels), opening_m=6.0)
    assert [(d.index, d.reason) for d in result.dropped] == [(0, "empty_after_opening")]
    assert [f.index for f in result.kept] == [1]


# --- simplification -------------------------------------------------------------------


def two_fields_with_a_staircase_between() -> list[Polygon | MultiPolygon]:
    """Two fields split by a 45° staircase of 10 m pixels, next to a third one."""
    rows, cols = np.mgrid[0:12, 0:16]
    labels = np.where(cols > rows + 2, 2, 1)
    labels[:, 14:] = 3
    return staircases(labels)


def test_a_shared_staircase_is_simplified_once_and_stays_shared():
    inputs = two_fields_with_a_staircase_between()
    result = clean(inputs, simplify_m=7.5)  # a 45° step of 10 m pixels is 7.07 m deep
    check_invariants(inputs, result)
    assert result.simplified
    a, b, c = (by_index(result)[i] for i in range(3))
    for left, right in ((a, b), (b, c)):
        shared = left.intersection(right)
        assert shared.length > 0 and shared.area == 0
        assert not left.overlaps(right)
        from_left, from_right = shared_vertices(left, right)
        assert from_left == from_right  # the same line, vertex for vertex, from both sides
    staircase = shapely.get_num_coordinates(inputs[0].intersection(inputs[1]))
    assert shapely.get_num_coordinates(a.intersection(b)) < staircase / 4
    assert sum(f.area_m2 for f in result.kept) == pytest.approx(sum(g.area for g in inputs))


def test_simplification_stays_within_the_tolerance_and_is_idempotent():
    inputs = two_fields_with_a_staircase_between()
    first = clean(inputs, simplify_m=7.5)
    again = clean([f.geometry for f in first.kept], simplify_m=7.5)
    assert len(again.kept) == len(first.kept) == 3
    for f, g in zip(first.kept, again.kept, strict=True):
        assert shapely.hausdorff_distance(f.geometry, inputs[f.index], densify=0.05) <= 7.5
        assert shapely.hausdorff_distance(g.geometry, f.geometry, densify=0.05) <= 7.5
        assert g.area_m2 == pytest.approx(f.area_m2, rel=0.05)


def test_a_tolerance_below_the_staircase_depth_keeps_most_of_it():
    """At the default 5 m a 45° staircase of 10 m pixels stays: its steps are 7.07 m deep
    (only the last step by each node, shallower against its chord, goes)."""
    inputs = two_fields_with_a_staircase_between()
    kept = by_index(clean(inputs, simplify_m=5.0))
    staircase = shapely.get_num_coordinates(inputs[0].intersection(inputs[1]))
    assert shapely.get_num_coordinates(kept[0].intersection(kept[1])) >= 0.8 * staircase
    for index, output in kept.items():
        assert shapely.hausdorff_distance(output, inputs[index], densify=0.05) <= 5.0


def test_overlapping_masks_are_simplified_without_merging():
    """Prompted masks may overlap: the overlap is a face of both, cleaned once."""
    discs = [Point(X0, Y0).buffer(100, quad_segs=16), Point(X0 + 120, Y0).buffer(80)]
    result = clean(discs, simplify_m=5)
    outputs = by_index(result)
    assert len(outputs) == 2 and shapely.is_valid(list(outputs.values())).all()
    for index, disc in enumerate(discs):
        assert shapely.hausdorff_distance(outputs[index], disc, densify=0.05) <= 5
        assert shapely.get_num_coordinates(outputs[index]) < shapely.get_num_coordinates(disc)
    overlap = discs[0].intersection(discs[1]).area
    assert outputs[0].intersection(outputs[1]).area == pytest.approx(overlap, rel=0.15)


def test_when_geos_breaks_the_topology_the_outlines_stay_unsimplified(monkeypatch):
    """A simplifier that collapses rings changes the faces: the noded input comes back."""
    simplify = shapely.simplify
    monkeypatch.setattr(
        shapely,
        "simplify",
        lambda geometry, tolerance, preserve_topology: simplify(
            geometry, tolerance, preserve_topology=False
        ),
    )
    squares = [box(X0 + 30 * i, Y0, X0 + 30 * i + 10, Y0 + 10) for i in range(3)]
    inputs = [Point(X0 + 40, Y0 + 50).buffer(60, quad_segs=16), *squares]
    outputs, simplified = simplify_coverage(inputs, 40.0, NODING_GRID_M)
    assert not simplified
    for output, field in zip(outputs, inputs, strict=True):
        assert shapely.hausdorff_distance(output, field) <= slack(field)
    assert not clean(inputs, simplify_m=40).simplified


def test_outputs_are_oriented_like_the_vectorisers():
    (out,) = clean(staircases(ring_with_hole(3)), simplify_m=5).kept
    assert out.geometry.exterior.is_ccw and not out.geometry.interiors[0].is_ccw


def test_nothing_in_nothing_out():
    assert clean_fields([], UTM) == CleaningResult((), (), True)


# --- properties -----------------------------------------------------------------------

labels_strategy = arrays(
    np.uint8, st.tuples(st.integers(2, 9), st.integers(2, 9)), elements=st.integers(0, 4)
)


@FAST
@given(
    labels=labels_strategy,
    simplify_m=st.sampled_from([0.0, 3.0, 5.0, 7.5, 15.0, 40.0]),
    opening_m=st.sampled_from([0.0, 3.0, 5.0, 8.0]),
    fill_holes_m2=st.sampled_from([0.0, 150.0, 500.0]),
    min_area_m2=st.sampled_from([0.0, 150.0, 500.0]),
)
def test_random_staircase_fields_stay_a_valid_coverage(
    labels, simplify_m, opening_m, fill_holes_m2, min_area_m2
):
    inputs = staircases(labels)
    result = clean(
        inputs,
        simplify_m=simplify_m,
        opening_m=opening_m,
        fill_holes_m2=fill_holes_m2,
        min_area_m2=min_area_m2,
    )
    check_invariants(inputs, result)
    assert all(f.area_m2 >= min_area_m2 for f in result.kept)
    assert all(d.reason != "empty" for d in result.dropped)  # pixels never collapse


@FAST
@given(labels=labels_strategy, simplify_m=st.sampled_from([3.0, 5.0, 7.5, 15.0, 40.0]))
def test_random_staircases_move_within_tolerance_and_keep_their_neighbours(labels, simplify_m):
    inputs = staircases(labels)
    result = clean(inputs, simplify_m=simplify_m)
    check_invariants(inputs, result)
    outputs = by_index(result)
    assert len(outputs) == len(inputs)
    for index, output in outputs.items():
        distance = shapely.hausdorff_distance(output, inputs[index], densify=0.05)
        assert distance <= simplify_m + slack(inputs[index])
    for i, j in combinations(range(len(inputs)), 2):
        if inputs[i].intersection(inputs[j]).length > 0:  # neighbours along an edge
            shared = outputs[i].intersection(outputs[j])
            assert shared.length > 0 and shared.area == 0
            from_i, from_j = shared_vertices(outputs[i], outputs[j])
            assert from_i == from_j


cuts = st.lists(st.integers(1, 39).map(lambda i: i * 25.1), max_size=5, unique=True)
"""Cells at least 25.1 m wide: every corner lies over 15 m (the largest tolerance) from
the chord between its neighbouring nodes, so nothing can be simplified away."""


@FAST
@given(xs=cuts, ys=cuts, simplify_m=st.sampled_from([0.0, 5.0, 15.0]))
def test_a_random_grid_partition_comes_back_unchanged(xs, ys, simplify_m):
    """Rectangles have nothing to simplify: same fields, same areas, still a coverage."""
    xs = [0.0, *sorted(xs), 1004.0]
    ys = [0.0, *sorted(ys), 1004.0]
    cells = [
        box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1)
        for x0, x1 in pairwise(xs)
        for y0, y1 in pairwise(ys)
    ]
    result = clean(cells, simplify_m=simplify_m)
    check_invariants(cells, result)
    assert len(result.kept) == len(cells)
    outputs = [f.geometry for f in result.kept]
    assert shapely.coverage_is_valid(shapely.GeometryCollection(outputs))
    for output, cell in zip(outputs, cells, strict=True):
        assert output.symmetric_difference(cell).area <= slack(cell) * cell.length
