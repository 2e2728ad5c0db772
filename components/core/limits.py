"""The limits on what a user's input may ask for, each in one place with its reason.

A prompt file or an area comes from a person or a script, and a mistake in it (a
runaway export, a file of the wrong kind, a typo in a date) must fail at once with a
clear message, not after minutes of work or with a crash deep inside JSON, numpy,
pyproj, GEOS or ONNX Runtime. Every limit is far above what a real prompt file, area
or search needs; the reasons are given with each one. The README's "Segment a local
raster" section lists them for users.
"""

from __future__ import annotations

MAX_GEOJSON_BYTES = 10 * 1024 * 1024
"""Largest prompt or area document (a file's bytes, or a parameter's characters): 10 MiB.

A typical prompt file is a few kB and 10,000 point features are about 1.3 MB; a farm
area of a hundred digitised fields is well under 1 MB. Parsing 10 MiB takes about a
second; a 54 MB prompt file took 44 s and a 63 MB one asked numpy for 116 GiB.
"""

MAX_JSON_DEPTH = 64
"""Deepest nesting of JSON arrays and objects accepted.

GeoJSON needs 8 levels (a FeatureCollection's MultiPolygon coordinates); 64 leaves
room for nested ``properties`` and stays far below the depth at which Python's JSON
decoder fails with a ``RecursionError``.
"""

MAX_JSON_INT_DIGITS = 100
"""Most digits of a JSON integer: no coordinate, label or ``prompt_id`` needs more.

Python refuses to convert integers of over 4,300 digits with its own message, and an
integer of 309 digits no longer fits a float.
"""

MAX_FEATURES = 10_000
"""Most features in a prompt or area FeatureCollection.

A scene of 110 x 110 km holds a few thousand fields; a farm area is one to a few
hundred fields.
"""

MAX_POINTS_PER_GROUP = 1_000
"""Most point prompts in one prompt group (one ``prompt_id``).

SAM is trained with a handful of clicks per object; 100,000 points in one group crashed
ONNX Runtime.
"""

MAX_PROMPT_GROUPS = 5_000
"""Most prompt groups (distinct ``prompt_id``s, so output bands) in one run.

Each group is one output band over the whole scene, and a real file names a few
hundred fields at most; 1,000 groups of 100 points crashed ONNX Runtime.
"""

MAX_PROMPT_ID_CHARS = 200
"""Longest string ``prompt_id``: it becomes a band name and a column in every output.

FarmVibes' ids are field numbers or short names; a 50 MB id was written into every
output file.
"""

MAX_CRS_NAME_CHARS = 65_536
"""Longest ``crs`` name: an EPSG code, a PROJ string or a WKT definition of a few kB.

pyproj takes half a second to reject a 1 MB name; 64 KiB leaves any real WKT room.
"""

MAX_PROJECTED_COORDINATE_M = 1e8
"""Largest absolute projected coordinate accepted, in metres (converted to the CRS's unit).

The Earth's circumference is 4e7 m and false eastings and northings add at most a few
1e7 m, so no position on Earth lies farther from a projection's origin. Larger numbers
are a unit mistake; at 1e12 GEOS fails, and at 1e9 reaching an error took 36 s.
"""

MIN_AREA_M2 = 100.0
"""Smallest area accepted: one 10 m Sentinel-2 pixel.

A smaller area has no pixel to segment; it is nearly always lon/lat numbers under a
projected ``crs`` member (0.0015 m² in the bug report), which must not be searched.
"""

MAX_LOOKBACK_DAYS = 36_525
"""Longest lookback: 100 years. Sentinel-2's archive starts in 2015, so longer is a typo."""
