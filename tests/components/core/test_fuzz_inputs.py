"""Generated hostile inputs: every prompt file, area and date ends in a result or an InputError.

A seeded generator (so a failure names a reproducible case) mutates valid prompt and
area documents with what users and broken exports really send: deep nesting, huge
integers, numbers as strings, NaN and infinities, byte order marks, control characters
and lone surrogates in ids, wrong types, CRSs pyproj cannot use, world-sized boxes,
coordinates far off the Earth, empty and duplicated features. Anything but success or
:class:`~components.errors.InputError` (a ``RecursionError``, ``OverflowError``,
``ProjError``, ``GEOSException``...) is a bug, and so is a case that takes long.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from affine import Affine

from components.core.area import parse_area
from components.core.limits import MAX_GEOJSON_BYTES
from components.core.prompts import load_prompts
from components.core.search import resolve_time_range
from components.errors import InputError
from components.io.files import read_user_text

SEED = 20_240_613
CASES = 300
"""Documents generated per kind: a few hundred, so the whole module stays under 20 s."""
SLOW_S = 2.0
"""Most CPU time one case may take (the largest generated text is a few hundred kB; the
slowest case took 0.4 CPU s here). CPU time of this process, not wall
time: CI's two cores are shared with other jobs, and a pathological case (quadratic
work, a runaway loop) still costs CPU seconds wherever it runs."""

UTM = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_300_000.0)
HEIGHT, WIDTH = 100, 200
NOW = datetime(2024, 6, 30, tzinfo=timezone.utc)
RAW = "__raw{}__"
"""A placeholder string replaced by raw JSON text (numbers JSON cannot carry as values)."""

CRS_NAMES = [
    "EPSG:32633",
    "EPSG:4326",
    "OGC:CRS84",
    "EPSG:3857",
    "EPSG:999999",
    "IAU_2015:30100",
    "+proj=longlat +a=1 +b=1",
    'ENGCRS["e",EDATUM["d"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],'
    'AXIS["y",north,LENGTHUNIT["metre",1]]]',
    "",
    "not a crs",
    "EPSG:32633\x00",
    "\ud800",
    "EPSG:" + "3" * 70_000,
]
RAW_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" + "0" * 400,
    "9" * 5_000,
    "-" + "9" * 320,
    "1e12",
    "1e300",
    "0.000000000000000000001",
    "12345678901234567890",
]
ODD_VALUES: list[Any] = [
    None,
    True,
    "12.5",
    "",
    [],
    {},
    [1],
    [[1, 2]],
    "\ud800",
    "\x00",
    -1,
    2**63,
    1.5,
    float("nan"),
    float("inf"),
]
ODD_IDS: list[Any] = [
    "\x00a",
    "\x00b",
    "\ud83d",
    "a\tb",
    "\u202e",
    "\ufeff",
    "x" * 199,
    "x" * 201,
    "  ",
    7,
    "7",
    10**199,
    10**201,
    True,
    None,
    1.0,
]


# --- the generator ------------------------------------------------------------------------


def scene_position(rng: random.Random, geographic: bool) -> list[float]:
    """A position in or near the test scene, in lon/lat or in UTM 33N."""
    x = 500_000.0 + rng.uniform(-500.0, 2_500.0)
    y = 5_300_000.0 - rng.uniform(-500.0, 1_500.0)
    if not geographic:
        return [x, y]
    # Near enough: 500 km E of 15° E at 47.8° N is about 15° E; precision is not the point.
    return [15.0 + (x - 500_000.0) / 75_000.0, 47.85 - (5_300_000.0 - y) / 111_000.0]


def box_ring(rng: random.Random, geographic: bool) -> list[list[float]]:
    (x0, y0), (x1, y1) = scene_position(rng, geographic), scene_position(rng, geographic)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def prompt_document(rng: random.Random) -> dict[str, Any]:
    """A valid prompt collection of a few points, multipoints and boxes."""
    geographic = rng.random() < 0.5
    features = []
    for k in range(rng.randint(1, 6)):
        kind = rng.choice(["Point", "MultiPoint", "Polygon"])
        if kind == "Point":
            coordinates: Any = scene_position(rng, geographic)
        elif kind == "MultiPoint":
            coordinates = [scene_position(rng, geographic) for _ in range(rng.randint(1, 5))]
        else:
            coordinates = [box_ring(rng, geographic)]
        features.append(
            {
                "type": "Feature",
                "properties": {"label": 1, "prompt_id": rng.choice([k, f"field-{k}"])},
                "geometry": {"type": kind, "coordinates": coordinates},
            }
        )
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if not geographic:
        doc["crs"] = {"type": "name", "properties": {"name": UTM}}
    return doc


def area_document(rng: random.Random) -> dict[str, Any]:
    """A valid area: a polygon, a feature or a collection of fields near 12° E 48° N."""
    geographic = rng.random() < 0.6
    fields = []
    for _ in range(rng.randint(1, 4)):
        if geographic:
            west, south = 12.0 + rng.uniform(0, 0.05), 48.0 + rng.uniform(0, 0.05)
            east, north = west + rng.uniform(0.001, 0.02), south + rng.uniform(0.001, 0.02)
        else:
            west, south = 280_000.0 + rng.uniform(0, 5_000), 5_352_000.0 + rng.uniform(0, 5_000)
            east, north = west + rng.uniform(50, 2_000), south + rng.uniform(50, 2_000)
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        fields.append({"type": "Polygon", "coordinates": [ring]})
    shape = rng.choice(["geometry", "feature", "collection"])
    doc: dict[str, Any]
    if shape == "geometry":
        doc = dict(fields[0])
    elif shape == "feature":
        doc = {"type": "Feature", "properties": {}, "geometry": fields[0]}
    else:
        doc = {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {}, "geometry": f} for f in fields],
        }
    if not geographic:
        doc["crs"] = {"type": "name", "properties": {"name": "EPSG:32633"}}
    return doc


def containers(value: Any) -> list[Any]:
    """Every dict and list inside ``value`` (the places a mutation can hit)."""
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict | list):
            out.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return out


def set_somewhere(rng: random.Random, doc: Any, value: Any) -> None:
    """Replace one value (or key's value) somewhere in ``doc`` with ``value``."""
    place = rng.choice(containers(doc))
    if isinstance(place, dict) and place:
        place[rng.choice(list(place))] = value
    elif isinstance(place, list) and place:
        place[rng.randrange(len(place))] = value


def numbers(doc: Any) -> list[tuple[list[Any], int]]:
    """``(list, index)`` of every number in ``doc``'s lists (coordinates, mostly)."""
    return [
        (place, i)
        for place in containers(doc)
        if isinstance(place, list)
        for i, v in enumerate(place)
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


def mutate(rng: random.Random, doc: dict[str, Any], raws: list[str]) -> None:
    """One structural mutation of ``doc`` (raw JSON tokens go through ``raws``)."""
    kind = rng.randrange(11)
    spots = numbers(doc)
    if kind == 0 and spots:  # a number JSON values cannot hold, written raw
        place, i = rng.choice(spots)
        place[i] = RAW.format(len(raws))
        raws.append(rng.choice(RAW_NUMBERS))
    elif kind == 1 and spots:  # a number as a string, a huge float, an odd value
        place, i = rng.choice(spots)
        place[i] = rng.choice([str(place[i]), place[i] * 1e9, -place[i], *ODD_VALUES])
    elif kind == 2:  # an odd value anywhere
        set_somewhere(rng, doc, copy.deepcopy(rng.choice(ODD_VALUES)))
    elif kind == 3:  # a crs member, sensible or not
        name = rng.choice(CRS_NAMES)
        doc["crs"] = rng.choice(
            [{"type": "name", "properties": {"name": name}}, name, {"type": "link"}]
        )
    elif kind == 4:  # ids and labels users and exports get wrong
        for feature in (f for f in doc.get("features", []) if isinstance(f, dict)):
            props = feature.setdefault("properties", {})
            if isinstance(props, dict) and rng.random() < 0.7:
                props["prompt_id"] = rng.choice(ODD_IDS)
            if isinstance(props, dict) and rng.random() < 0.3:
                props["label"] = rng.choice([0, 1, 2, "1", None, True])
    elif kind == 5:  # a world-sized box, in lon/lat or web mercator, maybe swapped
        corners = [(-180, -90, 180, 90), (-179.9, -89.9, 179.9, 89.9), (-90, -180, 90, 180)]
        w, s, e, n = rng.choice(corners)
        if rng.random() < 0.3:  # the same in web mercator metres
            w, s, e, n = (v * 111_319.49 for v in (w, s, e, n))
            doc["crs"] = {"type": "name", "properties": {"name": "EPSG:3857"}}
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        geometry = {"type": "Polygon", "coordinates": [ring]}
        feature = {"type": "Feature", "properties": {"label": 1, "prompt_id": "world"}}
        doc.setdefault("features", []).append({**feature, "geometry": geometry})
    elif kind == 6 and spots:  # coordinates off the Earth, in any CRS
        for place, i in rng.sample(spots, min(len(spots), rng.randint(1, 4))):
            place[i] = rng.choice([1e8, 1e9, 1e12, -1e12, 1e300, 99_999_999.0, 181.0, -91.0])
    elif kind == 7:  # empty or duplicated features
        features = doc.get("features")
        if isinstance(features, list) and features:
            doc["features"] = rng.choice([[], features * rng.randint(2, 50), [features[0]] * 3])
        else:
            doc["type"] = rng.choice(["FeatureCollection", "Feature", "GeometryCollection"])
    elif kind == 8:  # a key dropped
        place = rng.choice([c for c in containers(doc) if isinstance(c, dict)])
        if place:
            del place[rng.choice(list(place))]
    elif kind == 9:  # a coordinate list of the wrong depth
        set_somewhere(rng, doc, rng.choice([[[[[1.0, 2.0]]]], [1.0], [[[]]], "[1, 2]"]))
    elif isinstance(doc.get("features"), list):  # many points in one feature
        count = rng.choice([10, 1_000, 1_001, 3_000])
        points = [[500_000.0 + k % 2_000, 5_299_500.0 - k // 2_000] for k in range(count)]
        geometry = {"type": "MultiPoint", "coordinates": points}
        props = {"label": 1, "prompt_id": rng.choice([0, "many"])}
        doc["features"].append({"type": "Feature", "properties": props, "geometry": geometry})


def to_text(rng: random.Random, doc: Any, raws: list[str]) -> str:
    """``doc`` as JSON text, raw tokens in, maybe with a BOM or nesting bolted on."""
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    for k, raw in enumerate(raws):
        text = text.replace(json.dumps(RAW.format(k)), raw)
    roll = rng.random()
    if roll < 0.15:
        text = "\ufeff" + text
    elif roll < 0.2:
        text = "\ufeff\ufeff" + text
    elif roll < 0.35:  # nesting just under, just over or far over the limit
        depth = rng.choice([50, 56, 57, 64, 65, 1_000, 100_000])
        nested = "[" * depth + "1" + "]" * depth
        if '"properties": {"' in text:
            text = text.replace('"properties": {"', f'"properties": {{"deep": {nested}, "', 1)
        else:
            text = f'{{"deep": {nested}, {text[1:]}'
    elif roll < 0.4:
        text = text[: rng.randrange(len(text))]  # cut short
    return text


def generated(make: Callable[[random.Random], dict[str, Any]], seed: int) -> list[Any]:
    """``CASES`` documents: a few valid, most mutated, half of them as text."""
    rng = random.Random(seed)
    cases: list[Any] = []
    for _ in range(CASES):
        doc, raws = make(rng), []
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            mutate(rng, doc, raws)
        cases.append(to_text(rng, doc, raws) if raws or rng.random() < 0.5 else doc)
    return cases


def outcome(call: Callable[[], Any], case: Any) -> str:
    """``"ok"`` or ``"input"``; anything else fails the test with the case shown."""
    start = time.process_time()
    try:
        call()
        result = "ok"
    except InputError as err:
        assert "\n" not in str(err), f"multi-line message {err!r} for {str(case)[:300]}"
        result = "input"
    except Exception as err:  # the point: no other exception may escape
        pytest.fail(f"{type(err).__name__}: {str(err)[:200]} for {str(case)[:300]}")
    took = time.process_time() - start
    assert took < SLOW_S, f"{took:.1f} CPU s for {str(case)[:300]}"
    return result


# --- the tests ------------------------------------------------------------------------------


def test_generated_prompt_files_succeed_or_fail_as_input_errors():
    outcomes = [
        outcome(lambda doc=doc: load_prompts(doc, UTM, TRANSFORM, HEIGHT, WIDTH), doc)
        for doc in generated(prompt_document, SEED)
    ]
    # The generator must reach both ends, or it tests nothing.
    assert outcomes.count("ok") > 20 and outcomes.count("input") > 100


def test_generated_areas_succeed_or_fail_as_input_errors():
    cases = generated(area_document, SEED)
    outcomes = [outcome(lambda doc=doc: parse_area(doc), doc) for doc in cases]
    assert outcomes.count("ok") > 20 and outcomes.count("input") > 100


def test_generated_dates_succeed_or_fail_as_input_errors():
    rng = random.Random(SEED)
    texts = [
        "0001-01-01", "0001-01-03", "9999-12-31", "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00", "2024-02-30", "2024-06-01T25:00:00", "", " ", "\x00",
        "2024-06-01T12:00:00+23:59", "2024-06-01T12:00:00-23:59", "2024-06-01Z", "10000-01-01",
    ]  # fmt: skip
    days: list[Any] = [1, 36_525, 36_526, 10**6, 10**9, 10**30, 0, -1, 2.5, True, None]
    for _ in range(CASES):
        if rng.random() < 0.5:
            start, end = rng.choice(texts), rng.choice(texts)
            call = lambda s=start, e=end: resolve_time_range(start_date=s, end_date=e)  # noqa: E731
            outcome(call, (start, end))
        else:
            n, ref = rng.choice(days), rng.choice([None, *texts])
            outcome(
                lambda n=n, r=ref: resolve_time_range(lookback_days=n, reference_time=r, now=NOW),
                (n, ref),
            )


# --- reading a user's file ------------------------------------------------------------------


def test_a_byte_order_mark_is_read(tmp_path: Path):
    path = tmp_path / "area.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"type": "Polygon"}')
    assert read_user_text(path, "geometry") == '{"type": "Polygon"}'


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path):
    path = tmp_path / "fields.geojson"
    path.write_bytes('{"prompt_id": "Müller"}'.encode("latin-1"))
    with pytest.raises(InputError, match=r"prompts file '.*fields\.geojson' is not UTF-8 text"):
        read_user_text(path, "prompts")


def test_missing_unreadable_and_oversized_files_are_named(tmp_path: Path):
    with pytest.raises(InputError, match=r"geometry file '.*nope\.geojson' cannot be read"):
        read_user_text(tmp_path / "nope.geojson", "geometry")
    with pytest.raises(InputError, match="cannot be read: Is a directory"):
        read_user_text(tmp_path, "prompts")
    big = tmp_path / "big.geojson"
    big.write_bytes(b" " * (MAX_GEOJSON_BYTES + 1))
    with pytest.raises(InputError, match=r"big\.geojson' is larger than the limit of 10,485,760"):
        read_user_text(big, "prompts")
    big.write_bytes(b" " * MAX_GEOJSON_BYTES)
    assert len(read_user_text(big, "prompts")) == MAX_GEOJSON_BYTES
