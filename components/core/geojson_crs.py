"""The CRS of a GeoJSON document: RFC 7946 lon/lat, or the legacy ``crs`` member."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyproj import CRS
from pyproj.exceptions import CRSError

from components.errors import InputError

LONLAT = "OGC:CRS84"
"""RFC 7946: longitude, latitude on WGS 84."""


def document_crs(doc: Mapping[str, Any], what: str = "") -> CRS:
    """The legacy ``crs`` member's CRS if present, else lon/lat.

    GDAL and QGIS still write that member. ``what`` names the document in errors,
    e.g. ``"geometry "``.
    """
    member = doc.get("crs")
    if member is None:
        return CRS.from_user_input(LONLAT)
    name = None
    if isinstance(member, Mapping) and member.get("type") == "name":
        props = member.get("properties")
        if isinstance(props, Mapping):
            name = props.get("name")
    if not isinstance(name, str):
        raise InputError(
            f"unsupported {what}'crs' member {member!r}: expected "
            '{"type": "name", "properties": {"name": "EPSG:..."}}'
        )
    try:
        return CRS.from_user_input(name)
    except CRSError as err:
        raise InputError(f"{what}'crs' name {name!r} is not a CRS pyproj understands") from err
