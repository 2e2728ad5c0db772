"""SAM prompts: a GeoJSON FeatureCollection of points and boxes, turned into scene pixels.

The schema is FarmVibes.AI's ``segment_s2`` prompt format, checked strictly so that a
bad prompt fails before any inference with a message naming the feature at fault:

* Every feature has ``properties.label`` (int ``1`` foreground or ``0`` background)
  and ``properties.prompt_id`` (int or str). Features sharing a ``prompt_id`` form one
  *prompt group*: one SAM call, one output mask.
* ``Point`` is a point prompt; each point of a ``MultiPoint`` is a point prompt with
  the feature's label; a ``Polygon``'s bounds are a box prompt (label must be 1; at
  most one box per group). A group needs a foreground point or a box.
* Positions are RFC 7946 lon/lat unless the collection carries the legacy GeoJSON
  ``crs`` member (``{"type": "name", "properties": {"name": "EPSG:32633"}}``).

Groups keep the order in which their ``prompt_id`` first appears in the collection;
downstream this is the order of the output bands, so it must not depend on hashing.

Pixel coordinates are *continuous* ``(x, y) = (col, row)``: pixel ``(r, c)`` spans
``x`` in ``[c, c + 1)`` and ``y`` in ``[r, r + 1)``, so its centre is
``(c + 0.5, r + 0.5)``. That is what the inverse raster transform yields. SAM's prompt
encoder reads coordinates as pixel *indices* and adds 0.5 itself, so the inference
runtime subtracts 0.5 before calling it: a prompt lands where it was drawn, with no
half-pixel shift. Containment tests are half-open: a point at ``x == width`` is
outside the scene.

Prompts outside the scene are not errors (one prompt file often serves several
scenes): they are dropped and reported in :attr:`ScenePrompts.dropped`. Only a file
with no usable prompt left in the scene is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS
from pyproj.exceptions import CRSError

from components.core.chips import Chip
from components.core.geojson_crs import transformer
from components.core.prompt_geojson import ParsedPrompts, PromptId, parse_prompts
from components.errors import InputError

Box = tuple[float, float, float, float]
"""A box prompt as ``(x0, y0, x1, y1)`` pixels, ``x0 <= x1`` and ``y0 <= y1``."""

BOX_EDGE_POINTS = 32
"""Points per polygon edge before reprojection.

A straight edge in lon/lat is curved in UTM (a 2° parallel bows by ~500 m), so the
corners alone would give a box too small. A fixed count per edge works in any unit;
32 leaves under 0.1% of the bow (about 0.5 m for that parallel).
"""

BOX_MAX_SAMPLES = 4_096
"""Most points sampled on one box's outline: a polygon of many vertices gets fewer
points per edge (its edges are short already), so a huge ring costs bounded work."""

SCENE_MARGIN = 0.01
"""Share of the scene's extent added around its footprint in the prompts' CRS before a
box is clipped to it, so the sampled footprint's small error never cuts a box."""

_MAX_LISTED_REASONS = 20


@dataclass(frozen=True, eq=False)
class PromptGroup:
    """The prompts of one ``prompt_id`` in scene (or chip) pixel coordinates."""

    prompt_id: PromptId
    points: NDArray[np.float64]
    """``(N, 2)`` point prompts as ``(x, y) = (col, row)``; ``N`` may be 0."""
    labels: NDArray[np.int64]
    """``(N,)`` point labels: 1 foreground, 0 background."""
    box: Box | None
    feature_indices: tuple[int, ...]
    """Indices of the features the group was built from (for messages)."""

    def __post_init__(self) -> None:
        # Read-only copies: groups are shared between chips and must not drift.
        points = np.array(self.points, dtype=np.float64).reshape(-1, 2)
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        points.flags.writeable = False
        labels.flags.writeable = False
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)

    @property
    def has_foreground(self) -> bool:
        """Whether the group has at least one foreground point."""
        return bool((self.labels == 1).any())


@dataclass(frozen=True)
class DroppedPrompt:
    """A prompt (or a whole group) left out because it is not usable in the scene."""

    prompt_id: PromptId
    feature_index: int | None
    """The feature it came from; ``None`` when the whole group is dropped."""
    reason: str


@dataclass(frozen=True)
class ScenePrompts:
    """The usable prompt groups of one scene, and what was dropped on the way."""

    groups: tuple[PromptGroup, ...]
    dropped: tuple[DroppedPrompt, ...]

    @property
    def prompt_ids(self) -> tuple[PromptId, ...]:
        """Ids of the usable groups, in output band order."""
        return tuple(g.prompt_id for g in self.groups)


def prompts_to_scene(
    parsed: ParsedPrompts, raster_crs: object, transform: Affine, height: int, width: int
) -> ScenePrompts:
    """Project prompts into a ``height`` x ``width`` scene's pixel coordinates.

    ``raster_crs`` is anything :meth:`pyproj.crs.CRS.from_user_input` takes (a pyproj
    or rasterio CRS, ``"EPSG:32633"``, WKT); ``transform`` maps pixel ``(col, row)``
    to raster CRS ``(x, y)``, as rasterio's ``dataset.transform`` does.

    Points outside the scene are dropped; boxes are clipped to it, or dropped when
    they miss it; a box then grows to hold its group's foreground points, as in
    FarmVibes. A group left with neither a foreground point nor a box is dropped.
    A box is clipped to the scene's footprint in its own CRS before it is projected,
    so a box larger than the scene (the whole world) becomes the scene, even where its
    far corners have no position in the raster's CRS.

    Raises:
        InputError: Bad scene geometry or CRS, or no usable prompt in the scene; the
            message lists why each prompt was dropped.
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise InputError(f"scene {name} must be a positive integer, got {value!r}")
    if transform.is_degenerate:
        raise InputError(f"raster transform is not invertible: {transform!r}")
    try:
        dst = CRS.from_user_input(raster_crs)
    except CRSError as err:
        raise InputError(f"raster CRS {raster_crs!r} is not a CRS pyproj understands") from err
    placed = _place_features(parsed, _PixelProjector(parsed.crs, dst, transform), width, height)
    groups = [g for pid in parsed.prompt_ids if (g := placed.group(pid)) is not None]
    if not groups:
        raise InputError(f"no usable prompt in the {placed.size}: {_reasons(placed.dropped)}")
    return ScenePrompts(groups=tuple(groups), dropped=tuple(placed.dropped))


class _Placed:
    """Prompts of each group that landed in the scene, and those that did not."""

    def __init__(self, prompt_ids: tuple[PromptId, ...], size: str) -> None:
        self.size = size
        self.points: dict[PromptId, list[tuple[float, float]]] = {p: [] for p in prompt_ids}
        self.labels: dict[PromptId, list[int]] = {p: [] for p in prompt_ids}
        self.indices: dict[PromptId, list[int]] = {p: [] for p in prompt_ids}
        self.boxes: dict[PromptId, Box] = {}
        self.dropped: list[DroppedPrompt] = []

    def group(self, pid: PromptId) -> PromptGroup | None:
        """The group ``pid`` in the scene, or ``None`` (recorded as dropped) if unusable."""
        points = np.array(self.points[pid], dtype=np.float64).reshape(-1, 2)
        labels = np.array(self.labels[pid], dtype=np.int64)
        foreground = points[labels == 1]
        box = self.boxes.get(pid)
        if box is None and len(foreground) == 0:
            why = (
                f"group has no foreground point or box inside the {self.size}, "
                "so its remaining prompts are dropped too"
            )
            self.dropped.append(DroppedPrompt(pid, None, why))
            return None
        if box is not None and len(foreground):
            # SAM reads a box as "the object is in here": it must hold the clicks.
            lo, hi = foreground.min(axis=0), foreground.max(axis=0)
            box = (
                min(box[0], float(lo[0])), min(box[1], float(lo[1])),
                max(box[2], float(hi[0])), max(box[3], float(hi[1])),
            )  # fmt: skip
        return PromptGroup(pid, points, labels, box, tuple(self.indices[pid]))


def _place_features(
    parsed: ParsedPrompts, projector: _PixelProjector, width: int, height: int
) -> _Placed:
    """Every feature in scene pixels: points inside kept, boxes clipped, the rest dropped."""
    scene: Box = (0.0, 0.0, float(width), float(height))
    footprint = projector.source_footprint(scene)
    placed = _Placed(parsed.prompt_ids, f"{width} x {height} px scene")
    # All points in one projection: one pyproj call per feature took seconds.
    points = [p for f in parsed.features if not f.is_box for p in f.coordinates]
    pixels = iter(projector(np.asarray(points, dtype=np.float64).reshape(-1, 2)).tolist())
    for feature in parsed.features:
        pid = feature.prompt_id
        placed.indices[pid].append(feature.index)
        if feature.is_box:
            box, why = _scene_box(projector, feature.coordinates, scene, footprint)
            if box is None:
                placed.dropped.append(DroppedPrompt(pid, feature.index, why))
            else:
                placed.boxes[pid] = box
            continue
        for src_x, src_y in feature.coordinates:
            x, y = next(pixels)
            if not (math.isfinite(x) and math.isfinite(y)):
                why = f"point ({src_x}, {src_y}) cannot be reprojected to the raster CRS"
            elif not _contains(scene, x, y):
                why = f"point at col {x:.1f}, row {y:.1f} is outside the {placed.size}"
            else:
                placed.points[pid].append((x, y))
                placed.labels[pid].append(feature.label)
                continue
            placed.dropped.append(DroppedPrompt(pid, feature.index, why))
    return placed


def _reasons(dropped: list[DroppedPrompt]) -> str:
    """Why each prompt was dropped, the first few listed (for the error a user reads)."""
    reasons = [
        f"prompt_id {d.prompt_id!r}"
        + ("" if d.feature_index is None else f" feature {d.feature_index}")
        + f": {d.reason}"
        for d in dropped
    ]
    more = len(reasons) - _MAX_LISTED_REASONS
    return "; ".join(reasons[:_MAX_LISTED_REASONS]) + (f"; and {more} more" if more > 0 else "")


def load_prompts(
    geojson: str | Mapping[str, Any],
    raster_crs: object,
    transform: Affine,
    height: int,
    width: int,
) -> ScenePrompts:
    """Validate prompts and project them into a scene (both steps in one call)."""
    return prompts_to_scene(parse_prompts(geojson), raster_crs, transform, height, width)


def prompts_for_chip(prompts: ScenePrompts, chip: Chip) -> list[PromptGroup]:
    """The groups that run in a chip, in chip pixel coordinates.

    Only the chip's valid extent counts (never the padding of a short scene). As in
    FarmVibes, a group runs where it has a foreground point; a box-only group runs
    in every chip its box touches. A group with foreground points elsewhere does not
    run on its box alone, or each chip would segment a fragment of the same object.
    The chip's version keeps the points inside the chip and the box clipped to it.
    """
    extent: Box = chip.valid_bounds
    offset = np.array([chip.col, chip.row], dtype=np.float64)
    out: list[PromptGroup] = []
    for group in prompts.groups:
        inside = _contains(extent, group.points[:, 0], group.points[:, 1])
        box = None if group.box is None else _clip(group.box, extent)
        on_foreground = bool((inside & (group.labels == 1)).any())
        if not on_foreground and (group.has_foreground or box is None):
            continue
        if box is not None:
            box = (box[0] - chip.col, box[1] - chip.row, box[2] - chip.col, box[3] - chip.row)
        out.append(
            PromptGroup(
                prompt_id=group.prompt_id,
                points=group.points[inside] - offset,
                labels=group.labels[inside],
                box=box,
                feature_indices=group.feature_indices,
            )
        )
    return out


class _PixelProjector:
    """Source CRS ``(x, y)`` to continuous scene pixels ``(col, row)``."""

    def __init__(self, src: CRS, dst: CRS, transform: Affine) -> None:
        # always_xy: GeoJSON positions are (lon, lat) / (easting, northing) whatever
        # axis order the CRS's authority declares.
        self._transformer = transformer(src, dst, "prompts")
        self._transform = transform
        self._inverse = ~transform

    def __call__(self, xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = self._transformer.transform(xy[:, 0], xy[:, 1])
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        # ``~transform * (x, y)``, written out so it vectorises.
        inv = self._inverse
        col = inv.a * x + inv.b * y + inv.c
        row = inv.d * x + inv.e * y + inv.f
        return np.column_stack([col, row])

    def source_footprint(self, scene: Box) -> Box | None:
        """The scene's bounds in the prompts' CRS, with a margin; ``None`` if unknown.

        Sampled along the scene's outline (a scene is small, so this projection is well
        behaved where the inverse of a world-sized box is not); ``None`` when fewer
        than two samples have a position in the prompts' CRS.
        """
        col, row = _outline(np.array(_corners(scene))).T
        t = self._transform
        x, y = t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f
        sx, sy = self._transformer.transform(x, y, direction="INVERSE")
        xy = np.column_stack([np.asarray(sx, np.float64), np.asarray(sy, np.float64)])
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) < 2:
            return None
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        pad = (hi - lo) * SCENE_MARGIN + 1e-9 * (1.0 + np.abs(hi) + np.abs(lo))
        return (float(lo[0] - pad[0]), float(lo[1] - pad[1]), float(hi[0] + pad[0]),
                float(hi[1] + pad[1]))  # fmt: skip


def _corners(box: Box) -> list[tuple[float, float]]:
    """A box's outline as a closed ring of its corners."""
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def _outline(path: NDArray[np.float64]) -> NDArray[np.float64]:
    """Points along a path (a closed ring or a line): every vertex and points between.

    ``BOX_EDGE_POINTS`` per edge, fewer on a path of many edges (:data:`BOX_MAX_SAMPLES`).
    """
    if len(path) < 2:
        return path
    per_edge = min(BOX_EDGE_POINTS, max(1, BOX_MAX_SAMPLES // (len(path) - 1)))
    t = np.arange(per_edge, dtype=np.float64)[None, :, None] / per_edge
    dense = (path[:-1, None, :] * (1.0 - t) + path[1:, None, :] * t).reshape(-1, 2)
    return np.vstack([dense, path[-1:]])


def _scene_box(
    projector: _PixelProjector,
    ring: tuple[tuple[float, float], ...],
    scene: Box,
    footprint: Box | None,
) -> tuple[Box | None, str]:
    """A polygon's bounds in scene pixels, clipped; or ``None`` and why it is dropped.

    The polygon's convex hull (same bounds, always valid) is clipped to the scene's
    footprint in the prompts' CRS first; projected points with no position in the
    raster CRS (a pole in UTM) are left out of the bounds.
    """
    hull = shapely.convex_hull(shapely.multipoints(np.asarray(ring, dtype=np.float64)))
    clipped = hull if footprint is None else shapely.clip_by_rect(hull, *footprint)
    box = None if clipped.is_empty else _pixel_bounds(projector, clipped)
    inside = None if box is None else _clip(box, scene)
    if inside is not None:
        return inside, ""
    whole = _pixel_bounds(projector, hull)
    if whole is None:
        return None, "box cannot be reprojected to the raster CRS"
    x0, y0, x1, y1 = whole
    return None, (
        f"box (cols {x0:.1f}..{x1:.1f}, rows {y0:.1f}..{y1:.1f}) is outside the "
        f"{int(scene[2])} x {int(scene[3])} px scene"
    )


def _pixel_bounds(projector: _PixelProjector, geometry: shapely.Geometry) -> Box | None:
    """Bounds in scene pixels of a geometry's outline, sampled along its edges.

    Samples with no position in the raster CRS are dropped; ``None`` if none is left.
    """
    pixels = projector(_outline(shapely.get_coordinates(geometry)))
    pixels = pixels[np.isfinite(pixels).all(axis=1)]
    if not len(pixels):
        return None
    lo, hi = pixels.min(axis=0), pixels.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def _contains(extent: Box, x: Any, y: Any) -> Any:
    """Half-open containment of points in ``extent``; works on scalars and arrays."""
    x0, y0, x1, y1 = extent
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def _clip(box: Box, extent: Box) -> Box | None:
    """``box`` clipped to ``extent``, or ``None`` if they share no area."""
    x0, y0 = max(box[0], extent[0]), max(box[1], extent[1])
    x1, y1 = min(box[2], extent[2]), min(box[3], extent[3])
    if x0 >= x1 or y0 >= y1:
        return None
    return (x0, y0, x1, y1)
