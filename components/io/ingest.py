"""Sentinel-2 L2A ingest: search, cloud-aware choice, windowed mosaic, COGs and a manifest.

The orchestration of the ingest; the decisions live in :mod:`components.core.area`
and :mod:`components.core.scene_choice`, the I/O in :mod:`components.io.stac`
(search and signing), :mod:`components.io.mosaic` (reading) and
:mod:`components.io.scene_cogs` (writing). :func:`ingest_params` validates every input
(area, dates, search parameters) before any network call; :func:`ingest_s2` then

1. searches the STAC API by the area's bbox, the time range and ``eo:cloud_cover``;
2. per acquisition, picks the fewest tiles covering the area, reads their SCL over the
   area's window only and keeps the clear acquisitions
   (:func:`~components.core.scene_choice.select_scenes`);
3. reads only the area's window (plus ``margin_m``) of only the requested bands into
   one 10 m grid in the UTM zone of the area's centroid, and writes one COG per
   acquisition and ``manifest.json``, each through a temporary file and a rename.

Network failures are retried a bounded number of times (:mod:`components.io.network`);
what still fails raises :class:`~components.errors.ServiceError` naming the service and
the request, with signed URLs' tokens redacted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.features import geometry_mask

from components.core.area import Area, Grid, area_grid, parse_area, project
from components.core.landcover import WORLDCOVER_CROPLAND, check_classes_apply
from components.core.params import SearchParams
from components.core.scene_choice import (
    SCL_ASSET,
    Acquisition,
    Candidate,
    NoSceneError,
    SkyStats,
    TileItem,
    TooCloudyError,
    cover_area,
    group_acquisitions,
    rejection,
    scl_counts,
    select_scenes,
    sky_from_counts,
)
from components.core.search import TimeRange
from components.errors import InputError
from components.io.files import atomic_write_text, read_user_text
from components.io.landcover import WORLDCOVER_COLLECTION, cropland_on_grid, worldcover_on_grid
from components.io.mosaic import STRIP_ROWS, MosaicReader, check_assets, n_strips
from components.io.network import NetworkOptions, redact
from components.io.scene_cogs import (
    CROPLAND_NAME,
    MANIFEST_NAME,
    SceneRecord,
    build_manifest,
    start_new_set,
    write_cropland,
    write_scene,
)
from components.io.stac import (
    DEFAULT_STAC_URL,
    PC_KEY_ENV,
    STAC_URL_ENV,
    describe_search,
    search_items,
)

logger = logging.getLogger(__name__)

OUTPUT_RESOLUTION = 10.0
SCL_RESOLUTION = 20.0

ProgressCallback = Callable[[str, int, int], None]
"""``(stage, done, total)``; stages: ``"clouds"`` (acquisitions screened), ``"read"``
(strips of band rows read and written, over all scenes)."""


@dataclass(frozen=True)
class IngestParams:
    """Every ingest input, validated; built by :func:`ingest_params`."""

    area: Area
    time_range: TimeRange
    """The whole span searched (of every window)."""
    search: SearchParams
    stac_url: str
    network: NetworkOptions
    pc_key: str | None = field(default=None, repr=False)
    """Planetary Computer subscription key; only ever sent to the SAS endpoint."""
    cropland_mask: str = ""
    """Land cover read onto the grid for the cropland filter
    (:data:`~components.core.landcover.CroplandParams.mask`); empty: none."""
    cropland_classes: tuple[int, ...] = (WORLDCOVER_CROPLAND,)
    """Raster classes that are cropland."""
    windows: tuple[TimeRange, ...] = ()
    """Seasons, sorted, each searched on its own (:mod:`components.core.seasons`);
    empty: the one ``time_range``."""

    def searches(self) -> list[IngestParams]:
        """One set of parameters per window, each searching only its own dates."""
        return [replace(self, time_range=w, windows=()) for w in self.windows or (self.time_range,)]


def ingest_params(
    geometry: str | os.PathLike[str] | Mapping[str, Any],
    time_range: TimeRange | Sequence[TimeRange],
    search: SearchParams | None = None,
    *,
    stac_url: str | None = None,
    pc_key: str | None = None,
    network: NetworkOptions | None = None,
    cropland_mask: str = "",
    cropland_classes: Sequence[int] = (WORLDCOVER_CROPLAND,),
) -> IngestParams:
    """Validate the ingest's inputs; no network access.

    Args:
        geometry: The area: GeoJSON text or mapping (Polygon, MultiPolygon, Feature,
            FeatureCollection), or a path to a GeoJSON file (a ``Path``, or a string
            that does not start with ``{``).
        time_range: The dates searched
            (:func:`~components.core.search.resolve_time_range`), or several
            windows (:func:`~components.core.seasons.resolve_windows`): the clearest
            acquisitions of each are kept.
        search: What is searched and kept; default :class:`SearchParams`'s defaults.
        stac_url: STAC API; default ``$S2SAM_STAC_URL``, else the Planetary Computer.
        pc_key: Planetary Computer subscription key; default
            ``$PC_SDK_SUBSCRIPTION_KEY``. Optional; never logged or written.
        network: Timeouts and retries.
        cropland_mask: ``esa-worldcover``, or a land-cover raster or polygon file (or
            URL) read onto the grid for the cropland filter; empty: none.
        cropland_classes: The raster classes that are cropland.

    Raises:
        InputError: The first bad input, named, with what is wrong with it.
    """
    search = search or SearchParams()
    if isinstance(geometry, os.PathLike) or (
        isinstance(geometry, str) and not geometry.lstrip().startswith("{")
    ):
        area = parse_area(read_geometry_file(Path(geometry)), search.max_area_km2)
    else:
        area = parse_area(geometry, search.max_area_km2)
    url = stac_url or os.environ.get(STAC_URL_ENV) or DEFAULT_STAC_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"stac_url must be an http(s) URL, got {url!r}")
    check_cropland_source(cropland_mask)
    check_classes_apply(cropland_mask, cropland_classes)
    windows = (time_range,) if isinstance(time_range, TimeRange) else tuple(time_range)
    if not windows:
        raise InputError("no time range: give dates, a lookback or windows")
    return IngestParams(
        area=area,
        time_range=TimeRange(windows[0].start, windows[-1].end),
        windows=windows if len(windows) > 1 else (),
        cropland_mask=cropland_mask.strip(),
        cropland_classes=tuple(cropland_classes),
        search=search,
        stac_url=url.rstrip("/"),
        network=network or NetworkOptions(),
        pc_key=pc_key or os.environ.get(PC_KEY_ENV) or None,
    )


def read_geometry_file(path: Path) -> str:
    """A geometry file's text; ``InputError`` naming the file when it cannot be read.

    Within the size limit, a byte order mark skipped (:func:`read_user_text`).
    """
    return read_user_text(path, "geometry")


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_s2` wrote."""

    manifest_path: Path
    grid: Grid
    bands: tuple[str, ...]
    scenes: tuple[SceneRecord, ...]


def ingest_s2(
    params: IngestParams,
    output_dir: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
) -> IngestResult:
    """Ingest the clearest Sentinel-2 L2A scenes of an area into COGs and a manifest.

    Args:
        params: The validated inputs (:func:`ingest_params`).
        output_dir: Folder for ``<acquisition>.tif`` files and ``manifest.json``;
            created when the first file is written.
        progress: Called as ``(stage, done, total)`` while screening and reading.

    With several date windows (seasons), each is searched and screened on its own
    and its clearest acquisitions are kept (``max_scenes`` per window), all on one
    grid; a window with nothing usable fails the ingest, naming its dates.

    Returns:
        The manifest path, the output grid and one record per written scene.

    Raises:
        InputError: An output folder that is a file; an item without what is read.
        NoSceneError: Nothing found; the message repeats the search.
        TooCloudyError: Every acquisition over the limits; the message lists them.
        ServiceError: A service still failed after the retries.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output_dir {str(out)!r} exists and is not a folder")
    report = progress or (lambda stage, done, total: None)

    grid = area_grid(params.area, OUTPUT_RESOLUTION, params.search.margin_m)
    cropland = land_cover(params, grid)  # before any pixel: a bad mask fails early
    screened: list[Candidate] = []
    chosen: list[tuple[int, Candidate]] = []
    for window, search in enumerate(params.searches()):
        candidates, selected = choose_acquisitions(search, grid, report)
        screened += candidates
        chosen += [(window, c) for c in selected]
    return write_scenes(params, grid, screened, chosen, out, report, cropland)


def check_cropland_source(source: str) -> None:
    """A local land-cover file must exist; URLs and WorldCover are checked when read."""
    source = source.strip()
    if not source or source == WORLDCOVER_COLLECTION or "://" in source:
        return
    if not Path(source).is_file():
        raise InputError(f"cropland_mask: no file at {source!r} (a raster or polygon file)")


def land_cover(params: IngestParams, grid: Grid) -> NDArray[np.bool_] | None:
    """Cropland on the scenes' grid for the cropland filter, or ``None`` without a mask."""
    source = params.cropland_mask
    if not source:
        return None
    shape = (grid.crs, grid.transform, grid.height, grid.width)
    classes = params.cropland_classes
    try:
        if source == WORLDCOVER_COLLECTION:
            return worldcover_on_grid(
                params.stac_url, *shape, classes, network=params.network, pc_key=params.pc_key
            )
        return cropland_on_grid(source, *shape, classes, network=params.network)
    except InputError as err:
        raise InputError(f"cropland_mask: {err}") from None


def choose_acquisitions(
    params: IngestParams, grid: Grid, report: ProgressCallback
) -> tuple[list[Candidate], list[Candidate]]:
    """Search one window, screen its acquisitions' sky over the area, keep the clearest.

    Returns:
        Every acquisition screened, and those selected.

    Raises:
        NoSceneError, TooCloudyError: Nothing usable in this window (the message
            repeats its search).
    """
    items = search_items(params)
    if not items:
        raise NoSceneError(f"no scene found: {describe_search(params)}")
    acquisitions = group_acquisitions(items)
    logger.info("%d items in %d acquisitions", len(items), len(acquisitions))
    candidates = screen_acquisitions(params, acquisitions, grid.epsg, report)
    if not any(c.cover.tiles for c in candidates):
        raise NoSceneError(
            f"no scene found: {len(items)} items match the search but none overlaps the "
            f"area itself ({describe_search(params)})"
        )
    try:
        selection = select_scenes(
            candidates,
            params.search.strategy,
            params.search.max_scenes,
            params.search.max_roi_cloud_fraction,
            params.search.max_roi_nodata_fraction,
        )
    except TooCloudyError as err:
        raise TooCloudyError(f"{err} (dates {params.time_range.to_stac()})") from None
    for candidate, reason in selection.rejected:
        logger.info("skipping %s: %s", candidate.acquisition.key, reason)
    return candidates, list(selection.selected)


def write_scenes(
    params: IngestParams,
    grid: Grid,
    candidates: Sequence[Candidate],
    selected: Sequence[tuple[int, Candidate]],
    out: Path,
    report: ProgressCallback,
    cropland: NDArray[np.bool_] | None = None,
) -> IngestResult:
    """Write each selected acquisition as a COG, then the manifest (last: it lists them).

    ``selected`` pairs each acquisition with the index of the window it was chosen in.
    """
    out.mkdir(parents=True, exist_ok=True)
    start_new_set(out)
    total_steps = len(selected) * len(params.search.bands) * n_strips(grid)
    done = [0]

    def step() -> None:
        done[0] += 1
        report("read", done[0], total_steps)

    records = tuple(
        replace(write_scene(out / f"{c.acquisition.key}.tif", c, grid, params, step), window=w)
        for w, c in selected
    )
    manifest = build_manifest(params, grid, records, candidates, {id(c) for _, c in selected})
    if cropland is not None:
        write_cropland(out, grid, cropland)
        manifest["cropland"] = {"file": CROPLAND_NAME, "source": redact(params.cropland_mask)}
    manifest_path = out / MANIFEST_NAME
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return IngestResult(manifest_path, grid, params.search.bands, records)


def screen_acquisitions(
    params: IngestParams,
    acquisitions: Sequence[Acquisition],
    epsg: int,
    report: ProgressCallback,
) -> list[Candidate]:
    """Tile cover and SCL statistics over the area for each acquisition.

    With ``latest`` the newest are screened first and screening stops once
    ``max_scenes`` pass, so a weekly schedule reads one or two SCL windows.
    """
    grid20 = area_grid(params.area, SCL_RESOLUTION, 0.0, epsg=epsg)
    inside = ~geometry_mask(
        [project(params.area.geometry, epsg)],
        out_shape=grid20.shape,
        transform=grid20.transform,
        all_touched=True,
    )
    order = list(acquisitions)
    if params.search.strategy == "latest":
        order.reverse()
    candidates: list[Candidate] = []
    passing = 0
    for n, acquisition in enumerate(order, start=1):
        cover = cover_area(acquisition.tiles, params.area.geometry, prefer_epsg=epsg)
        if cover.tiles:
            check_assets(cover.tiles, (SCL_ASSET,))
            sky = sky_over_area(cover.tiles, grid20, inside, params)
        else:
            sky = SkyStats(cloud_fraction=1.0, nodata_fraction=1.0, pixels=int(inside.sum()))
        candidates.append(Candidate(acquisition, cover, sky))
        report("clouds", n, len(order))
        if (
            rejection(
                sky, params.search.max_roi_cloud_fraction, params.search.max_roi_nodata_fraction
            )
            is None
        ):
            passing += 1
        if params.search.strategy == "latest" and passing >= params.search.max_scenes:
            break
    return sorted(candidates, key=lambda c: c.acquisition.datetime)


def sky_over_area(
    tiles: Sequence[TileItem], grid: Grid, inside: NDArray[np.bool_], params: IngestParams
) -> SkyStats:
    """SCL statistics over the area, counted strip by strip (memory stays flat)."""
    totals = [0, 0, 0]
    with MosaicReader(tiles, SCL_ASSET, grid, params.network, Resampling.nearest) as mosaic:
        for row in range(0, grid.height, STRIP_ROWS):
            height = min(STRIP_ROWS, grid.height - row)
            counts = scl_counts(mosaic.read(row, height), inside[row : row + height])
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    return sky_from_counts(*totals)
