from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from pyproj import Transformer

from components.core.area import (
    Grid,
    aligned_offset,
    area_grid,
    axis_overlap,
    geodesic_area_km2,
    parse_area,
    project,
    snapped_grid,
    utm_epsg,
)
from components.core.limits import MAX_FEATURES, MAX_GEOJSON_BYTES
from components.errors import InputError

TO_LONLAT = Transformer.from_crs(32633, 4326, always_xy=True)


def utm_rect(left, bottom, right, top, n=16):
    """A UTM 33 rectangle as a lon/lat ring (densified)."""
    t = np.linspace(0, 1, n, endpoint=False)
    xs = np.concatenate(
        [left + t * (right - left), np.full(n, right), right - t * (right - left), np.full(n, left)]
    )
    ys = np.concatenate(
        [np.full(n, bottom), bottom + t * (top - bottom), np.full(n, top), top - t * (top - bottom)]
    )
    lon, lat = TO_LONLAT.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    return [*ring, ring[0]]


SQUARE = {"type": "Polygon", "coordinates": [utm_rect(279500, 5352000, 280500, 5353000)]}


# --- accepted forms ----------------------------------------------------------------------


def test_polygon_feature_and_collection_give_the_same_area():
    feature = {"type": "Feature", "properties": {}, "geometry": SQUARE}
    collection = {"type": "FeatureCollection", "features": [feature]}
    areas = [parse_area(doc) for doc in (SQUARE, feature, collection, json.dumps(collection))]
    assert all(a.geometry.equals(areas[0].geometry) for a in areas)
    # 1 km² in UTM; UTM's scale factor near 12° E (k ~ 0.9997) makes it ~0.1% more on the ground
    assert areas[0].area_km2 == pytest.approx(1.0, rel=3e-3)
    west, south, east, north = areas[0].bbox
    assert 12.0 < west < east < 12.1 and 48.2 < south < north < 48.4


def test_a_collection_of_fields_is_their_union():
    a = {"type": "Feature", "properties": {}, "geometry": SQUARE}
    b = {
        "type": "Feature",
        "properties": {},
        "geometry": {
            "type": "Polygon",
            "coordinates": [utm_rect(281000, 5352000, 281500, 5352500)],
        },
    }
    area = parse_area({"type": "FeatureCollection", "features": [a, b]})
    assert area.geometry.geom_type == "MultiPolygon"
    assert area.area_km2 == pytest.approx(1.25, rel=3e-3)


def test_multipolygon_is_accepted():
    doc = {"type": "MultiPolygon", "coordinates": [SQUARE["coordinates"]]}
    assert parse_area(doc).area_km2 == pytest.approx(1.0, rel=3e-3)


def test_legacy_crs_member_is_honoured():
    utm = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [279500, 5352000],
                            [280500, 5352000],
                            [280500, 5353000],
                            [279500, 5353000],
                            [279500, 5352000],
                        ]
                    ],
                },
            }
        ],
    }
    area = parse_area(utm)
    left, bottom, right, top = project(area.geometry, 32633).bounds
    assert (left, bottom, right, top) == pytest.approx((279500, 5352000, 280500, 5353000), abs=0.01)


def test_geojson_roundtrip():
    area = parse_area(SQUARE)
    assert parse_area(area.to_geojson()).geometry.equals(area.geometry)


# --- rejected input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a GeoJSON object"),
        ({"type": "Topology"}, "got type 'Topology'"),
        ({"type": "Point", "coordinates": [12.0, 48.0]}, "is a Point, not a polygon"),
        (
            {"type": "LineString", "coordinates": [[12, 48], [12.1, 48.1]]},
            "LineString, not a polygon",
        ),
        ({"type": "Feature", "properties": {}, "geometry": None}, "empty"),
        ({"type": "FeatureCollection", "features": []}, "empty"),
        (
            {"type": "FeatureCollection", "features": [{"type": "Polygon"}]},
            "feature 0 is not a GeoJSON Feature",
        ),
        ({"type": "Polygon", "coordinates": []}, "empty"),
        ({"type": "Polygon", "coordinates": [[[12, 48], [12.1, 48]]]}, "malformed Polygon"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[12, 48], [12.1, 48.1], [12.1, 48], [12, 48.1], [12, 48]]],
            },
            "self-intersecting at (12.05, 48.05)",
        ),
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [[279500, 5352000], [280500, 5352000], [280500, 5353000], [279500, 5352000]]
                ],
            },
            "outside lon/lat range",
        ),
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [[179.9, 10], [-179.9, 10], [-179.9, 10.1], [179.9, 10.1], [179.9, 10]]
                ],
            },
            "antimeridian",
        ),
        (
            {
                "type": "Polygon",
                "coordinates": [[[10, 84.5], [10.1, 84.5], [10.1, 84.6], [10, 84.5]]],
            },
            "outside the UTM range",
        ),
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [[12, 48], [12.1, 48], [12.1, 48.1], [12, 48]],
                    [[13, 48], [13.1, 48], [13.1, 48.1], [13, 48]],
                ],
            },
            "an invalid polygon: hole lies outside shell at (13",
        ),
        ({**SQUARE, "crs": {"type": "link"}}, "unsupported geometry 'crs' member"),
        ({**SQUARE, "crs": {"type": "name", "properties": {"name": "EPSG:999999"}}}, "not a CRS"),
    ],
)
def test_bad_geometry_is_named(doc, message):
    with pytest.raises(ValueError, match=r"geometry|feature") as err:
        parse_area(doc)
    assert message in str(err.value)


def test_non_finite_coordinates():
    doc = {"type": "Polygon", "coordinates": [[[12, 48], [12.1, 48], [math.nan, 48.1], [12, 48]]]}
    with pytest.raises(ValueError, match="non-finite"):
        parse_area(doc)
    doc = {"type": "Polygon", "coordinates": [[[12, 48], [12.1, 48], ["x", 48.1], [12, 48]]]}
    with pytest.raises(ValueError, match="non-numeric"):
        parse_area(doc)


def test_too_large_says_how_large_and_the_limit():
    big = {"type": "Polygon", "coordinates": [[[10, 47], [12, 47], [12, 49], [10, 49], [10, 47]]]}
    with pytest.raises(
        ValueError, match=r"covers 33,\d{3}\.\d km², more than the limit of 15,000\.0 km²"
    ):
        parse_area(big)
    assert parse_area(big, max_area_km2=40_000).area_km2 > 30_000
    with pytest.raises(ValueError, match=r"limit of 0\.5 km²"):
        parse_area(SQUARE, max_area_km2=0.5)
    with pytest.raises(ValueError, match="max_area_km2 must be a positive number"):
        parse_area(SQUARE, max_area_km2=0)


def test_whole_tile_fits_the_default_limit():
    ring = utm_rect(300000, 5290200, 409800, 5400000)
    assert parse_area({"type": "Polygon", "coordinates": [ring]}).area_km2 == pytest.approx(
        12056, rel=5e-3
    )


def test_geodesic_area_of_one_degree_at_the_equator():
    cell = shapely.box(0, 0, 1, 1)
    assert geodesic_area_km2(cell) == pytest.approx(12308.8, rel=1e-3)


# --- hostile, malformed and oversized input ---------------------------------------------

UTM33 = {"type": "name", "properties": {"name": "EPSG:32633"}}


def utm_square(left: float, bottom: float, size: float) -> dict:
    ring = [
        [left, bottom],
        [left + size, bottom],
        [left + size, bottom + size],
        [left, bottom + size],
        [left, bottom],
    ]
    return {"type": "Polygon", "coordinates": [ring], "crs": UTM33}


def test_deep_nesting_is_an_input_error_not_a_recursion_error():
    deep = '{"type": "Polygon", "coordinates": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(InputError, match="geometry text is JSON nested 100001 levels deep"):
        parse_area(deep)
    # A mapping given directly is walked only as deep as its geometry type needs.
    nested: list = [[12.0, 48.0]]
    for _ in range(5_000):
        nested = [nested]
    with pytest.raises(InputError, match="non-finite or non-numeric"):
        parse_area({"type": "Polygon", "coordinates": nested})


@pytest.mark.parametrize(("digits", "shown"), [(401, "401"), (5_000, "5,000")])
def test_long_integers_are_refused_where_the_text_is_read(digits, shown):
    # 400 digits raised OverflowError in _all_finite; over 4,300 Python's own ValueError.
    text = '{"type": "Polygon", "coordinates": [[[0, 0], [%s, 0], [1, 1], [0, 0]]]}' % (
        "1" * digits
    )
    with pytest.raises(InputError, match=f"integer of {shown} digits, more than the limit of 100"):
        parse_area(text)


def test_an_int_too_large_for_a_float_in_a_mapping_is_not_finite():
    doc = {"type": "Polygon", "coordinates": [[[0, 0], [10**400, 0], [1, 1], [0, 0]]]}
    with pytest.raises(InputError, match="non-finite or non-numeric coordinates"):
        parse_area(doc)


@pytest.mark.parametrize(
    "name",
    [
        "IAU_2015:30100",
        'ENGCRS["site",EDATUM["d"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],'
        'AXIS["y",north,LENGTHUNIT["metre",1]]]',
        "+proj=longlat +a=1 +b=1",
    ],
)
def test_a_crs_pyproj_cannot_transform_is_named(name):
    doc = {**SQUARE, "crs": {"type": "name", "properties": {"name": name}}}
    with pytest.raises(InputError, match=r"geometry 'crs' name .*: pyproj cannot transform"):
        parse_area(doc)  # ProjError before


@pytest.mark.parametrize("size", [1e12, 1e9, 2e8])
def test_projected_coordinates_beyond_the_earth_fail_at_once(size):
    # 1e12 raised GEOSException; 1e9 took 36 s of densifying to reach an error.
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"the geometry has a coordinate of .*, beyond ±1e\+08"):
        parse_area(utm_square(0.0, 0.0, size))
    assert time.perf_counter() - start < 1.0


def test_densifying_is_bounded_for_huge_outlines_inside_the_limit():
    start = time.perf_counter()
    with pytest.raises(InputError, match="cannot be projected"):
        parse_area(utm_square(-5e7, -5e7, 9.9e7))  # 4e8 m of outline
    assert time.perf_counter() - start < 2.0


def test_lon_lat_numbers_under_a_projected_crs_are_too_small_an_area():
    doc = {**SQUARE, "crs": UTM33}  # was accepted as a 0.0015 m² area and searched
    with pytest.raises(InputError, match=r"covers 0\.00\d+ m², less than one 10 m pixel \(100 m²"):
        parse_area(doc)
    assert parse_area(utm_square(280_000.0, 5_352_000.0, 10.1)).area_km2 * 1e6 == pytest.approx(
        102.0, rel=2e-3
    )
    with pytest.raises(InputError, match="less than one 10 m pixel"):
        parse_area(utm_square(280_000.0, 5_352_000.0, 9.9))


def test_a_byte_order_mark_is_skipped():
    assert parse_area("\ufeff" + json.dumps(SQUARE)).geometry.equals(parse_area(SQUARE).geometry)


def test_too_large_a_text_and_too_many_features_are_refused():
    with pytest.raises(InputError, match="geometry text is 10,48"):
        parse_area(json.dumps(SQUARE) + " " * MAX_GEOJSON_BYTES)
    feature = {"type": "Feature", "properties": {}, "geometry": SQUARE}
    doc = {"type": "FeatureCollection", "features": [feature] * (MAX_FEATURES + 1)}
    with pytest.raises(InputError, match="10,001 features, more than the limit of 10,000"):
        parse_area(doc)


def test_many_separate_fields_union_quickly_and_exactly():
    # 10,000 separate fields took GEOS 12 s to union; meeting fields still merge.
    fields = [shapely.box(12 + 0.001 * i, 48, 12 + 0.001 * i + 0.0008, 48.0008) for i in range(3)]
    fields += [shapely.box(12.01, 48, 12.011, 48.001), shapely.box(12.0105, 48, 12.012, 48.001)]
    fields += [shapely.box(12.02, 48, 12.021, 48.001), shapely.box(12.021, 48.001, 12.022, 48.002)]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": f.__geo_interface__} for f in fields
        ],
    }
    area = parse_area(doc)
    assert area.geometry.is_valid
    assert area.geometry.equals(shapely.union_all(fields))
    assert len(area.geometry.geoms) == 6  # two overlap, two touch at a corner
    many = [
        {"type": "Feature", "properties": {}, "geometry": mapping}
        for i in range(5_000)
        for mapping in [
            shapely.box(12 + 0.001 * i, 48, 12.0008 + 0.001 * i, 48.0008).__geo_interface__
        ]
    ]
    start = time.perf_counter()
    area = parse_area({"type": "FeatureCollection", "features": many})
    assert time.perf_counter() - start < 5.0
    assert len(area.geometry.geoms) == 5_000


# --- UTM zone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (13.1, 48.3, 32633),
        (12.0, 48.3, 32633),
        (11.999, 48.3, 32632),
        (-0.1, 51.5, 32630),
        (151.2, -33.9, 32756),
        (-180.0, 10.0, 32601),
        (180.0, 10.0, 32660),
        (5.3, 60.4, 32632),  # Bergen: MGRS widens 32V
        (2.9, 60.4, 32631),
        (8.0, 78.0, 32631),  # Svalbard
        (15.6, 78.2, 32633),
        (25.0, 78.0, 32635),
        (40.0, 78.0, 32637),
    ],
)
def test_utm_zone(lon, lat, epsg):
    assert utm_epsg(lon, lat) == epsg


def test_utm_zone_rejects_non_positions():
    with pytest.raises(ValueError):
        utm_epsg(200.0, 0.0)
    with pytest.raises(ValueError):
        utm_epsg(math.nan, 0.0)


# --- grid -----------------------------------------------------------------------------


def test_area_grid_is_snapped_and_tight():
    area = parse_area(SQUARE)
    grid = area_grid(area)
    assert grid == Grid(32633, Affine(10, 0, 279500, 0, -10, 5353000), 100, 100)
    assert grid.bounds == (279500, 5352000, 280500, 5353000)
    assert grid.crs == "EPSG:32633" and grid.resolution == 10 and grid.shape == (100, 100)
    margin = area_grid(area, margin_m=25)
    assert margin.bounds == (279470, 5351970, 280530, 5353030)
    scl = area_grid(area, resolution=20)
    assert scl.bounds == (279500, 5352000, 280500, 5353000) and scl.shape == (50, 50)
    other_zone = area_grid(area, epsg=32632)
    assert other_zone.epsg == 32632 and other_zone.transform.c % 10 == 0


@pytest.mark.parametrize("bad", [0.0, -10.0, math.inf])
def test_area_grid_rejects_bad_resolution(bad):
    with pytest.raises(ValueError, match="resolution"):
        area_grid(parse_area(SQUARE), resolution=bad)


def test_area_grid_rejects_negative_margin():
    with pytest.raises(ValueError, match="margin"):
        area_grid(parse_area(SQUARE), margin_m=-1)


coordinate = st.floats(-1e6, 1e6, allow_nan=False)


@given(
    coordinate,
    coordinate,
    st.floats(0, 5e4),
    st.floats(0, 5e4),
    st.sampled_from([10.0, 20.0, 60.0]),
)
def test_snapped_grid_holds_the_bounds_minimally(x, y, w, h, res):
    bounds = (x, y, x + w, y + h)
    grid = snapped_grid(bounds, res, 32633)
    left, bottom, right, top = grid.bounds
    slack = 1e-3 * res + 1e-6 * max(abs(x), abs(y), 1)
    assert (
        left <= x + slack
        and bottom <= y + slack
        and right >= x + w - slack
        and top >= y + h - slack
    )
    assert left / res == pytest.approx(round(left / res)) and top / res == pytest.approx(
        round(top / res)
    )
    # minimal: one pixel less on any side would cut the bounds (or the grid is 1 px)
    assert grid.width == 1 or left + res > x - slack
    assert grid.width == 1 or right - res < x + w + slack
    assert grid.height == 1 or top - res < y + h + slack


# --- window arithmetic ------------------------------------------------------------------


def test_aligned_offset():
    grid = Grid(32633, Affine(10, 0, 279500, 0, -10, 5353000), 100, 100)
    tile = Affine(10, 0, 277800, 0, -10, 5355000)
    assert aligned_offset(tile, 32633, grid) == (170, 200)
    assert aligned_offset(tile, 32632, grid) is None
    assert aligned_offset(Affine(10, 0, 277805, 0, -10, 5355000), 32633, grid) is None
    assert aligned_offset(Affine(20, 0, 277800, 0, -20, 5355000), 32633, grid) is None
    assert aligned_offset(Affine(10, 0.1, 277800, 0, -10, 5355000), 32633, grid) is None


@given(st.integers(-50, 50), st.integers(1, 40), st.integers(-60, 60), st.integers(1, 40))
def test_axis_overlap_matches_brute_force(start, length, offset, size):
    src_start, dst_start, count = axis_overlap(start, length, offset, size)
    pairs = [
        (i - start, i + offset) for i in range(start, start + length) if 0 <= i + offset < size
    ]
    assert count == len(pairs)
    if pairs:
        assert (dst_start, src_start) == pairs[0]
