"""Field boundaries users can take straight into a GIS: a fiboa GeoParquet file.

``fields.parquet`` follows fiboa core v0.2.0 (``id``, ``geometry``, ``area`` in
hectares, ``perimeter`` in metres, ``determination_method`` ``auto-imagery`` and
``determination_datetime`` the acquisition's time) and carries our attributes beside
them (predicted IoU, stability, model name and version, scene id, ``prompt_id`` in
prompted mode). The outlines are the masks' polygons cleaned in ground units
(:mod:`components.core.fields`): simplified with shared edges kept shared, holes
filled, too small or too large fields set aside. Nothing is dropped silently: what
the cleaning set aside goes to ``fields_set_aside.parquet`` with the reason.

The collection-level metadata is embedded in the Parquet metadata under ``fiboa``, as
fiboa's GeoParquet encoding asks; ``tests/data/fiboa`` holds the schema the tests
validate against.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.core.fields import (
    CleaningResult,
    DroppedField,
    FieldCleaning,
    clean_fields,
    metres_per_unit,
)
from components.core.records import to_record
from components.core.vectorize import SegmentPolygon, as_crs
from components.version import __version__

FIELDS = "fields.parquet"
SET_ASIDE = "fields_set_aside.parquet"
FIBOA_VERSION = "0.2.0"
FIBOA_SCHEMA = f"https://fiboa.github.io/specification/v{FIBOA_VERSION}/schema.yaml"
DETERMINATION_METHOD = "auto-imagery"
M2_PER_HA = 10_000.0
MAX_AREA_HA = 100_000.0
MAX_PERIMETER_M = 125_000.0
"""fiboa core's bounds on ``area`` and ``perimeter``: a larger outline is no field, and a
file holding one would not validate, so it is set aside instead."""


KEPT_COLUMNS = (
    "id", "area", "perimeter", "determination_method", "determination_datetime",
    "predicted_iou", "stability_score", "prompt_id", "model_name", "model_version", "scene_id",
)  # fmt: skip
SET_ASIDE_COLUMNS = (
    "id", "reason", "area_m2", "predicted_iou", "stability_score", "prompt_id",
    "model_name", "model_version", "scene_id",
)  # fmt: skip


def write_fields(
    folder: Path,
    polygons: Sequence[SegmentPolygon],
    crs: Any,
    cleaning: FieldCleaning,
    *,
    lineage: dict[str, Any],
    scene_id: str,
    acquired: datetime | None,
    set_aside: Sequence[tuple[SegmentPolygon, str]] = (),
) -> CleaningResult:
    """Clean ``polygons`` and write ``fields.parquet`` and ``fields_set_aside.parquet``.

    ``set_aside`` are segments withheld before the cleaning (e.g. not cropland), with
    their reasons: they join the set-aside layer as they are.

    The fields stay in the scene's ``crs``. A geographic CRS (a user's lon/lat GeoTIFF)
    is cleaned in its UTM zone, where metres mean metres, and brought back.
    """
    ground = _ground_crs(polygons, crs)
    geometries = _transformed([p.geometry for p in polygons], crs, ground)
    if not polygons:
        result = CleaningResult((), (), simplified=cleaning.simplify_m > 0)
    else:
        result = _within_limits(clean_fields(geometries, ground, cleaning), ground)
    metres = metres_per_unit(ground) if polygons else 1.0
    back = _transformed([k.geometry for k in result.kept], ground, crs)
    common = {
        "model_name": lineage.get("model_name"),
        "model_version": None if lineage.get("model_version") is None
        else str(lineage.get("model_version")),
        "scene_id": scene_id,
    }  # fmt: skip
    kept = [
        {
            **_attributes(polygons[k.index], scene_id),
            "geometry": geometry,
            "area": k.area_m2 / M2_PER_HA,
            "perimeter": float(k.geometry.length) * metres,
            "determination_method": DETERMINATION_METHOD,
            "determination_datetime": acquired,
            **common,
        }
        for k, geometry in zip(result.kept, back, strict=True)
    ]
    withheld: list[tuple[SegmentPolygon, str, float]]
    withheld = [(polygons[d.index], d.reason, d.area_m2) for d in result.dropped]
    withheld += [(p, reason, p.area_m2) for p, reason in set_aside]
    _write(folder / FIELDS, kept, KEPT_COLUMNS, crs, _collection(scene_id, cleaning))
    _write(
        folder / SET_ASIDE, _aside_rows(withheld, scene_id, common), SET_ASIDE_COLUMNS, crs, None
    )
    return result


def _aside_rows(
    withheld: Sequence[tuple[SegmentPolygon, str, float]], scene_id: str, common: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows of the set-aside layer: each polygon as it was, its reason and its area."""
    return [
        {
            **_attributes(p, scene_id),
            "geometry": p.geometry,
            "reason": reason,
            "area_m2": area_m2,
            **common,
        }
        for p, reason, area_m2 in withheld
    ]


def _within_limits(result: CleaningResult, crs: Any) -> CleaningResult:
    """``result`` with fields beyond fiboa's area or perimeter bounds set aside."""
    metres = metres_per_unit(crs)
    kept, beyond = [], []
    for k in result.kept:
        large = k.area_m2 / M2_PER_HA > MAX_AREA_HA or k.geometry.length * metres > MAX_PERIMETER_M
        if large:
            beyond.append(DroppedField(k.index, "beyond_format_limits", k.area_m2))
        else:
            kept.append(k)
    dropped = sorted((*result.dropped, *beyond), key=lambda d: d.index)
    return replace(result, kept=tuple(kept), dropped=tuple(dropped))


def _ground_crs(polygons: Sequence[SegmentPolygon], crs: Any) -> Any:
    """``crs`` when it is projected, else the UTM zone of the polygons' centre."""
    import geopandas as gpd

    if as_crs(crs).is_projected or not polygons:
        return crs
    return gpd.GeoSeries([p.geometry for p in polygons], crs=crs).estimate_utm_crs()


def _transformed(geometries: list[Any], source: Any, target: Any) -> list[Any]:
    if source == target or not geometries:
        return geometries
    import geopandas as gpd

    return list(gpd.GeoSeries(geometries, crs=source).to_crs(target))


def _attributes(polygon: SegmentPolygon, scene_id: str) -> dict[str, Any]:
    return {
        "id": f"{scene_id}/{polygon.id}",
        "predicted_iou": polygon.predicted_iou,
        "stability_score": polygon.stability_score,
        "prompt_id": None if polygon.prompt_id is None else str(polygon.prompt_id),
    }


def _collection(scene_id: str, cleaning: FieldCleaning) -> dict[str, Any]:
    """Fiboa's collection-level metadata for one scene's fields."""
    return {
        "fiboa_version": FIBOA_VERSION,
        "fiboa_extensions": [],
        "schemas": [FIBOA_SCHEMA],
        "type": "Collection",
        "id": scene_id,
        "description": (
            f"Field boundaries segmented with SAM by s2-sam-pipelines {__version__}, cleaned "
            f"in ground units ({json.dumps(to_record(cleaning), sort_keys=True)})"
        ),
        "license": "other",
    }


_TYPES = {
    "id": pa.string(),
    "area": pa.float32(),  # fiboa's float: IEEE 32-bit
    "perimeter": pa.float32(),
    "determination_method": pa.string(),
    "determination_datetime": pa.timestamp("ms", tz="UTC"),
    "predicted_iou": pa.float32(),
    "stability_score": pa.float32(),
    "prompt_id": pa.string(),
    "model_name": pa.string(),
    "model_version": pa.string(),
    "scene_id": pa.string(),
    "reason": pa.string(),
    "area_m2": pa.float64(),
}


def _write(
    path: Path,
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    crs: Any,
    collection: dict[str, Any] | None,
) -> None:
    """GeoParquet with fixed column types (also when empty); ``collection`` under ``fiboa``.

    geopandas writes the GeoParquet (geometry as WKB, its ``geo`` metadata); the table
    is then cast to fixed types, so a column of nothing but nulls is still a string
    column and readers see one schema whatever a scene held.
    """
    import geopandas as gpd

    data = {
        name: pa.array([r[name] for r in rows], type=_TYPES[name]).to_pandas() for name in columns
    }
    frame = gpd.GeoDataFrame(data, geometry=[r["geometry"] for r in rows], crs=crs)
    frame.to_parquet(path, index=False)
    table = pq.read_table(path)
    metadata = dict(table.schema.metadata or {})
    if collection is not None:
        metadata[b"fiboa"] = json.dumps(collection).encode()
    schema = pa.schema(
        [pa.field(f.name, _TYPES.get(f.name, f.type)) for f in table.schema], metadata=metadata
    )
    pq.write_table(table.cast(schema), path)
