from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from components.core.chips import Chip, chip_grid
from components.core.limits import (
    MAX_FEATURES,
    MAX_GEOJSON_BYTES,
    MAX_POINTS_PER_GROUP,
    MAX_PROMPT_GROUPS,
)
from components.core.prompt_geojson import parse_prompts
from components.core.prompts import (
    PromptGroup,
    ScenePrompts,
    load_prompts,
    prompts_for_chip,
    prompts_to_scene,
)
from components.core.rendering import band_name
from components.errors import InputError

# A UTM scene whose origin is far from (0, 0) and whose y scale is negative, as every
# north-up raster's is: pixel (col, row) has its corner at (X0 + 10 col, Y0 - 10 row).
UTM = "EPSG:32633"
X0, Y0, RES = 500_000.0, 5_300_000.0, 10.0
TRANSFORM = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
HEIGHT, WIDTH = 100, 200
UTM_CRS = {"type": "name", "properties": {"name": UTM}}


def xy(col: float, row: float) -> list[float]:
    """UTM coordinates of continuous scene pixel (col, row), computed by hand."""
    return [X0 + RES * col, Y0 - RES * row]


def point(col: float, row: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": xy(col, row)}


def multipoint(*cols_rows: tuple[float, float]) -> dict[str, Any]:
    return {"type": "MultiPoint", "coordinates": [xy(c, r) for c, r in cols_rows]}


def rect(col0: float, row0: float, col1: float, row1: float) -> dict[str, Any]:
    ring = [xy(col0, row0), xy(col1, row0), xy(col1, row1), xy(col0, row1), xy(col0, row0)]
    return {"type": "Polygon", "coordinates": [ring]}


def feature(geometry: Any, label: Any = 1, prompt_id: Any = 1) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"label": label, "prompt_id": prompt_id},
        "geometry": geometry,
    }


def collection(*features: dict[str, Any], crs: Any = UTM_CRS) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": list(features)}
    if crs is not None:
        doc["crs"] = crs
    return doc


def scene(*features: dict[str, Any]) -> ScenePrompts:
    return load_prompts(collection(*features), UTM, TRANSFORM, HEIGHT, WIDTH)


def group(
    prompt_id: int | str,
    points: Sequence[tuple[float, float]] = (),
    labels: Sequence[int] = (),
    box: tuple[float, float, float, float] | None = None,
) -> PromptGroup:
    return PromptGroup(prompt_id, np.array(points).reshape(-1, 2), np.array(labels), box, (0,))


def by_id(groups: list[PromptGroup] | tuple[PromptGroup, ...]) -> dict[int | str, PromptGroup]:
    return {g.prompt_id: g for g in groups}


# --- validation -------------------------------------------------------------------


def test_invalid_json_is_rejected() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_prompts("{not json")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("[]", "FeatureCollection object, got list"),
        (json.dumps(feature(point(1, 1))), "got type 'Feature'"),
        ({"features": []}, "got type None"),
        ({"type": "FeatureCollection"}, "'features' must be a list"),
    ],
)
def test_not_a_feature_collection_is_rejected(doc: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_prompts(doc)


def test_empty_collection_is_rejected() -> None:
    with pytest.raises(ValueError, match="no features"):
        parse_prompts(collection())


@pytest.mark.parametrize("label", [2, -1, True, False, 1.0, "1", None])
def test_label_must_be_int_0_or_1(label: Any) -> None:
    doc = collection(feature(point(1, 1)), feature(point(2, 2), label, "field-7"))
    with pytest.raises(
        ValueError, match=r"feature 1 \(prompt_id 'field-7'\): label must be 0 or 1, got"
    ):
        parse_prompts(doc)


def test_label_0_and_1_accepted_and_error_quotes_value() -> None:
    doc = collection(feature(point(1, 1), 1), feature(point(2, 2), 0))
    assert [f.label for f in parse_prompts(doc).features] == [1, 0]
    with pytest.raises(ValueError, match=r"feature 0 \(prompt_id 7\): label must be 0 or 1, got 2"):
        parse_prompts(collection(feature(point(1, 1), 2, 7)))


@pytest.mark.parametrize("prompt_id", [True, None, 1.5, 2.0, "", "  ", [1]])
def test_prompt_id_must_be_int_or_str(prompt_id: Any) -> None:
    doc = collection(feature(point(1, 1)), feature(point(2, 2), 1, prompt_id))
    with pytest.raises(ValueError, match="feature 1: prompt_id must be an int or a non-empty"):
        parse_prompts(doc)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: f.pop("properties"), r"feature 0: needs 'properties'"),
        (lambda f: f["properties"].pop("prompt_id"), r"feature 0: properties need a 'prompt_id'"),
        (lambda f: f["properties"].pop("label"), r"feature 0 \(prompt_id 1\): .*'label'"),
        (lambda f: f.update(type="Polygon"), r"feature 0: must be a GeoJSON Feature"),
        (lambda f: f.pop("geometry"), r"feature 0 \(prompt_id 1\): geometry must be"),
        (lambda f: f.update(geometry=None), r"feature 0 \(prompt_id 1\): geometry must be"),
    ],
)
def test_malformed_feature_is_rejected(mutate: Any, match: str) -> None:
    f = feature(point(1, 1))
    mutate(f)
    with pytest.raises(ValueError, match=match):
        parse_prompts(collection(f))


def test_non_mapping_feature_is_rejected() -> None:
    with pytest.raises(ValueError, match="feature 0: must be a GeoJSON Feature"):
        parse_prompts(collection("oops"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "geometry",
    [
        {"type": "LineString", "coordinates": [xy(0, 0), xy(1, 1)]},
        {"type": "MultiPolygon", "coordinates": [rect(0, 0, 1, 1)["coordinates"]]},
        {"type": "GeometryCollection", "geometries": []},
    ],
)
def test_other_geometry_types_are_rejected(geometry: dict[str, Any]) -> None:
    doc = collection(feature(point(1, 1)), feature(geometry, 1, "p"))
    with pytest.raises(
        ValueError,
        match=rf"feature 1 \(prompt_id 'p'\): geometry type must be Point, MultiPoint or "
        rf"Polygon, got '{geometry['type']}'",
    ):
        parse_prompts(doc)


@pytest.mark.parametrize(
    ("geometry", "match"),
    [
        ({"type": "Point", "coordinates": [1.0]}, "a position must be"),
        ({"type": "Point", "coordinates": [1.0, "2"]}, "a position must be"),
        ({"type": "Point", "coordinates": [True, 2.0]}, "a position must be"),
        ({"type": "Point", "coordinates": [1.0, 2.0, 3.0, 4.0]}, "a position must be"),
        ({"type": "Point", "coordinates": None}, "a position must be"),
        ({"type": "Point", "coordinates": [float("nan"), 2.0]}, "must be finite"),
        ({"type": "Point", "coordinates": [1.0, float("inf")]}, "must be finite"),
        ({"type": "MultiPoint", "coordinates": []}, "MultiPoint coordinates must be"),
        ({"type": "MultiPoint", "coordinates": [[1.0, 2.0], [3.0]]}, "a position must be"),
        ({"type": "Polygon", "coordinates": []}, "Polygon coordinates must be"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "at least 3 positions"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, "x"]]]}, "a position must"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [2, 0], [0, 0]]]}, "zero width"),
    ],
)
def test_malformed_coordinates_are_rejected(geometry: dict[str, Any], match: str) -> None:
    doc = collection(feature(point(1, 1)), feature(geometry, 1, "f"))
    with pytest.raises(ValueError, match=rf"feature 1 \(prompt_id 'f'\): .*{match}"):
        parse_prompts(doc)


def test_json_nan_coordinate_is_rejected() -> None:
    text = '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
    text += (
        '{"label": 1, "prompt_id": 4}, "geometry": {"type": "Point", "coordinates": [NaN, 1]}}]}'
    )
    with pytest.raises(ValueError, match=r"feature 0 \(prompt_id 4\): coordinates must be finite"):
        parse_prompts(text)


@pytest.mark.parametrize("lon_lat", [[48.2, 95.0], [200.0, 10.0], [-181.0, 0.0]])
def test_lon_lat_out_of_range_is_rejected(lon_lat: list[float]) -> None:
    doc = collection(feature({"type": "Point", "coordinates": lon_lat}), crs=None)
    with pytest.raises(ValueError, match=r"feature 0 \(prompt_id 1\): .*\[longitude, latitude\]"):
        parse_prompts(doc)


def test_polygon_with_background_label_is_rejected() -> None:
    doc = collection(feature(point(1, 1)), feature(rect(0, 0, 5, 5), 0, "b"))
    with pytest.raises(ValueError, match=r"feature 1 \(prompt_id 'b'\): .*must have label 1"):
        parse_prompts(doc)


def test_two_boxes_in_one_group_are_rejected() -> None:
    doc = collection(
        feature(rect(0, 0, 5, 5), 1, "a"),
        feature(point(1, 1), 1, "b"),
        feature(rect(1, 1, 6, 6), 1, "a"),
    )
    with pytest.raises(ValueError, match=r"prompt_id 'a': features 0 and 2 are both boxes"):
        parse_prompts(doc)


def test_int_and_str_prompt_id_with_same_text_are_rejected() -> None:
    doc = collection(feature(point(1, 1), 1, 1), feature(point(2, 2), 1, "1"))
    with pytest.raises(
        ValueError, match=r"feature 1 \(prompt_id '1'\) and feature 0 \(prompt_id 1\): .*collide"
    ):
        parse_prompts(doc)


def test_background_only_group_is_rejected() -> None:
    doc = collection(
        feature(point(1, 1), 1, "fg"),
        feature(point(2, 2), 0, "bg"),
        feature(multipoint((3, 3), (4, 4)), 0, "bg"),
    )
    with pytest.raises(ValueError, match=r"prompt_id 'bg' \(features 1, 2\) has only background"):
        parse_prompts(doc)


@pytest.mark.parametrize(
    ("crs", "match"),
    [
        ({"type": "name", "properties": {"name": "EPSG:999999"}}, r"'crs' name 'EPSG:999999'"),
        ({"type": "name", "properties": {"name": "not a crs"}}, r"'crs' name 'not a crs'"),
        ({"type": "link", "properties": {"href": "x"}}, r"unsupported 'crs' member .*link"),
        ("EPSG:4326", r"unsupported 'crs' member 'EPSG:4326'"),
    ],
)
def test_unparseable_crs_member_is_rejected(crs: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_prompts(collection(feature(point(1, 1)), crs=crs))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("EPSG:32633", "EPSG:32633"),
        ("urn:ogc:def:crs:EPSG::32633", "EPSG:32633"),
        ("urn:ogc:def:crs:OGC:1.3:CRS84", "OGC:CRS84"),
    ],
)
def test_crs_member_forms(name: str, expected: str) -> None:
    geometry = {"type": "Point", "coordinates": [13.0, 48.0]} if "CRS84" in name else point(1, 1)
    doc = collection(feature(geometry), crs={"type": "name", "properties": {"name": name}})
    assert parse_prompts(doc).crs == CRS.from_user_input(expected)


def test_default_crs_is_rfc7946_lon_lat() -> None:
    doc = collection(feature({"type": "Point", "coordinates": [13.0, 48.0]}), crs=None)
    assert parse_prompts(doc).crs == CRS.from_user_input("OGC:CRS84")


def test_text_mapping_and_tuples_parse_alike() -> None:
    doc = collection(
        feature(point(1.5, 2.5), 1, "a"),
        feature(shapely.box(*xy(0, 10), *xy(10, 0)).__geo_interface__, 1, "b"),
    )
    from_text = scene_from(json.dumps(doc))
    from_tuples = scene_from(doc)
    assert isinstance(doc["features"][1]["geometry"]["coordinates"], tuple)
    for a, b in zip(from_text.groups, from_tuples.groups, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        assert a.box == b.box
    assert from_tuples.groups[1].box == pytest.approx((0, 0, 10, 10))


def scene_from(doc: Any) -> ScenePrompts:
    return load_prompts(doc, UTM, TRANSFORM, HEIGHT, WIDTH)


# --- grouping and projection ------------------------------------------------------


def test_groups_keep_first_appearance_order() -> None:
    doc = collection(
        feature(point(1, 1), 1, "zeta"),
        feature(point(2, 2), 1, 3),
        feature(point(3, 3), 0, "zeta"),
        feature(point(4, 4), 1, "alpha"),
        feature(point(5, 5), 1, 3),
    )
    assert parse_prompts(doc).prompt_ids == ("zeta", 3, "alpha")
    prompts = scene_from(doc)
    assert prompts.prompt_ids == ("zeta", 3, "alpha")
    assert by_id(prompts.groups)["zeta"].feature_indices == (0, 2)
    assert by_id(prompts.groups)[3].feature_indices == (1, 4)


def test_multipoint_expands_to_one_prompt_per_point() -> None:
    prompts = scene(
        feature(multipoint((1.5, 2.5), (10.5, 20.5), (30, 40)), 1, "m"),
        feature(multipoint((50, 60), (70, 80)), 0, "m"),
    )
    (g,) = prompts.groups
    np.testing.assert_allclose(
        g.points, [[1.5, 2.5], [10.5, 20.5], [30.0, 40.0], [50.0, 60.0], [70.0, 80.0]]
    )
    np.testing.assert_array_equal(g.labels, [1, 1, 1, 0, 0])
    assert g.box is None and g.feature_indices == (0, 1)


def test_crs_member_in_raster_crs_with_offset_origin_and_negative_y_scale() -> None:
    # The centre of pixel (row 37, col 21) lies at x0 + 21.5 * 10, y0 - 37.5 * 10.
    prompts = scene(feature({"type": "Point", "coordinates": [X0 + 215.0, Y0 - 375.0]}))
    np.testing.assert_allclose(prompts.groups[0].points, [[21.5, 37.5]], atol=1e-9)


def test_box_is_sorted_despite_negative_y_scale() -> None:
    # Polygon bounds in the CRS: ymin is the bottom, which is the *larger* row.
    prompts = scene(feature(rect(10, 20, 30, 50), 1, "b"))
    assert prompts.groups[0].box == pytest.approx((10, 20, 30, 50))


def test_lon_lat_point_lands_on_expected_utm_pixel() -> None:
    # Build the raster around a known UTM point so that it is the centre of pixel
    # (row 37, col 21); its lon/lat is where the prompt is drawn.
    east, north = 360_000.0, 5_350_000.0
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(east, north)
    assert 13.0 < lon < 13.2 and 48.2 < lat < 48.4  # Austria/Bavaria border: lon/lat order
    transform = Affine(RES, 0.0, east - 21.5 * RES, 0.0, -RES, north + 37.5 * RES)
    doc = collection(feature({"type": "Point", "coordinates": [lon, lat]}), crs=None)
    prompts = load_prompts(doc, CRS.from_epsg(32633), transform, 100, 100)
    np.testing.assert_allclose(prompts.groups[0].points, [[21.5, 37.5]], atol=1e-6)


def test_lon_lat_box_is_densified_before_projection() -> None:
    # A 2° x 1° lon/lat rectangle across UTM 33N's central meridian (15° E): its bottom
    # edge (a parallel) sags ~500 m below the corners at 15° E in UTM.
    lon0, lat0, lon1, lat1 = 14.0, 48.0, 16.0, 49.0
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    doc = collection(feature({"type": "Polygon", "coordinates": [ring]}), crs=None)
    transform = Affine(100.0, 0.0, 300_000.0, 0.0, -100.0, 5_500_000.0)
    prompts = load_prompts(doc, UTM, transform, 4000, 4000)
    box = prompts.groups[0].box
    assert box is not None

    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    t = np.linspace(0.0, 1.0, 5001)
    edges = [
        (lon0 + (lon1 - lon0) * t, np.full_like(t, lat0)),
        (lon0 + (lon1 - lon0) * t, np.full_like(t, lat1)),
        (np.full_like(t, lon0), lat0 + (lat1 - lat0) * t),
        (np.full_like(t, lon1), lat0 + (lat1 - lat0) * t),
    ]
    projected = [to_utm.transform(lons, lats) for lons, lats in edges]
    e = np.concatenate([p[0] for p in projected])
    n = np.concatenate([p[1] for p in projected])
    expected = (
        (e.min() - 300_000) / 100,
        (5_500_000 - n.max()) / 100,
        (e.max() - 300_000) / 100,
        (5_500_000 - n.min()) / 100,
    )
    assert box == pytest.approx(expected, abs=0.05)  # 5 m at 100 m pixels

    _, corner_n = to_utm.transform([lon0, lon1, lon1, lon0], [lat0, lat0, lat1, lat1])
    corners_row1 = (5_500_000 - min(corner_n)) / 100
    assert box[3] - corners_row1 > 3.0  # corners alone miss the sag by > 3 px


def test_box_grows_to_hold_foreground_points_only() -> None:
    prompts = scene(
        feature(rect(10, 10, 20, 20), 1, "g"),
        feature(point(25.5, 5.5), 1, "g"),
        feature(point(2, 90), 0, "g"),  # background: must not grow the box
    )
    (g,) = prompts.groups
    assert g.box == pytest.approx((10, 5.5, 25.5, 20))
    np.testing.assert_array_equal(g.labels, [1, 0])


# --- scene extent -----------------------------------------------------------------


def test_point_outside_scene_is_dropped_and_reported() -> None:
    prompts = scene(
        feature(multipoint((5, 5), (-0.5, 5), (5, HEIGHT + 3)), 1, "a"),
        feature(point(WIDTH, 10), 1, "edge"),  # x == width: half-open, outside
        feature(point(WIDTH - 0.01, HEIGHT - 0.01), 1, "inside"),
    )
    assert prompts.prompt_ids == ("a", "inside")
    np.testing.assert_allclose(by_id(prompts.groups)["a"].points, [[5, 5]])
    dropped = [(d.prompt_id, d.feature_index) for d in prompts.dropped]
    assert dropped == [("a", 0), ("a", 0), ("edge", 1), ("edge", None)]
    assert "col -0.5, row 5.0 is outside the 200 x 100 px scene" in prompts.dropped[0].reason
    assert "no foreground point or box" in prompts.dropped[3].reason


def test_box_outside_scene_is_dropped_and_partly_outside_box_clipped() -> None:
    prompts = scene(
        feature(rect(-50, -50, -10, -10), 1, "gone"),
        feature(rect(-10, 90, 30, 120), 1, "clipped"),
        feature(rect(WIDTH, 0, WIDTH + 10, 10), 1, "touching"),  # shares an edge only
        feature(rect(300, 300, 400, 400), 1, "box-gone-point-kept"),
        feature(point(3, 4), 1, "box-gone-point-kept"),
    )
    assert prompts.prompt_ids == ("clipped", "box-gone-point-kept")
    groups = by_id(prompts.groups)
    assert groups["clipped"].box == pytest.approx((0, 90, 30, HEIGHT))
    assert groups["box-gone-point-kept"].box is None
    np.testing.assert_allclose(groups["box-gone-point-kept"].points, [[3, 4]])
    dropped = [(d.prompt_id, d.feature_index) for d in prompts.dropped]
    assert dropped == [
        ("gone", 0),
        ("touching", 2),
        ("box-gone-point-kept", 3),
        ("gone", None),
        ("touching", None),
    ]
    assert "box (cols -50.0..-10.0, rows -50.0..-10.0) is outside" in prompts.dropped[0].reason


def test_group_with_only_background_left_is_dropped() -> None:
    prompts = scene(
        feature(point(-5, -5), 1, "a"),
        feature(point(5, 5), 0, "a"),
        feature(point(6, 6), 1, "b"),
    )
    assert prompts.prompt_ids == ("b",)
    assert [(d.prompt_id, d.feature_index) for d in prompts.dropped] == [("a", 0), ("a", None)]


def test_nothing_inside_scene_is_an_error_listing_reasons() -> None:
    doc = collection(feature(point(-5, -5), 1, "a"), feature(rect(500, 0, 600, 10), 1, "b"))
    with pytest.raises(ValueError, match=r"no usable prompt in the 200 x 100 px scene") as info:
        scene_from(doc)
    message = str(info.value)
    assert "prompt_id 'a' feature 0: point at col -5.0" in message
    assert "prompt_id 'b' feature 1: box (cols 500.0..600.0" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"height": 0}, "height must be a positive integer"),
        ({"width": 10.0}, "width must be a positive integer"),
        ({"transform": Affine(0, 0, 0, 0, 0, 0)}, "not invertible"),
        ({"raster_crs": "EPSG:999999"}, "raster CRS 'EPSG:999999'"),
    ],
)
def test_bad_scene_description_is_rejected(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "raster_crs": UTM,
        "transform": TRANSFORM,
        "height": HEIGHT,
        "width": WIDTH,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        prompts_to_scene(parse_prompts(collection(feature(point(1, 1)))), **args)


def test_prompt_group_arrays_are_read_only() -> None:
    g = scene(feature(point(1, 1))).groups[0]
    with pytest.raises(ValueError, match="read-only"):
        g.points[0, 0] = 5.0
    with pytest.raises(ValueError, match="points but"):
        PromptGroup(1, np.zeros((2, 2)), np.ones(1, dtype=np.int64), None, ())


# --- per-chip selection -----------------------------------------------------------

# 100 px chips, 50 px step: columns start at 0, 50, ..., 200; rows at 0, 50, 100.
GRID = chip_grid(200, 300, size=100, spatial_overlap=0.5)


def chip_at(row: int, col: int) -> Chip:
    (chip,) = (c for c in GRID if c.row == row and c.col == col)
    return chip


def chips_running(prompts: ScenePrompts, prompt_id: int | str) -> set[tuple[int, int]]:
    return {
        (c.row, c.col)
        for c in GRID
        if any(g.prompt_id == prompt_id for g in prompts_for_chip(prompts, c))
    }


def test_foreground_point_selects_only_chips_holding_it() -> None:
    prompts = ScenePrompts((group("p", [(120.0, 30.0)], [1]),), ())
    assert chips_running(prompts, "p") == {(0, 50), (0, 100)}
    (g,) = prompts_for_chip(prompts, chip_at(0, 100))
    np.testing.assert_allclose(g.points, [[20.0, 30.0]])
    # Half-open: a point on a chip's left edge is in it, on its right edge is not.
    edge = ScenePrompts((group("e", [(100.0, 10.0)], [1]),), ())
    assert chips_running(edge, "e") == {(0, 50), (0, 100)}


def test_box_only_group_runs_in_every_chip_its_box_touches() -> None:
    prompts = ScenePrompts((group("b", box=(60.0, 10.0, 140.0, 40.0)),), ())
    assert chips_running(prompts, "b") == {(0, 0), (0, 50), (0, 100)}
    boxes = {(c.row, c.col): prompts_for_chip(prompts, c)[0].box for c in GRID.chips[:3]}
    assert boxes[(0, 0)] == pytest.approx((60, 10, 100, 40))
    assert boxes[(0, 50)] == pytest.approx((10, 10, 90, 40))
    assert boxes[(0, 100)] == pytest.approx((0, 10, 40, 40))
    # Sharing only an edge with a chip is not touching it.
    edge = ScenePrompts((group("e", box=(0.0, 0.0, 50.0, 50.0)),), ())
    assert chips_running(edge, "e") == {(0, 0)}


def test_box_with_foreground_runs_only_where_the_foreground_is() -> None:
    prompts = ScenePrompts((group("g", [(20.0, 20.0)], [1], box=(10.0, 10.0, 190.0, 40.0)),), ())
    assert chips_running(prompts, "g") == {(0, 0)}
    (g,) = prompts_for_chip(prompts, chip_at(0, 0))
    assert g.box == pytest.approx((10, 10, 100, 40))


def test_background_points_only_inside_the_chip_are_kept() -> None:
    points = [(20.0, 20.0), (30.0, 70.0), (90.0, 20.0), (250.0, 150.0)]
    prompts = ScenePrompts((group(7, points, [1, 0, 0, 0]),), ())
    (g,) = prompts_for_chip(prompts, chip_at(0, 0))
    np.testing.assert_allclose(g.points, [[20, 20], [30, 70], [90, 20]])
    np.testing.assert_array_equal(g.labels, [1, 0, 0])
    assert prompts_for_chip(prompts, chip_at(100, 200)) == []  # only background there


def test_chip_coordinates_are_offset_and_order_kept() -> None:
    prompts = ScenePrompts(
        (
            group(
                "late", [(260.0, 170.0), (210.0, 110.0)], [1, 0], box=(205.0, 105.0, 280.0, 230.0)
            ),
            group("box", box=(150.0, 90.0, 400.0, 300.0)),
            group("elsewhere", [(5.0, 5.0)], [1]),
        ),
        (),
    )
    chip = chip_at(100, 200)
    groups = prompts_for_chip(prompts, chip)
    assert [g.prompt_id for g in groups] == ["late", "box"]
    late, box = groups
    np.testing.assert_allclose(late.points, [[60, 70], [10, 10]])
    assert late.box == pytest.approx((5, 5, 80, 100))
    assert box.box == pytest.approx((0, 0, 100, 100))


def test_chip_of_a_short_scene_uses_only_its_valid_extent() -> None:
    (chip,) = chip_grid(60, 80, size=100).chips
    assert (chip.valid_width, chip.valid_height) == (80, 60)
    prompts = ScenePrompts(
        (
            group("in", [(10.0, 10.0), (79.5, 59.5)], [1, 0], box=(5.0, 5.0, 95.0, 95.0)),
            group("box", box=(-20.0, 50.0, 200.0, 200.0)),
            group("padding", [(85.0, 10.0)], [1]),  # in the chip's padding, not the scene
        ),
        (),
    )
    groups = by_id(prompts_for_chip(prompts, chip))
    assert set(groups) == {"in", "box"}
    assert groups["in"].box == pytest.approx((5, 5, 80, 60))
    assert len(groups["in"].points) == 2
    assert groups["box"].box == pytest.approx((0, 50, 80, 60))


def test_scene_to_chip_end_to_end() -> None:
    prompts = scene(
        feature(rect(40, 10, 160, 30), 1, "field"),
        feature(point(150.5, 20.5), 1, "click"),
        feature(point(155.5, 25.5), 0, "click"),
    )
    grid = chip_grid(HEIGHT, WIDTH, size=100, spatial_overlap=0.5)
    selected = {c.col: [g.prompt_id for g in prompts_for_chip(prompts, c)] for c in grid}
    assert selected == {0: ["field"], 50: ["field"], 100: ["field", "click"]}


# --- real parcels -----------------------------------------------------------------


def test_real_parcel_polygons_land_on_their_bounds(shared_file) -> None:
    path = shared_file("parcels/at_invekos_2025_sample.gpkg")
    gpd = pytest.importorskip("geopandas", reason="geopandas is needed to read the gpkg")
    parcels = gpd.read_file(path)
    assert parcels.crs == CRS.from_epsg(31287)
    assert set(parcels.geom_type) == {"Polygon"}

    lon_lat = parcels.to_crs("EPSG:4326")
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"label": 1, "prompt_id": f"parcel-{i}"},
                "geometry": geom.__geo_interface__,
            }
            for i, geom in enumerate(lon_lat.geometry)
        ],
    }
    # A 10 m EPSG:31287 grid with a 5 px margin around all parcels.
    minx, miny, maxx, maxy = parcels.total_bounds
    left = math.floor(minx / RES) * RES - 5 * RES
    top = math.ceil(maxy / RES) * RES + 5 * RES
    width = math.ceil((maxx - left) / RES) + 5
    height = math.ceil((top - miny) / RES) + 5
    transform = Affine(RES, 0.0, left, 0.0, -RES, top)

    prompts = load_prompts(json.dumps(doc), "EPSG:31287", transform, height, width)
    assert prompts.dropped == ()
    assert prompts.prompt_ids == tuple(f"parcel-{i}" for i in range(len(parcels)))
    for g, (x0, y0, x1, y1) in zip(prompts.groups, parcels.geometry.bounds.values, strict=True):
        expected = ((x0 - left) / RES, (top - y1) / RES, (x1 - left) / RES, (top - y0) / RES)
        assert g.box == pytest.approx(expected, abs=0.01)  # 10 cm
        assert len(g.points) == 0


# --- hostile, malformed and oversized input ---------------------------------------

ENGCRS = (
    'ENGCRS["site",EDATUM["site datum"],CS[Cartesian,2],'
    'AXIS["x",east,LENGTHUNIT["metre",1]],AXIS["y",north,LENGTHUNIT["metre",1]]]'
)


def point_text(x: str, y: str = "5299500") -> str:
    """A one-point prompt file whose coordinates are written as given (raw JSON)."""
    return (
        '{"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": '
        '"EPSG:32633"}}, "features": [{"type": "Feature", "properties": {"label": 1, '
        f'"prompt_id": 1}}, "geometry": {{"type": "Point", "coordinates": [{x}, {y}]}}}}]}}'
    )


def test_deep_nesting_is_an_input_error_not_a_recursion_error() -> None:
    deep = '{"type": "FeatureCollection", "features": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(InputError, match="nested 100001 levels deep, more than the limit of 64"):
        parse_prompts(deep)


@pytest.mark.parametrize(("digits", "shown"), [(400, "401"), (5_000, "5,000")])
def test_long_integers_are_refused_where_the_text_is_read(digits: int, shown: str) -> None:
    # 400 digits raised OverflowError in float(); over 4,300 Python's own ValueError.
    number = "1" + "0" * (digits - 1) if digits == 400 else "9" * digits
    with pytest.raises(InputError, match=f"integer of {shown} digits, more than the limit of 100"):
        parse_prompts(point_text(number + ("0" if digits == 400 else "")))


def test_an_int_too_large_for_a_float_in_a_mapping_is_not_finite() -> None:
    doc = collection(feature({"type": "Point", "coordinates": [10**400, 5_299_500]}))
    with pytest.raises(InputError, match=r"feature 0 \(prompt_id 1\): coordinates must be finite"):
        parse_prompts(doc)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("IAU_2015:30100", "celestial body"),  # the Moon
        (ENGCRS, ""),  # no datum to transform through
        ("+proj=longlat +a=1 +b=1", "celestial body"),  # a 1 m sphere
    ],
)
def test_a_crs_pyproj_cannot_transform_is_named(name: str, why: str) -> None:
    doc = collection(feature(point(1, 1)), crs={"type": "name", "properties": {"name": name}})
    with pytest.raises(InputError, match="pyproj cannot transform") as err:
        parse_prompts(doc)  # ProjError at load_prompts before
    assert why in str(err.value) and "'crs' name" in str(err.value)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("EPSG:32633\x00", r"'crs' name 'EPSG:32633\\x00' holds U\+0000, a control character"),
        ("\ud800", r"holds U\+D800, a lone surrogate"),  # UnicodeEncodeError before
        ("EPSG:" + "3" * 70_000, "name is 70,005 characters long, more than the limit of 65,536"),
    ],
)
def test_crs_names_no_crs_can_have_are_refused(name: str, match: str) -> None:
    doc = collection(feature(point(1, 1)), crs={"type": "name", "properties": {"name": name}})
    with pytest.raises(InputError, match=match):
        parse_prompts(doc)


@pytest.mark.parametrize("value", ["1e12", "1e9", "-100000001"])
def test_projected_coordinates_beyond_the_earth_are_refused(value: str) -> None:
    with pytest.raises(InputError, match=r"feature 0 \(prompt_id 1\) has a coordinate of .*beyond"):
        parse_prompts(point_text(value))
    assert parse_prompts(point_text("99999999")).features[0].coordinates[0][0] == 99_999_999


def test_projected_limit_is_in_the_crs_unit() -> None:
    feet = {"type": "name", "properties": {"name": "EPSG:2263"}}  # NY Long Island, US feet
    doc = collection(feature({"type": "Point", "coordinates": [2e8, 1e6]}), crs=feet)
    assert parse_prompts(doc).features[0].coordinates == ((2e8, 1e6),)  # 6.1e7 m
    doc = collection(feature({"type": "Point", "coordinates": [4e8, 1e6]}), crs=feet)
    with pytest.raises(InputError, match=r"beyond ±3\.28\d*e\+08"):
        parse_prompts(doc)


def test_a_byte_order_mark_is_skipped() -> None:
    doc = collection(feature(point(1.5, 2.5)))
    assert parse_prompts("\ufeff" + json.dumps(doc)) == parse_prompts(doc)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (["\x00a", "\x00b"], r"prompt_id '\\x00a' holds U\+0000, a control character"),
        (["a\nb"], r"U\+000A, a control character"),
        (["\x7f"], r"U\+007F, a control character"),
        (["field-\ud800"], r"U\+D800, a lone surrogate, not UTF-8 text"),
        (["x" * 201], "prompt_id is 201 characters long, more than the limit of 200"),
        (["x" * 50_000_000], "50,000,000 characters long"),
        ([10**200], "an int of more than 200 digits"),
        ([-(10**200)], "an int of more than 200 digits"),
    ],
)
def test_ids_that_cannot_name_a_band_are_refused_when_parsing(ids: list[Any], match: str) -> None:
    doc = collection(*(feature(point(1 + k, 1), 1, pid) for k, pid in enumerate(ids)))
    with pytest.raises(InputError, match=match) as err:
        parse_prompts(doc)
    assert len(str(err.value)) < 300


def test_ids_at_the_limits_are_accepted_and_give_distinct_band_names() -> None:
    ids: list[Any] = ["x" * 200, 10**200 - 1, "é-field", "名前", "a b", "\u200d"]
    doc = collection(*(feature(point(1 + k, 1), 1, pid) for k, pid in enumerate(ids)))
    assert parse_prompts(doc).prompt_ids == tuple(ids)
    names = {band_name(pid) for pid in ids}
    assert len(names) == len(ids)


def test_a_lone_surrogate_from_json_text_fails_before_inference() -> None:
    text = json.dumps(collection(feature(point(1, 1), 1, "\ud800")))
    assert '"\\ud800"' in text  # an escape in the file: valid JSON, not valid UTF-8 text
    with pytest.raises(InputError, match="lone surrogate"):
        parse_prompts(text)


def test_too_large_a_text_is_refused_before_parsing() -> None:
    text = json.dumps(collection(feature(point(1, 1)))) + " " * MAX_GEOJSON_BYTES
    with pytest.raises(InputError, match=r"prompts text is 10,48\d,\d{3} characters, more than"):
        parse_prompts(text)


def test_too_many_features_are_refused() -> None:
    one = feature(point(1, 1))
    with pytest.raises(InputError, match="10,001 features, more than the limit of 10,000"):
        parse_prompts(collection(*([one] * (MAX_FEATURES + 1))))


def test_too_many_points_in_a_group_are_refused() -> None:
    cols_rows = [(k % 200, k // 200) for k in range(MAX_POINTS_PER_GROUP + 1)]
    with pytest.raises(InputError, match=r"feature 0 \(prompt_id 1\): 1,001 points, more than"):
        parse_prompts(collection(feature(multipoint(*cols_rows))))
    doc = collection(feature(multipoint(*cols_rows[:600])), feature(multipoint(*cols_rows[600:])))
    with pytest.raises(InputError, match="prompt_id 1: 1,001 points, more than the limit of 1,000"):
        parse_prompts(doc)
    doc = collection(feature(multipoint(*cols_rows[:-1])), feature(rect(0, 0, 10, 10)))
    assert len(parse_prompts(doc).features) == 2  # a box's ring is not a point prompt


def test_too_many_groups_are_refused() -> None:
    doc = collection(*(feature(point(1, 1), 1, k) for k in range(MAX_PROMPT_GROUPS + 1)))
    with pytest.raises(InputError, match=r"5,001 prompt groups .* more than the limit of 5,000"):
        parse_prompts(doc)
    doc["features"].pop()
    assert len(parse_prompts(doc).prompt_ids) == MAX_PROMPT_GROUPS


def lonlat_box(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.mark.parametrize(
    ("raster_crs", "transform"),
    [
        # Where a world box's 32 points per edge never come near the scene (it was
        # "outside the scene" there), and the tests' usual scene.
        ("EPSG:32633", Affine(RES, 0.0, 300_000.0, 0.0, -RES, 1_000_000.0)),
        ("EPSG:3035", Affine(RES, 0.0, 4_000_000.0, 0.0, -RES, 3_000_000.0)),
        (UTM, TRANSFORM),
        ("EPSG:32733", TRANSFORM),
    ],
)
@pytest.mark.parametrize(
    ("box", "crs"),
    [
        (lonlat_box(-180, -90, 180, 90), None),
        (lonlat_box(-179.9, -89.9, 179.9, 89.9), None),
        (
            lonlat_box(-20_037_508.34, -20_048_966.1, 20_037_508.34, 20_048_966.1),
            {"type": "name", "properties": {"name": "EPSG:3857"}},
        ),
    ],
)
def test_a_box_larger_than_the_scene_is_clipped_to_it(
    raster_crs: str, transform: Affine, box: dict[str, Any], crs: Any
) -> None:
    doc = collection(feature(box), crs=crs)
    prompts = load_prompts(doc, raster_crs, transform, HEIGHT, WIDTH)
    assert prompts.dropped == ()
    assert prompts.groups[0].box == (0.0, 0.0, float(WIDTH), float(HEIGHT))


def test_a_box_partly_in_the_scene_keeps_its_edge_after_clipping() -> None:
    # A box from the scene's centre to far beyond its corner, in lon/lat: clipping in
    # lon/lat first must not move the inner corner.
    to_lonlat = Transformer.from_crs(UTM, "OGC:CRS84", always_xy=True)
    lon, lat = to_lonlat.transform(*xy(50, 40))
    doc = collection(feature(lonlat_box(lon, -60.0, 60.0, lat)), crs=None)
    box = load_prompts(doc, UTM, TRANSFORM, HEIGHT, WIDTH).groups[0].box
    assert box is not None
    assert box[:2] == pytest.approx((50.0, 40.0), abs=0.05)
    assert box[2:] == (float(WIDTH), float(HEIGHT))


def test_a_box_missing_the_scene_is_still_dropped_with_its_pixels() -> None:
    doc = collection(feature(rect(300, 0, 400, 50)), feature(point(1, 1), 1, 2))
    prompts = load_prompts(doc, UTM, TRANSFORM, HEIGHT, WIDTH)
    assert prompts.dropped[0].reason == (
        "box (cols 300.0..400.0, rows 0.0..50.0) is outside the 200 x 100 px scene"
    )
