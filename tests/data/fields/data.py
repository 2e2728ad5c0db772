"""Seeded synthetic agricultural scenes: Sentinel-2-like rasters with their parcel labels.

A scene is a landscape of parcels drawn in surface reflectance (bands B04, B03, B02,
B08), then turned into what the pipeline sees: L2A digital numbers (uint16,
processing baseline 05.09, so ``DN = 10000 * reflectance + 1000``; nodata 0) and the
uint8 RGB that ``components.core.radiometry`` makes of them with its default percentile
stretch. The ground truth is the parcel label map (uint32; 0 = road, field margin or
sliver, never prompted).

Recipe, all from ``numpy.random.default_rng(seed)``:

1. Parcel seeds on a jittered grid, rotated by a random angle and stretched along one
   axis (fields share an orientation); Voronoi cells of the seeds, some neighbouring
   cells merged into L-shaped fields.
2. Field margins a few pixels wide along every cell edge, and a few straight roads that
   cut through cells; what remains, split into 4-connected components, are the
   parcels (a road splits a field into two parcels of the same crop). Slivers smaller
   than ``min_parcel_fraction * parcel_size**2`` become margin.
3. Per field: a crop type (green, bare soil, ripe, sparse) and a reflectance drawn
   from its range, redrawn until it differs from every adjacent field's; crop-row
   stripes at a per-field angle and period (none for grassland); multiplicative low-
   frequency and per-pixel noise.

``difficulty`` in ``[0, 1]`` scales the noise, stripe contrast and low-frequency
variation up and the margin width down (1 is the standard scene that tests use).

Two dates (:func:`make_two_dates`, issue 18: an edge shows in one season and not in
another): steps 1 and 2 as above from ``default_rng(seed)`` (the same labels as
``make_scene``), then

4. Pairs of adjacent fields that share at least ``parcel_size`` margin pixels, drawn
   from ``default_rng([seed, 1])`` until ``pair_fraction`` of the fields are paired,
   each field in one pair at most; pairs alternate between date 0 and date 1.
5. Each date repeats step 3 with its pairs as one field: one crop, colour and row
   pattern, and the margin between the two (label 0 between exactly those fields,
   roads excepted) painted as the field, rows running on across it. Date 0 continues
   ``default_rng(seed)``, date 1 draws from ``default_rng([seed, 2])``, so crops,
   colours and noise change between the dates and a pair joined on one date is
   coloured apart on the other like any neighbours. ``Scene.joined`` lists the parcel
   pairs joined on that date; the labels still hold two parcels.

Run as a script to write one scene as GeoTIFFs: ``python -m tests.data.fields.data``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from components.core.radiometry import NODATA_DN, QUANTIFICATION_VALUE, scene_rgb_scaling, to_rgb

BANDS = ("B04", "B03", "B02", "B08")
"""Bands of the scene's DN stack, in order: red, green, blue, near infrared."""

PROCESSING_BASELINE = "05.09"
"""Baseline the DNs claim: from 04.00 on, ``DN = 10000 * reflectance + 1000``."""

BOA_OFFSET_DN = 1000
CRS = "EPSG:32633"
PIXEL_SIZE = 10.0
ORIGIN = (431_250.0, 5_412_870.0)
"""Default upper-left corner in ``CRS`` metres: deliberately not a round number or 0."""

# Reflectance ranges (low, high) per crop type, bands B04, B03, B02, B08.
CROPS: dict[str, tuple[tuple[float, float, float, float], tuple[float, float, float, float]]] = {
    "green": ((0.020, 0.050, 0.020, 0.28), (0.060, 0.105, 0.050, 0.50)),
    "soil": ((0.110, 0.095, 0.065, 0.18), (0.240, 0.200, 0.140, 0.30)),
    "ripe": ((0.100, 0.090, 0.050, 0.22), (0.180, 0.150, 0.090, 0.32)),
    "sparse": ((0.060, 0.070, 0.040, 0.22), (0.110, 0.120, 0.075, 0.36)),
}
CROP_NAMES = tuple(CROPS)
MARGIN_REFLECTANCE = (0.035, 0.065, 0.032, 0.26)
ROAD_REFLECTANCE = (0.120, 0.110, 0.090, 0.15)
MIN_FIELD_CONTRAST = 0.025
"""Smallest RGB reflectance distance between the colours of two adjacent fields."""
PAIR_FRACTION = 0.5
"""Default share of fields that :func:`make_two_dates` joins to a neighbour on one date."""


@dataclass(frozen=True)
class Parcel:
    """One ground-truth parcel: a 4-connected region of one label."""

    label: int
    crop: str
    area: int
    """Pixels."""
    bbox: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)``, half-open, in scene pixels (SAM's box convention is inclusive
    pixel corners: use ``(x0, y0, x1 - 1, y1 - 1)`` or float edges)."""
    interior: tuple[int, int]
    """``(x, y)`` of the pixel farthest from the parcel's edge: a safe point prompt."""
    inradius: float
    """Distance in pixels from ``interior`` to the nearest pixel outside the parcel."""
    touches_edge: bool
    """Whether the parcel is cut by the scene border."""


@dataclass(frozen=True)
class Scene:
    """A synthetic scene: DNs, the RGB SAM sees, parcel labels and georeference."""

    seed: int
    dn: NDArray[np.uint16]
    """``(4, H, W)`` L2A digital numbers of ``BANDS``; 0 is nodata (none by default)."""
    rgb: NDArray[np.uint8]
    """``(H, W, 3)`` SAM input: ``components.core.radiometry`` percentile stretch of B04-B02."""
    labels: NDArray[np.uint32]
    """``(H, W)`` parcel label of each pixel, 0 for roads, margins and slivers."""
    parcels: tuple[Parcel, ...]
    """Every parcel, ordered by label (``parcels[i].label == i + 1``)."""
    transform: Affine
    crs: str
    processing_baseline: str = PROCESSING_BASELINE
    date: int = 0
    """Acquisition index: 0 for :func:`make_scene`, 0 or 1 for :func:`make_two_dates`."""
    joined: tuple[tuple[int, int], ...] = ()
    """Parcel label pairs ``(a, b)``, ``a < b``, that look like one field on this date:
    same crop, colour and crop rows, the margin between them sown across. The labels
    still count them as two parcels. Empty for :func:`make_scene`."""

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.labels.shape[1])

    def mask(self, label: int) -> NDArray[np.bool_]:
        """Ground-truth mask of one parcel."""
        return np.asarray(self.labels == label)

    def parcel_at(self, x: int, y: int) -> int:
        """Label under pixel ``(x, y)`` (0 off any parcel)."""
        return int(self.labels[y, x])


def make_scene(
    seed: int,
    height: int = 1024,
    width: int = 1024,
    *,
    parcel_size: float = 160.0,
    difficulty: float = 1.0,
    road_density: float = 1.2,
    min_parcel_fraction: float = 0.04,
    origin: tuple[float, float] = ORIGIN,
    pixel_size: float = PIXEL_SIZE,
    crs: str = CRS,
) -> Scene:
    """Generate one scene; the same arguments always give the same arrays.

    Args:
        seed: Seed of everything random in the scene.
        height: Rows (any size: a scene may span several SAM chips).
        width: Columns.
        parcel_size: Mean spacing of the parcel seeds in pixels.
        difficulty: 0 (wide margins, clean fields) to 1 (the standard scene).
        road_density: Expected roads per 1024 x 1024 pixels.
        min_parcel_fraction: Regions smaller than this times ``parcel_size**2`` are
            not parcels.
        origin: ``(x, y)`` of the upper-left corner in ``crs``.
        pixel_size: Metres per pixel.
        crs: A projected CRS (default UTM 33N).
    """
    _check_arguments(height, width, difficulty, parcel_size)
    rng = np.random.default_rng(seed)
    layout = _layout(rng, height, width, parcel_size, difficulty, road_density, min_parcel_fraction)
    field_of_pixel, labels, road = layout.field, layout.labels, layout.road
    crop, colour = _field_colours(rng, layout.n_fields, layout.adjacent)
    rows = _row_pattern(rng, crop, difficulty)
    reflectance = _reflectance(
        rng, field_of_pixel, labels, road, colour, rows, difficulty, parcel_size
    )
    field_crop = [CROP_NAMES[c] for c in crop]
    return _scene(
        seed, reflectance, labels, _describe_parcels(labels, field_of_pixel, field_crop),
        Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1]), crs,
    )  # fmt: skip


def make_two_dates(
    seed: int,
    height: int = 1024,
    width: int = 1024,
    *,
    parcel_size: float = 160.0,
    difficulty: float = 1.0,
    road_density: float = 1.2,
    min_parcel_fraction: float = 0.04,
    pair_fraction: float = PAIR_FRACTION,
    origin: tuple[float, float] = ORIGIN,
    pixel_size: float = PIXEL_SIZE,
    crs: str = CRS,
) -> tuple[Scene, Scene]:
    """The same parcels on two dates, some neighbours alike on one date only.

    Both scenes have the layout of ``make_scene(seed, ...)`` (identical ``labels``,
    transform and CRS; ``parcels`` differ only in ``crop``) and their own crops,
    colours, crop rows and noise. Adjacent fields sharing a margin of at least
    ``parcel_size`` pixels are paired at random until ``pair_fraction`` of the fields
    (those with a parcel) are in a pair; pairs alternate between the dates. On its date
    a pair is painted as one field (one crop, colour and row pattern, the margin between
    the two sown across); on the other date the two are coloured apart like any
    neighbours. ``Scene.joined`` lists the parcel pairs joined on each date.
    ``pair_fraction=0`` makes the first date ``make_scene(seed, ...)`` itself.

    Args:
        seed: Seed of the layout and of date 0; date 1 and the pairs use their own
            generators (``default_rng([seed, 2])``, ``default_rng([seed, 1])``).
        height: Rows.
        width: Columns.
        parcel_size: As in :func:`make_scene`.
        difficulty: As in :func:`make_scene`.
        road_density: As in :func:`make_scene`.
        min_parcel_fraction: As in :func:`make_scene`.
        pair_fraction: Share of the fields, in ``[0, 1]``, that are joined to a
            neighbour on one of the two dates.
        origin: As in :func:`make_scene`.
        pixel_size: As in :func:`make_scene`.
        crs: As in :func:`make_scene`.
    """
    _check_arguments(height, width, difficulty, parcel_size)
    if not 0.0 <= pair_fraction <= 1.0:
        raise ValueError(f"pair_fraction must be in [0, 1], got {pair_fraction}")
    rng = np.random.default_rng(seed)
    layout = _layout(rng, height, width, parcel_size, difficulty, road_density, min_parcel_fraction)
    pairs = _choose_pairs(np.random.default_rng([seed, 1]), layout, pair_fraction, parcel_size)
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    scenes = []
    for date, date_rng in enumerate((rng, np.random.default_rng([seed, 2]))):
        joined = pairs[date::2]
        reflectance, parcels = _paint_date(date_rng, layout, joined, difficulty, parcel_size)
        scene = _scene(seed, reflectance, layout.labels, parcels, transform, crs)
        joined_parcels = _joined_parcels(layout, joined)
        scenes.append(replace(scene, date=date, joined=joined_parcels))
    return scenes[0], scenes[1]


def _check_arguments(height: int, width: int, difficulty: float, parcel_size: float) -> None:
    if height < 16 or width < 16:
        raise ValueError(f"scene must be at least 16 x 16 pixels, got {height} x {width}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if parcel_size < 16:
        raise ValueError(f"parcel_size must be at least 16 pixels, got {parcel_size}")


@dataclass(frozen=True)
class _Layout:
    """What the parcels look like from above whatever grows on them (steps 1 and 2)."""

    field: NDArray[np.int64]
    """Field of each pixel (margins and roads included: the field whose cell they lie in)."""
    across: NDArray[np.int64]
    """Field across the nearest cell edge (the pixel's own field inside a merged field)."""
    labels: NDArray[np.uint32]
    road: NDArray[np.bool_]
    adjacent: set[tuple[int, int]]
    """Field pairs ``(a, b)``, ``a < b``, that share a cell edge."""
    n_fields: int


def _layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    parcel_size: float,
    difficulty: float,
    road_density: float,
    min_parcel_fraction: float,
) -> _Layout:
    """Fields, margins, roads and parcels (recipe steps 1 and 2)."""
    seeds = _field_seeds(rng, height, width, parcel_size)
    cells, across, edge_distance, pairs = _voronoi(seeds, height, width)
    fields = _merge_cells(rng, len(seeds), pairs, probability=0.15)
    field_of_pixel = fields[cells]
    adjacent = {(min(a, b), max(a, b)) for a, b in fields[pairs].tolist() if a != b}

    margin = (5.0 - 2.5 * difficulty) * rng.uniform(0.85, 1.15, len(seeds))
    edge = (edge_distance < margin[cells] / 2.0) & (fields[across] != field_of_pixel)
    edge |= _pixel_edges(field_of_pixel)
    road = _roads(rng, height, width, road_density)
    parcel_area = np.logical_not(edge | road)
    labels = _parcels(parcel_area, field_of_pixel, min_parcel_fraction * parcel_size**2)
    n_fields = int(fields.max()) + 1
    return _Layout(field_of_pixel, fields[across], labels, road, adjacent, n_fields)


def _scene(
    seed: int,
    reflectance: NDArray[np.float32],
    labels: NDArray[np.uint32],
    parcels: tuple[Parcel, ...],
    transform: Affine,
    crs: str,
) -> Scene:
    """Reflectance -> L2A DNs -> the pipeline's RGB (the module docstring's first paragraph)."""
    dn = np.clip(np.rint(reflectance * QUANTIFICATION_VALUE) + BOA_OFFSET_DN, 1, 65535)
    dn = dn.astype(np.uint16)
    scaling = scene_rgb_scaling(dn[:3], PROCESSING_BASELINE)
    rgb, _ = to_rgb(dn[:3], scaling)
    return Scene(
        seed=seed, dn=dn, rgb=rgb, labels=labels, parcels=parcels, transform=transform, crs=crs
    )


def _choose_pairs(
    rng: np.random.Generator, layout: _Layout, pair_fraction: float, min_shared: float
) -> list[tuple[int, int]]:
    """Random adjacent field pairs, each field in one pair at most, in a random order.

    Candidates share at least ``min_shared`` margin pixels (a margin a few pixels wide
    along a stretch of boundary, not a corner) and both have a parcel in the scene.
    """
    margin = (layout.labels == 0) & ~layout.road
    own, other = layout.field[margin], layout.across[margin]
    cross = own != other
    n = layout.n_fields
    codes = np.minimum(own, other)[cross] * n + np.maximum(own, other)[cross]
    codes, counts = np.unique(codes, return_counts=True)
    visible = np.zeros(n, dtype=bool)
    visible[np.unique(layout.field[layout.labels > 0])] = True
    candidates = [
        (int(c) // n, int(c) % n)
        for c in codes[counts >= min_shared]
        if visible[c // n] and visible[c % n]
    ]
    wanted = round(pair_fraction * int(visible.sum()) / 2.0)
    free = np.ones(n, dtype=bool)
    out: list[tuple[int, int]] = []
    for k in rng.permutation(len(candidates)).tolist():
        a, b = candidates[k]
        if len(out) < wanted and free[a] and free[b]:
            out.append((a, b))
            free[[a, b]] = False
    return out


def _paint_date(
    rng: np.random.Generator,
    layout: _Layout,
    joined: list[tuple[int, int]],
    difficulty: float,
    parcel_size: float,
) -> tuple[NDArray[np.float32], tuple[Parcel, ...]]:
    """One date's reflectance and parcels: step 3 on fields with ``joined`` pairs as one."""
    root = np.arange(layout.n_fields)
    for a, b in joined:
        root[b] = a
    group = np.unique(root, return_inverse=True)[1].astype(np.int64)
    adjacent = {
        (min(ga, gb), max(ga, gb))
        for ga, gb in (group[list(pair)].tolist() for pair in layout.adjacent)
        if ga != gb
    }
    crop, colour = _field_colours(rng, int(group.max()) + 1, adjacent)
    rows = _row_pattern(rng, crop, difficulty)
    sown = _sown_margin(layout, joined) > 0
    reflectance = _reflectance(
        rng, group[layout.field], layout.labels, layout.road, colour, rows, difficulty,
        parcel_size, sown,
    )  # fmt: skip
    field_crop = [CROP_NAMES[c] for c in crop[group]]
    return reflectance, _describe_parcels(layout.labels, layout.field, field_crop)


def _sown_margin(layout: _Layout, joined: list[tuple[int, int]]) -> NDArray[np.int64]:
    """``k + 1`` on the margin between the fields of ``joined[k]`` (not roads), else 0."""
    out = np.zeros(layout.labels.shape, dtype=np.int64)
    if not joined:
        return out
    n = layout.n_fields
    own, other = layout.field, layout.across
    code = np.minimum(own, other) * n + np.maximum(own, other)
    pair_codes = np.array([a * n + b for a, b in joined])
    order = np.argsort(pair_codes)
    at = np.clip(np.searchsorted(pair_codes[order], code), 0, len(joined) - 1)
    hit = (pair_codes[order][at] == code) & (layout.labels == 0) & ~layout.road & (own != other)
    out[hit] = order[at][hit] + 1
    return out


def _joined_parcels(layout: _Layout, joined: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Parcel pairs that a stretch of sown margin connects (roads cut a stretch in two)."""
    sown = _sown_margin(layout, joined)
    stretches, _ = ndimage.label(sown > 0, structure=np.ones((3, 3)))
    out = set()
    for k, box in enumerate(ndimage.find_objects(stretches), start=1):
        rows = slice(max(box[0].start - 3, 0), box[0].stop + 3)
        cols = slice(max(box[1].start - 3, 0), box[1].stop + 3)
        near = ndimage.binary_dilation(stretches[rows, cols] == k, iterations=2)
        near &= layout.labels[rows, cols] > 0
        pair = joined[int(sown[rows, cols][stretches[rows, cols] == k][0]) - 1]
        labels, fields = layout.labels[rows, cols][near], layout.field[rows, cols][near]
        sides = [set(np.unique(labels[fields == f]).tolist()) for f in pair]
        out |= {(min(p, q), max(p, q)) for p in sides[0] for q in sides[1]}
    return tuple(sorted(out))


def write_s2_geotiff(scene: Scene, path: str | Path) -> Path:
    """Write the scene's DNs as a tiled 4-band uint16 GeoTIFF (B04, B03, B02, B08).

    rasterio is imported here, not at the top, so that the generator itself runs
    where GDAL is not installed (the GPU training machine).
    """
    import rasterio

    path = Path(path)
    profile = {
        "driver": "GTiff",
        "height": scene.height,
        "width": scene.width,
        "count": len(BANDS),
        "dtype": "uint16",
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": NODATA_DN,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.dn)
        dst.descriptions = BANDS
        # GDAL reads ":" in a tag name as a separator: STAC's s2:processing_baseline.
        dst.update_tags(PROCESSING_BASELINE=scene.processing_baseline, SEED=str(scene.seed))
    return path


def write_labels_geotiff(scene: Scene, path: str | Path) -> Path:
    """Write the ground-truth parcel labels as a one-band uint32 GeoTIFF on the same grid."""
    import rasterio

    path = Path(path)
    profile = {
        "driver": "GTiff",
        "height": scene.height,
        "width": scene.width,
        "count": 1,
        "dtype": "uint32",
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.labels, 1)
        dst.descriptions = ("parcel",)
    return path


def _field_seeds(
    rng: np.random.Generator, height: int, width: int, spacing: float
) -> NDArray[np.float64]:
    """Jittered, rotated, anisotropic grid of Voronoi seeds ``(x, y)`` around the scene."""
    angle = rng.uniform(0.0, np.pi)
    stretch = rng.uniform(0.75, 1.35)
    du, dv = spacing * stretch, spacing / stretch
    reach = 0.5 * np.hypot(height, width) + 2.0 * spacing
    u, v = np.meshgrid(np.arange(-reach, reach, du), np.arange(-reach, reach, dv))
    u = u + rng.uniform(-0.35, 0.35, u.shape) * du
    v = v + rng.uniform(-0.35, 0.35, v.shape) * dv
    cos, sin = np.cos(angle), np.sin(angle)
    x = width / 2.0 + u * cos - v * sin
    y = height / 2.0 + u * sin + v * cos
    pad = 1.5 * spacing
    keep = (x > -pad) & (x < width + pad) & (y > -pad) & (y < height + pad)
    return np.stack([x[keep], y[keep]], axis=1)


def _voronoi(
    seeds: NDArray[np.float64], height: int, width: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]:
    """Voronoi cells of the seeds on the pixel grid.

    Returns:
        The cell of each pixel, the cell across its nearest cell edge, the distance to
        that edge in pixels, and the adjacent cell pairs ``(n, 2)`` with ``a < b``.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    k = min(4, len(seeds))
    dist, index = cKDTree(seeds).query(centres, k=k, workers=-1)
    own = seeds[index[:, 0]]
    # Distance to the bisector with the j-th nearest seed: (|x-sj|^2 - |x-si|^2) / 2|si-sj|.
    edge_dist = np.full(len(centres), np.inf)
    other = index[:, 0].copy()
    for j in range(1, k):
        sep = np.linalg.norm(seeds[index[:, j]] - own, axis=1)
        dj = (dist[:, j] ** 2 - dist[:, 0] ** 2) / (2.0 * np.maximum(sep, 1e-9))
        closer = dj < edge_dist
        edge_dist = np.where(closer, dj, edge_dist)
        other = np.where(closer, index[:, j], other)
    near = edge_dist < 2.0
    a, b = index[near, 0], other[near]
    codes = np.unique(np.minimum(a, b) * len(seeds) + np.maximum(a, b))
    pairs = np.stack([codes // len(seeds), codes % len(seeds)], axis=1)
    shape = (height, width)
    return index[:, 0].reshape(shape), other.reshape(shape), edge_dist.reshape(shape), pairs


def _merge_cells(
    rng: np.random.Generator, n_cells: int, pairs: NDArray[np.int64], probability: float
) -> NDArray[np.int64]:
    """Field id of each cell: some adjacent cells (two or three at most) become one field."""
    field = np.arange(n_cells)
    size = np.ones(n_cells, dtype=np.int64)
    for a, b in pairs[rng.permutation(len(pairs))].tolist():
        fa, fb = field[a], field[b]
        if fa == fb or rng.random() >= probability or size[fa] + size[fb] > 3:
            continue
        field[field == fb] = fa
        size[fa] += size[fb]
    return np.unique(field, return_inverse=True)[1].astype(np.int64)


def _pixel_edges(field: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Pixels whose right or lower neighbour is in another field (no 4-connection across)."""
    out = np.zeros(field.shape, dtype=bool)
    out[:, :-1] |= field[:, :-1] != field[:, 1:]
    out[:-1, :] |= field[:-1, :] != field[1:, :]
    return out


def _roads(rng: np.random.Generator, height: int, width: int, density: float) -> NDArray[np.bool_]:
    """A few straight roads, 5-9 px wide, in random directions across the scene."""
    n = rng.poisson(density * height * width / 1024**2)
    yy, xx = np.mgrid[0:height, 0:width]
    road = np.zeros((height, width), dtype=bool)
    for _ in range(n):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        angle = rng.uniform(0.0, np.pi)
        half_width = rng.uniform(2.5, 4.5)
        across = (xx + 0.5 - cx) * np.sin(angle) - (yy + 0.5 - cy) * np.cos(angle)
        road |= np.abs(across) < half_width
    return road


def _parcels(
    parcel_area: NDArray[np.bool_], field: NDArray[np.int64], min_area: float
) -> NDArray[np.uint32]:
    """Label map of 4-connected parcel pixels, slivers below ``min_area`` set to 0."""
    components, n = ndimage.label(parcel_area)
    area = np.bincount(components.ravel(), minlength=n + 1)
    keep = area >= min_area
    keep[0] = False
    new_label = np.zeros(n + 1, dtype=np.uint32)
    new_label[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return new_label[components]


def _field_colours(
    rng: np.random.Generator, n_fields: int, adjacent: set[tuple[int, int]]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Crop type index and reflectance ``(n_fields, 4)`` of each field.

    A field's RGB reflectance differs from every adjacent field's by at least
    ``MIN_FIELD_CONTRAST`` (redrawn up to 50 times, then the most distinct draw is kept).
    """
    neighbours: dict[int, list[int]] = {f: [] for f in range(n_fields)}
    for a, b in adjacent:
        neighbours[a].append(b)
        neighbours[b].append(a)
    probabilities = np.array([0.40, 0.25, 0.20, 0.15])
    crop = np.zeros(n_fields, dtype=np.int64)
    colour = np.zeros((n_fields, 4))
    done = np.zeros(n_fields, dtype=bool)
    for f in range(n_fields):
        best, best_gap = (0, np.zeros(4)), -1.0
        coloured = [g for g in neighbours[f] if done[g]]
        for _ in range(50):
            c = int(rng.choice(len(CROP_NAMES), p=probabilities))
            low, high = (np.asarray(v) for v in CROPS[CROP_NAMES[c]])
            # One brightness for all bands, a little jitter per band: natural colours.
            level = np.clip(rng.uniform() + rng.normal(0.0, 0.1, 4), 0.0, 1.0)
            value = low + (high - low) * level
            gaps = np.sqrt(((colour[coloured, :3] - value[:3]) ** 2).sum(axis=1))
            gap = float(gaps.min()) if len(coloured) else np.inf
            if gap > best_gap:
                best, best_gap = (c, value), gap
            if gap >= MIN_FIELD_CONTRAST:
                break
        crop[f], colour[f] = best
        done[f] = True
    return crop, colour


def _row_pattern(
    rng: np.random.Generator, crop: NDArray[np.int64], difficulty: float
) -> tuple[NDArray[np.float64], ...]:
    """Crop-row stripes of each field: ``(angle, period, phase, amplitude)``."""
    n_fields = len(crop)
    angle = rng.uniform(0.0, np.pi, n_fields)
    period = rng.uniform(5.0, 12.0, n_fields)
    phase = rng.uniform(0.0, 2.0 * np.pi, n_fields)
    amplitude = rng.uniform(0.04, 0.10 + 0.20 * difficulty, n_fields)
    amplitude[rng.random(n_fields) < 0.25] = 0.0  # grassland: no rows
    amplitude[crop == CROP_NAMES.index("green")] *= 0.6
    return angle, period, phase, amplitude


def _reflectance(
    rng: np.random.Generator,
    field: NDArray[np.int64],
    labels: NDArray[np.uint32],
    road: NDArray[np.bool_],
    colour: NDArray[np.float64],
    rows: tuple[NDArray[np.float64], ...],
    difficulty: float,
    parcel_size: float,
    sown: NDArray[np.bool_] | None = None,
) -> NDArray[np.float32]:
    """``(4, H, W)`` surface reflectance: field colours, crop rows, margins, roads, noise.

    ``sown`` margin pixels are painted as their field (its rows run on across them).
    """
    height, width = field.shape
    angle, period, phase, amplitude = rows
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xx * np.cos(angle)[field] + yy * np.sin(angle)[field]
    stripes = 1.0 + amplitude[field] * np.sin(2.0 * np.pi * along / period[field] + phase[field])

    refl = np.moveaxis(colour[field], -1, 0) * stripes
    margin = (labels == 0) & ~road
    if sown is not None:
        margin &= ~sown
    refl[:, margin] = np.asarray(MARGIN_REFLECTANCE)[:, None]
    refl[:, road] = np.asarray(ROAD_REFLECTANCE)[:, None]
    refl *= 1.0 + (0.03 + 0.08 * difficulty) * _smooth_noise(rng, height, width, parcel_size / 2)
    refl *= 1.0 + rng.normal(0.0, 0.02 + 0.04 * difficulty, refl.shape)
    refl += rng.normal(0.0, 0.002, refl.shape)
    return np.clip(refl, 0.0, 1.0).astype(np.float32)


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, scale: float
) -> NDArray[np.float64]:
    """Unit-variance-ish noise that varies over about ``scale`` pixels (cubic upsampling)."""
    step = max(int(scale), 2)
    coarse = rng.normal(size=(height // step + 4, width // step + 4))
    return ndimage.zoom(coarse, step, order=3)[step : step + height, step : step + width]


def _describe_parcels(
    labels: NDArray[np.uint32], field: NDArray[np.int64], field_crop: list[str]
) -> tuple[Parcel, ...]:
    """Area, box, interior point and crop of every parcel."""
    n = int(labels.max())
    if n == 0:
        return ()
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.pad(labels > 0, 1)
    depth = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
    centres = ndimage.maximum_position(depth, labels, index)
    radii = ndimage.maximum(depth, labels, index)
    height, width = labels.shape
    out = []
    for label, box, (row, col), radius in zip(
        index.tolist(), ndimage.find_objects(labels), centres, radii, strict=True
    ):
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        out.append(
            Parcel(
                label=label,
                crop=field_crop[int(field[row, col])],
                area=int(area[label]),
                bbox=(x0, y0, x1, y1),
                interior=(int(col), int(row)),
                inradius=float(radius),
                touches_edge=x0 == 0 or y0 == 0 or x1 == width or y1 == height,
            )
        )
    return tuple(out)


def main(argv: list[str] | None = None) -> None:
    """Write one scene's DN and label GeoTIFFs and an RGB quick look."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--difficulty", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    import rasterio

    scene = make_scene(args.seed, args.height, args.width, difficulty=args.difficulty)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fields_{args.seed}"
    write_s2_geotiff(scene, f"{stem}_s2.tif")
    write_labels_geotiff(scene, f"{stem}_labels.tif")
    with rasterio.open(f"{stem}_rgb.png", "w", driver="PNG", **_png_profile(scene)) as dst:
        dst.write(np.moveaxis(scene.rgb, -1, 0))
    print(f"{stem}_*: {len(scene.parcels)} parcels, {scene.height} x {scene.width} px")


def _png_profile(scene: Scene) -> dict[str, object]:
    return {"height": scene.height, "width": scene.width, "count": 3, "dtype": "uint8"}


if __name__ == "__main__":
    main()
