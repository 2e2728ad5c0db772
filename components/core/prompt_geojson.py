"""The prompt file: FarmVibes.AI's ``segment_s2`` GeoJSON schema, read and validated.

Checked strictly, so that a bad prompt fails before any inference with a message
naming the feature at fault (its index and ``prompt_id``) and the rule it breaks; see
:mod:`components.core.prompts` for the schema and for placing prompts in a scene.
The work is bounded too (:mod:`components.core.limits`): the text's size and nesting,
the number of features, of points per group and of groups, and the length of an id.
A ``prompt_id`` names an output band, so it must be text a band name can hold: no
control characters, no lone surrogates, and no two ids may give the same band name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pyproj import CRS

from components.core.geojson_crs import (
    check_name,
    check_projected,
    document_crs,
    finite_float,
    load_document,
    short_repr,
)
from components.core.limits import (
    MAX_FEATURES,
    MAX_POINTS_PER_GROUP,
    MAX_PROMPT_GROUPS,
    MAX_PROMPT_ID_CHARS,
)
from components.core.rendering import band_name
from components.errors import InputError

PromptId = int | str
"""A prompt group's id; becomes the name of its output band."""

GeometryType = Literal["Point", "MultiPoint", "Polygon"]


@dataclass(frozen=True)
class PromptFeature:
    """One validated feature, still in the collection's CRS."""

    index: int
    """Position in the collection's ``features`` list, for messages."""
    prompt_id: PromptId
    label: int
    geometry_type: GeometryType
    coordinates: tuple[tuple[float, float], ...]
    """The points of a Point/MultiPoint, or a Polygon's exterior ring."""

    @property
    def is_box(self) -> bool:
        """Whether the feature is a box prompt (a Polygon)."""
        return self.geometry_type == "Polygon"


@dataclass(frozen=True)
class ParsedPrompts:
    """A validated prompt collection and the CRS its coordinates are in."""

    features: tuple[PromptFeature, ...]
    crs: CRS

    @property
    def prompt_ids(self) -> tuple[PromptId, ...]:
        """Prompt ids in order of first appearance: the output band order."""
        return tuple(dict.fromkeys(f.prompt_id for f in self.features))


def parse_prompts(geojson: str | Mapping[str, Any]) -> ParsedPrompts:
    """Validate a prompt FeatureCollection (JSON text or a parsed mapping).

    Raises:
        ValueError: The collection breaks the schema; the message names the feature
            (index and ``prompt_id``) or group and the rule it breaks.
    """
    doc = load_document(geojson, "prompts")
    if not isinstance(doc, Mapping):
        raise InputError(
            f"prompts must be a GeoJSON FeatureCollection object, got {type(doc).__name__}"
        )
    if doc.get("type") != "FeatureCollection":
        raise InputError(
            f"prompts must be a GeoJSON FeatureCollection, got type {short_repr(doc.get('type'))}"
        )
    crs = document_crs(doc)
    raw = doc.get("features")
    if not isinstance(raw, list | tuple):
        raise InputError(f"FeatureCollection 'features' must be a list, got {type(raw).__name__}")
    if not raw:
        raise InputError("FeatureCollection has no features: at least one prompt is needed")
    if len(raw) > MAX_FEATURES:
        raise InputError(
            f"prompts have {len(raw):,} features, more than the limit of {MAX_FEATURES:,} "
            "(MAX_FEATURES)"
        )
    features = tuple(_parse_feature(i, f, crs) for i, f in enumerate(raw))
    _check_groups(features)
    return ParsedPrompts(features=features, crs=crs)


def _where(index: int, prompt_id: PromptId | None = None) -> str:
    return f"feature {index}" if prompt_id is None else f"feature {index} (prompt_id {prompt_id!r})"


def _is_int(value: object) -> bool:
    # bool is an int subclass, but ``true`` as a label or id is a mistake.
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _parse_feature(index: int, feature: object, crs: CRS) -> PromptFeature:
    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        raise InputError(f"feature {index}: must be a GeoJSON Feature, got {short_repr(feature)}")
    prompt_id, label = _id_and_label(index, feature.get("properties"))
    where = _where(index, prompt_id)
    geometry = feature.get("geometry")
    if not isinstance(geometry, Mapping):
        raise InputError(
            f"{where}: geometry must be a Point, MultiPoint or Polygon, got {short_repr(geometry)}"
        )
    kind = geometry.get("type")
    positions = _positions(where, kind, geometry.get("coordinates"), label, crs)
    _check_range(where, positions, crs)
    return PromptFeature(
        index=index,
        prompt_id=prompt_id,
        label=label,
        geometry_type=kind,  # type: ignore[arg-type]  # checked by _positions
        coordinates=tuple(positions),
    )


def _id_and_label(index: int, props: object) -> tuple[PromptId, int]:
    """A feature's ``prompt_id`` (int or non-empty str) and ``label`` (0 or 1)."""
    if not isinstance(props, Mapping):
        raise InputError(f"feature {index}: needs 'properties' with 'label' and 'prompt_id'")
    if "prompt_id" not in props:
        raise InputError(f"feature {index}: properties need a 'prompt_id'")
    raw_id = props["prompt_id"]
    if _is_int(raw_id):
        prompt_id: PromptId = int(raw_id)
    elif isinstance(raw_id, str) and raw_id.strip():
        prompt_id = raw_id
    else:
        raise InputError(
            f"feature {index}: prompt_id must be an int or a non-empty string, "
            f"got {short_repr(raw_id)}"
        )
    _check_id_text(index, prompt_id)
    where = _where(index, prompt_id)
    if "label" not in props:
        raise InputError(f"{where}: properties need a 'label' (1 foreground, 0 background)")
    label = props["label"]
    if not _is_int(label) or label not in (0, 1):
        raise InputError(f"{where}: label must be 0 or 1, got {short_repr(label)}")
    return prompt_id, int(label)


def _check_id_text(index: int, prompt_id: PromptId) -> None:
    """A ``prompt_id`` a band name can hold: short, no control characters, valid UTF-8.

    An int id is limited by its digits (compared, not converted: Python refuses to
    print an int of over 4,300 digits). The raster writer cuts a band name at a NUL,
    so the ids NUL-a and NUL-b both gave two bands named ``mask_prompt_``; a lone
    surrogate cannot be written to any output, which only failed after the inference.
    """
    if isinstance(prompt_id, int):
        if -(10**MAX_PROMPT_ID_CHARS) < prompt_id < 10**MAX_PROMPT_ID_CHARS:
            return
        raise InputError(
            f"feature {index}: prompt_id is an int of more than {MAX_PROMPT_ID_CHARS} digits "
            "(MAX_PROMPT_ID_CHARS); it names an output band"
        )
    why = "; it names an output band"
    check_name(
        prompt_id, f"feature {index}: prompt_id", MAX_PROMPT_ID_CHARS, "MAX_PROMPT_ID_CHARS", why
    )


def _positions(
    where: str, kind: object, coords: object, label: int, crs: CRS
) -> list[tuple[float, float]]:
    """A Point's position, a MultiPoint's positions, or a Polygon's exterior ring."""
    if kind == "Point":
        return [_position(where, coords)]
    if kind == "MultiPoint":
        if not isinstance(coords, list | tuple) or not coords:
            raise InputError(f"{where}: MultiPoint coordinates must be a non-empty list")
        if len(coords) > MAX_POINTS_PER_GROUP:
            raise InputError(_too_many_points(where, len(coords)))
        return [_position(where, p) for p in coords]
    if kind != "Polygon":
        raise InputError(
            f"{where}: geometry type must be Point, MultiPoint or Polygon, got {short_repr(kind)}"
        )
    if label != 1:
        raise InputError(f"{where}: a Polygon is a box prompt and must have label 1, got 0")
    if not isinstance(coords, list | tuple) or not coords:
        raise InputError(f"{where}: Polygon coordinates must be a non-empty list of rings")
    rings = [_ring(where, ring) for ring in coords]
    xs = [p[0] for p in rings[0]]
    ys = [p[1] for p in rings[0]]
    if max(xs) == min(xs) or max(ys) == min(ys):
        raise InputError(f"{where}: Polygon has zero width or height, so it is no box")
    for ring in rings[1:]:
        _check_range(where, ring, crs)
    return rings[0]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _position(where: str, value: object) -> tuple[float, float]:
    if isinstance(value, list | tuple) and len(value) in (2, 3):
        # An int too large for a float (10**400) is not finite: float() would overflow.
        numbers = [finite_float(v) for v in value]
        x, y = numbers[0], numbers[1]
        if x is not None and y is not None and None not in numbers:
            return (x, y)
        if all(_is_number(v) for v in value):
            raise InputError(f"{where}: coordinates must be finite, got {short_repr(value)}")
    raise InputError(f"{where}: a position must be [x, y] numbers, got {short_repr(value)}")


def _ring(where: str, value: object) -> list[tuple[float, float]]:
    # RFC 7946 rings are closed with >= 4 positions; an unclosed ring has the same
    # bounds, so only require enough positions to span an area.
    if not isinstance(value, list | tuple) or len(value) < 3:
        raise InputError(
            f"{where}: a Polygon ring must be a list of at least 3 positions, "
            f"got {short_repr(value)}"
        )
    return [_position(where, p) for p in value]


def _check_range(where: str, positions: list[tuple[float, float]], crs: CRS) -> None:
    if not crs.is_geographic:
        check_projected(where, np.asarray(positions, dtype=np.float64), crs)
        return
    for lon, lat in positions:
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise InputError(
                f"{where}: position ({lon}, {lat}) is not a valid (longitude, latitude); "
                "GeoJSON positions are [longitude, latitude]"
            )


def _too_many_points(where: str, count: int) -> str:
    return (
        f"{where}: {count:,} points, more than the limit of {MAX_POINTS_PER_GROUP:,} per "
        "prompt group (MAX_POINTS_PER_GROUP)"
    )


def _check_groups(features: tuple[PromptFeature, ...]) -> None:
    """Rules that span features: id collisions, one box per group, usable groups, limits."""
    by_name: dict[str, PromptFeature] = {}
    box_of: dict[PromptId, int] = {}
    members: dict[PromptId, list[PromptFeature]] = {}
    for feature in features:
        pid = feature.prompt_id
        first = by_name.setdefault(band_name(pid), feature)
        if type(first.prompt_id) is not type(pid):
            raise InputError(
                f"{_where(feature.index, pid)} and {_where(first.index, first.prompt_id)}: "
                "an int and a str prompt_id with the same text would collide as band names"
            )
        if feature.is_box:
            if pid in box_of:
                raise InputError(
                    f"prompt_id {pid!r}: features {box_of[pid]} and {feature.index} are both "
                    "boxes (Polygons); a prompt group takes at most one box"
                )
            box_of[pid] = feature.index
        members.setdefault(pid, []).append(feature)
    if len(members) > MAX_PROMPT_GROUPS:
        raise InputError(
            f"prompts have {len(members):,} prompt groups (distinct prompt_ids), more than "
            f"the limit of {MAX_PROMPT_GROUPS:,} (MAX_PROMPT_GROUPS)"
        )
    for pid, group in members.items():
        points = sum(len(f.coordinates) for f in group if not f.is_box)
        if points > MAX_POINTS_PER_GROUP:
            raise InputError(_too_many_points(f"prompt_id {pid!r}", points))
        if pid not in box_of and not any(f.label == 1 for f in group):
            indices = ", ".join(str(f.index) for f in group[:10])
            indices += f" and {len(group) - 10:,} more" if len(group) > 10 else ""
            raise InputError(
                f"prompt_id {pid!r} (features {indices}) has only background points; "
                "a prompt group needs a foreground point or a box"
            )
