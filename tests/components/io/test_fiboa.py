"""fields.parquet: valid fiboa core v0.2.0, every polygon kept or set aside with its reason."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import geopandas as gpd
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import Polygon, box

from components.core.fields import NODING_GRID_M, FieldCleaning
from components.core.vectorize import SegmentPolygon
from components.io.fiboa import FIELDS, SET_ASIDE, write_fields
from tests.data.fiboa.validate import fiboa_errors

UTM = "EPSG:32633"
ACQUIRED = datetime(2024, 6, 3, 10, 20, 31, tzinfo=timezone.utc)
LINEAGE = {"model_name": "sam-vit_b", "model_version": 4}


def _polygon(geometry: Polygon, ident: int, prompt_id: str | None = None) -> SegmentPolygon:
    return SegmentPolygon(geometry, ident, prompt_id, 0.91, 0.96, geometry.area, 0)


def _staircase(x0: float, y0: float, steps: int, pixel: float = 10.0) -> Polygon:
    """A field whose east edge is a 10 m staircase, as the vectoriser draws a slanted edge."""
    ring = [(x0, y0)]
    for k in range(steps):
        ring += [
            (x0 + 200 + k * pixel, y0 + k * pixel),
            (x0 + 200 + k * pixel, y0 + (k + 1) * pixel),
        ]
    ring += [(x0, y0 + steps * pixel)]
    return Polygon(ring)


def test_fields_validate_against_fiboa_core_and_carry_our_attributes(tmp_path):
    polygons = [
        _polygon(_staircase(500_000, 5_000_000, 30), 1),
        _polygon(box(500_300, 5_000_000, 500_400, 5_000_100), 2),  # touches nothing, 1 ha
        _polygon(box(500_600, 5_000_000, 500_610, 5_000_010), 3),  # 100 m²: too small
        _polygon(Polygon(), 4),
    ]
    cleaning = FieldCleaning(simplify_m=10.0)  # a 45° staircase of 10 m pixels needs 7.1 m
    result = write_fields(
        tmp_path, polygons, UTM, cleaning, lineage=LINEAGE, scene_id="S2B_33UUP_20240603",
        acquired=ACQUIRED,
    )  # fmt: skip
    assert fiboa_errors(tmp_path / FIELDS) == []
    fields = gpd.read_parquet(tmp_path / FIELDS)
    assert list(fields["id"]) == ["S2B_33UUP_20240603/1", "S2B_33UUP_20240603/2"]
    assert fields.crs == UTM
    assert set(fields["determination_method"]) == {"auto-imagery"}
    assert list(fields["determination_datetime"]) == [ACQUIRED, ACQUIRED]
    assert list(fields["model_version"]) == ["4", "4"] and set(fields["model_name"]) == {
        "sam-vit_b"
    }
    assert fields["predicted_iou"].tolist() == pytest.approx([0.91, 0.91], rel=1e-6)  # float32
    # area in hectares and perimeter in metres of the written outline (fiboa: they must match)
    assert fields["area"].tolist() == pytest.approx(list(fields.area / 1e4), rel=1e-6)
    assert fields["perimeter"].tolist() == pytest.approx(list(fields.length), rel=1e-6)
    assert fields.geometry.iloc[1].equals(polygons[1].geometry)
    # the staircase was simplified within the tolerance, and nothing was lost silently
    staircase = fields.geometry.iloc[0]
    assert len(staircase.exterior.coords) < len(polygons[0].geometry.exterior.coords) / 4
    assert shapely.hausdorff_distance(staircase, polygons[0].geometry) <= 10.0 + 1e-9
    aside = gpd.read_parquet(tmp_path / SET_ASIDE)
    assert dict(zip(aside["id"], aside["reason"], strict=True)) == {
        "S2B_33UUP_20240603/3": "too_small",
        "S2B_33UUP_20240603/4": "empty",
    }
    assert len(result.kept) + len(result.dropped) == len(polygons)
    collection = json.loads(pq.read_schema(tmp_path / FIELDS).metadata[b"fiboa"])
    assert collection["fiboa_version"] == "0.2.0" and collection["id"] == "S2B_33UUP_20240603"


def test_the_validator_catches_what_fiboa_forbids(tmp_path):
    """The checked-in schema's rules bite: a check that cannot fail would prove nothing."""
    write_fields(
        tmp_path, [_polygon(box(0, 0, 100, 100), 1)], UTM, FieldCleaning(), lineage={},
        scene_id="s", acquired=None,
    )  # fmt: skip
    table = pq.read_table(tmp_path / FIELDS)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(1, "area", table["area"].cast("float64")), bad)
    assert fiboa_errors(bad) == ["area is double, fiboa's float is float"]
    column = table.schema.get_field_index("determination_method")
    pq.write_table(table.set_column(column, "determination_method", [["guessed"]]), bad)
    assert fiboa_errors(bad) == ["determination_method: not one of " + str(
        ["manual", "driven", "surveyed", "administrative", "auto-operation", "auto-imagery",
         "unknown"])]  # fmt: skip
    pq.write_table(table.replace_schema_metadata({}), bad)
    assert fiboa_errors(bad) == ["no fiboa collection in the Parquet metadata"]


def test_prompted_masks_may_overlap_and_keep_their_prompt_ids(tmp_path):
    polygons = [
        _polygon(box(0, 0, 200, 200), 1, "north"),
        _polygon(box(100, 100, 300, 300), 2, "south"),  # overlaps the first
    ]
    write_fields(
        tmp_path, polygons, UTM, FieldCleaning(), lineage=LINEAGE, scene_id="x", acquired=None
    )
    assert fiboa_errors(tmp_path / FIELDS) == []
    fields = gpd.read_parquet(tmp_path / FIELDS)
    assert list(fields["prompt_id"]) == ["north", "south"]
    assert fields["determination_datetime"].isna().all()  # not an ingested scene: unknown
    assert fields.is_valid.all()


def test_a_lon_lat_raster_is_cleaned_in_metres_and_written_in_lon_lat(tmp_path):
    # 100 m x 100 m near 50°N: 0.0014 ° of longitude, 0.0009 ° of latitude
    field = box(10.0, 50.0, 10.0 + 100 / 71_700, 50.0 + 100 / 111_230)
    write_fields(
        tmp_path, [_polygon(field, 1)], "EPSG:4326", FieldCleaning(min_area_m2=9_000.0),
        lineage={}, scene_id="x", acquired=None,
    )  # fmt: skip
    fields = gpd.read_parquet(tmp_path / FIELDS)
    assert fields.crs == "EPSG:4326"
    assert fields["area"].iloc[0] == pytest.approx(1.0, rel=0.01)  # 1 ha, in metres
    assert fields["perimeter"].iloc[0] == pytest.approx(400.0, rel=0.01)
    # unchanged but for the snap to the noding grid (a millimetre) in the UTM zone
    written, given = gpd.GeoSeries([fields.geometry.iloc[0], field], crs="EPSG:4326").to_crs(UTM)
    assert shapely.hausdorff_distance(written, given) <= NODING_GRID_M


def test_outlines_fiboa_cannot_hold_are_set_aside_not_written(tmp_path):
    lake = box(0, 0, 40_000, 40_000)  # 160,000 ha
    write_fields(
        tmp_path, [_polygon(lake, 1), _polygon(box(50_000, 0, 50_100, 100), 2)], UTM,
        FieldCleaning(), lineage={}, scene_id="x", acquired=None,
    )  # fmt: skip
    assert fiboa_errors(tmp_path / FIELDS) == []
    assert list(gpd.read_parquet(tmp_path / FIELDS)["id"]) == ["x/2"]
    aside = gpd.read_parquet(tmp_path / SET_ASIDE)
    assert list(aside["reason"]) == ["beyond_format_limits"]
    assert aside["area_m2"].iloc[0] == pytest.approx(1.6e9)


def test_a_scene_without_polygons_writes_empty_files_of_the_same_schema(tmp_path):
    write_fields(
        tmp_path, [], "EPSG:4326", FieldCleaning(), lineage={}, scene_id="x", acquired=None
    )
    other = tmp_path / "other"
    other.mkdir()
    write_fields(
        other, [_polygon(box(0, 0, 100, 100), 1)], UTM, FieldCleaning(), lineage=LINEAGE,
        scene_id="x", acquired=ACQUIRED,
    )  # fmt: skip
    for name in (FIELDS, SET_ASIDE):
        empty, full = pq.read_schema(tmp_path / name), pq.read_schema(other / name)
        assert empty.names == full.names and empty.types == full.types, name
    assert pq.read_table(tmp_path / FIELDS).num_rows == 0
    assert fiboa_errors(tmp_path / FIELDS) == []
