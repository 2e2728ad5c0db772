"""Reading a user's GeoJSON document: its text within limits, its CRS, its numbers.

Shared by the area (:mod:`components.core.area`) and the prompts
(:mod:`components.core.prompt_geojson`), so both refuse the same bad input with the
same message: text too large or nested too deep for Python's JSON decoder, integers
too long to convert, a ``crs`` member that pyproj parses but cannot transform to the
Earth's lon/lat (a Moon CRS, an engineering CRS), numbers too large for a float, and
projected coordinates no position on the Earth has (see :mod:`components.core.limits`).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from components.core.limits import (
    MAX_CRS_NAME_CHARS,
    MAX_GEOJSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_INT_DIGITS,
    MAX_PROJECTED_COORDINATE_M,
)
from components.errors import InputError

LONLAT = "OGC:CRS84"
"""RFC 7946: longitude, latitude on WGS 84."""

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def load_document(geojson: str | Mapping[str, Any], what: str) -> Any:
    """The JSON value of a GeoJSON text (or a mapping as given), read within the limits.

    A UTF-8 byte order mark is skipped (Windows tools write one). The size and nesting
    depth are checked before decoding and integers while decoding, so an oversized or
    hostile text fails here with ``what`` named instead of deep in the decoder.
    """
    if not isinstance(geojson, str):
        return geojson
    text = geojson.removeprefix("\ufeff")
    if len(text) > MAX_GEOJSON_BYTES:
        raise InputError(
            f"the {what} text is {len(text):,} characters, more than the limit of "
            f"{MAX_GEOJSON_BYTES:,} (MAX_GEOJSON_BYTES)"
        )
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise InputError(
            f"the {what} text is JSON nested {depth} levels deep, more than the limit of "
            f"{MAX_JSON_DEPTH} (GeoJSON needs 8)"
        )
    try:
        return json.loads(text, parse_int=partial(_bounded_int, what))
    except json.JSONDecodeError as err:
        raise InputError(f"the {what} text is not valid JSON: {err}") from err


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, without decoding it.

    Escapes and then strings are removed (brackets inside strings do not nest), and the
    rest counted with numpy: linear time, so a 10 MiB text takes a tenth of a second.
    """
    skeleton = _STRING.sub("", _ESCAPE.sub("", text)).encode("utf-8", "replace")
    brackets = np.frombuffer(skeleton.translate(None, _NOT_BRACKET), dtype=np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _bounded_int(what: str, digits: str) -> int:
    """A JSON integer, refused when longer than any coordinate, label or id needs."""
    count = len(digits.lstrip("-"))
    if count > MAX_JSON_INT_DIGITS:
        raise InputError(
            f"the {what} text holds an integer of {count:,} digits, more than the "
            f"limit of {MAX_JSON_INT_DIGITS} (MAX_JSON_INT_DIGITS)"
        )
    return int(digits)


def finite_float(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not a finite number.

    ``bool`` is not a number here, and an integer too large for a float (``10**400``)
    is not finite, where ``float()`` would raise ``OverflowError``.
    """
    if type(value) is float:  # the common case, first: prompt files hold 100,000s
        return value if math.isfinite(value) else None
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        return None
    if isinstance(value, int) and not -1e300 < value < 1e300:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def finite_coordinates(coordinates: Any, depth: int) -> bool:
    """Whether nested coordinate lists, ``depth`` deep at most, hold only finite numbers.

    The depth is the geometry's (3 for a Polygon's rings of positions of numbers), so a
    hostile nesting in a mapping given directly cannot recurse without end.
    """
    if isinstance(coordinates, list | tuple):
        return depth > 0 and all(finite_coordinates(c, depth - 1) for c in coordinates)
    return finite_float(coordinates) is not None


def document_crs(doc: Mapping[str, Any], what: str = "") -> CRS:
    """The legacy ``crs`` member's CRS if present, else lon/lat.

    GDAL and QGIS still write that member. ``what`` names the document in errors,
    e.g. ``"geometry "``. A CRS that pyproj reads but cannot transform to lon/lat on
    the Earth is refused here, before any coordinate is looked at.
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
            f"unsupported {what}'crs' member {short_repr(member)}: expected "
            '{"type": "name", "properties": {"name": "EPSG:..."}}'
        )
    check_name(name, f"{what}'crs' name", MAX_CRS_NAME_CHARS, "MAX_CRS_NAME_CHARS", ": not a CRS")
    try:
        crs = CRS.from_user_input(name)
    except CRSError as err:
        raise InputError(
            f"{what}'crs' name {short_repr(name)} is not a CRS pyproj understands"
        ) from err
    transformer(crs, CRS.from_user_input(LONLAT), f"{what}'crs' name {short_repr(name)}")
    return crs


def transformer(src: CRS, dst: CRS, what: str) -> Transformer:
    """An ``always_xy`` transformer from ``src`` to ``dst``; ``InputError`` naming ``what``.

    pyproj raises ``ProjError`` when no transformation exists (another celestial body,
    an engineering CRS with no datum); that is the input's fault, not a bug.
    """
    try:
        return Transformer.from_crs(src, dst, always_xy=True)
    except ProjError as err:
        # PROJ's reason, when it gives one, without its call-site prefix and advice.
        reason = str(err).rpartition("proj_create_operations: ")[2].split(". ")[0]
        if reason.count(")") > reason.count("("):  # the "(Internal Proj Error: ...)" wrapper
            reason = reason[: reason.rindex(")")]
        detail = f": {reason.rstrip(' .')}" if reason != str(err) else ""
        raise InputError(
            f"{what}: pyproj cannot transform {src.name!r} to {dst.name!r}{detail}"
        ) from err


def check_projected(where: str, coords: NDArray[np.float64], crs: CRS) -> None:
    """Refuse projected coordinates farther from the origin than any place on the Earth.

    Geographic coordinates are checked as longitude and latitude by the callers. The
    limit is :data:`MAX_PROJECTED_COORDINATE_M` in the CRS's own unit; it keeps GEOS
    and densification from working on (or failing over) absurd extents.
    """
    if crs.is_geographic or coords.size == 0:
        return
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    limit = MAX_PROJECTED_COORDINATE_M / (factor if factor and math.isfinite(factor) else 1.0)
    worst = float(np.abs(coords).max())
    if worst > limit:
        raise InputError(
            f"{where} has a coordinate of {worst:g}, beyond ±{limit:g} "
            f"({MAX_PROJECTED_COORDINATE_M:g} m, MAX_PROJECTED_COORDINATE_M) in {crs.name}: "
            "no place on the Earth is that far from the projection's origin"
        )


def check_name(text: str, what: str, limit: int, limit_name: str, why: str) -> None:
    """Refuse a name (a ``prompt_id``, a ``crs`` name) that is too long or unwritable.

    ``what`` names it in the message, ``limit_name`` is the limit's constant and ``why``
    ends the message (what the name is used for).
    """
    if len(text) > limit:
        raise InputError(
            f"{what} is {len(text):,} characters long, more than the limit of {limit:,} "
            f"({limit_name}){why}"
        )
    if (bad := _unwritable_character(text)) is not None:
        raise InputError(f"{what} {short_repr(text)} holds {bad}{why}")


def _unwritable_character(text: str) -> str | None:
    r"""The first control character or lone surrogate of ``text``, described; else ``None``.

    Neither belongs in a name: C libraries (GDAL, PROJ) cut a string at a NUL, and a
    lone surrogate (a JSON escape such as ``\ud800``) cannot be encoded as UTF-8.
    """
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs":
            return f"U+{ord(char):04X}, a lone surrogate, not UTF-8 text"
        if category == "Cc":
            return f"U+{ord(char):04X}, a control character"
    return None


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
