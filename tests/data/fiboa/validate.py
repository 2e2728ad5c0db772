"""Check a GeoParquet file against fiboa core v0.2.0, as fiboa's validator would.

fiboa's schema language (https://github.com/fiboa/schema/blob/v0.1.0/datatypes.md) names
types; the GeoParquet encoding maps each to a Parquet type (``geoparquet/datatypes.md``).
The checks: the ``fiboa`` collection in the Parquet metadata with ``fiboa_version``;
every required property present and never null; each present core property of the
mapped type and within its ``minLength``, ``exclusiveMinimum``, ``maximum`` and
``enum``; ``id`` unique; geometry WKB, readable and valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import yaml

SCHEMA_PATH = Path(__file__).with_name("core-v0.2.0.yaml")
PARQUET_TYPES = {
    "string": pa.string(),
    "float": pa.float32(),
    "double": pa.float64(),
    "date-time": pa.timestamp("ms", tz="UTC"),
    "geometry": pa.binary(),
}


def fiboa_errors(path: Path) -> list[str]:
    """Every way ``path`` breaks fiboa core v0.2.0 (empty: valid)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    errors: list[str] = []
    if b"fiboa" not in metadata:
        return ["no fiboa collection in the Parquet metadata"]
    collection = json.loads(metadata[b"fiboa"])
    if collection.get("fiboa_version") != "0.2.0":
        errors.append(f"fiboa_version is {collection.get('fiboa_version')!r}")
    geo = json.loads(metadata.get(b"geo", b"{}"))
    if geo.get("columns", {}).get("geometry", {}).get("encoding") != "WKB":
        errors.append("geometry is not WKB-encoded GeoParquet")
    for name in schema["required"]:
        if name not in table.column_names:
            errors.append(f"required property {name} missing")
        elif table[name].null_count:
            errors.append(f"required property {name} has nulls")
    for name, rules in schema["properties"].items():
        if name in table.column_names:
            errors += _property_errors(name, rules, table[name])
    ids = table["id"].to_pylist() if "id" in table.column_names else []
    if len(set(ids)) != len(ids):
        errors.append("id is not unique")
    return errors


def _property_errors(name: str, rules: dict[str, object], column: pa.ChunkedArray) -> list[str]:
    expected = PARQUET_TYPES.get(str(rules["type"]))
    if expected is None:
        return [f"{name}: type {rules['type']} has no mapping here"]
    if column.type != expected:
        return [f"{name} is {column.type}, fiboa's {rules['type']} is {expected}"]
    values = [v for v in column.to_pylist() if v is not None]
    errors = []
    if rules["type"] == "geometry":
        geometries = shapely.from_wkb(values)
        if not all(shapely.is_valid(geometries)):
            errors.append("geometry: invalid geometries")
    if "minLength" in rules and any(len(v) < rules["minLength"] for v in values):  # type: ignore[operator]
        errors.append(f"{name}: shorter than {rules['minLength']}")
    if "exclusiveMinimum" in rules and any(v <= rules["exclusiveMinimum"] for v in values):  # type: ignore[operator]
        errors.append(f"{name}: not above {rules['exclusiveMinimum']}")
    if "maximum" in rules and any(v > rules["maximum"] for v in values):  # type: ignore[operator]
        errors.append(f"{name}: above {rules['maximum']}")
    if "enum" in rules and any(v not in rules["enum"] for v in values):  # type: ignore[operator]
        errors.append(f"{name}: not one of {rules['enum']}")
    return errors
