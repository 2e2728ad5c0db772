"""The ingest's outputs: one COG per acquisition over the area, and the manifest listing them.

Each COG is written through a tiled temporary GeoTIFF (one strip of every band in
memory at a time), converted to a COG beside it and renamed into place; the manifest
(the search, the grid, each scene written and each one screened) is written last, so
a folder with a manifest holds complete scenes. :func:`read_manifest` is how the
segmentation steps find the scenes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.windows import Window

from components.core.area import Grid
from components.core.radiometry import NODATA_DN, boa_add_offset, parse_baseline
from components.core.scene_choice import Candidate, common_offset
from components.core.search import BAND_RESOLUTION
from components.errors import InputError
from components.io.mosaic import GDAL_CACHE_MB, STRIP_ROWS, MosaicReader, check_assets
from components.version import __version__

if TYPE_CHECKING:
    from components.io.ingest import IngestParams

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class SceneRecord:
    """One written scene: a COG of one acquisition over the area."""

    path: Path
    key: str
    datetime: datetime
    item_ids: tuple[str, ...]
    tiles: tuple[str, ...]
    processing_baseline: str
    """The baseline whose offset convention the DNs follow (the newest in the mosaic)."""
    boa_add_offset: int
    cloud_fraction: float
    nodata_fraction: float
    window: int = 0
    """Index of the date window (season) it was chosen in: 0 without windows."""


COG_OPTIONS = {
    "compress": "DEFLATE",
    "predictor": "2",
    "level": "6",
    "blocksize": "512",
    "overviews": "AUTO",
    "overview_resampling": "AVERAGE",
    "bigtiff": "IF_SAFER",
    "num_threads": "ALL_CPUS",
}
"""Output COG: DEFLATE with horizontal differencing (any GDAL reads it), 512 px tiles,
averaged overviews down to one tile."""


def write_scene(
    path: Path, candidate: Candidate, grid: Grid, params: IngestParams, step: Callable[[], None]
) -> SceneRecord:
    """Read one acquisition's bands onto ``grid`` and write them as a COG at ``path``.

    Bands are read strip by strip into a tiled, pixel-interleaved temporary GeoTIFF
    (memory stays at one strip of every band whatever the area), converted to a COG
    beside it and renamed into place; on any failure both temporary files are removed
    and ``path`` is untouched.
    """
    tiles = candidate.cover.tiles
    check_assets(tiles, params.search.bands)
    baselines = [t.processing_baseline for t in tiles]
    offset = common_offset(baselines)
    newest = max(baselines, key=parse_baseline)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    cog = path.with_name(f".{path.name}.{os.getpid()}.cog")
    try:
        shifts = [(boa_add_offset(b), offset) for b in baselines]
        tags = _scene_tags(candidate, params, baselines, offset)
        _write_strips(part, candidate, grid, params, shifts, tags, step)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            rasterio.shutil.copy(part, cog, driver="COG", **COG_OPTIONS)
        os.replace(cog, path)
    finally:
        part.unlink(missing_ok=True)
        cog.unlink(missing_ok=True)
    bands = ",".join(params.search.bands)
    logger.info("wrote %s (%d x %d px, %s)", path, grid.width, grid.height, bands)
    acquisition = candidate.acquisition
    return SceneRecord(
        path=path,
        key=acquisition.key,
        datetime=acquisition.datetime,
        item_ids=tuple(t.id for t in tiles),
        tiles=tuple(t.mgrs_tile for t in tiles),
        processing_baseline=newest,
        boa_add_offset=offset,
        cloud_fraction=candidate.sky.cloud_fraction,
        nodata_fraction=candidate.sky.nodata_fraction,
    )


def _write_strips(
    part: Path,
    candidate: Candidate,
    grid: Grid,
    params: IngestParams,
    shifts: Sequence[tuple[int, int]],
    tags: dict[str, str],
    step: Callable[[], None],
) -> None:
    """Mosaic every band onto ``grid`` strip by strip into a tiled GeoTIFF at ``part``."""
    bands = params.search.bands
    resampling = Resampling[params.search.resampling]
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        dst = stack.enter_context(rasterio.open(part, "w", **_strip_profile(grid, len(bands))))
        mosaics = [
            stack.enter_context(
                MosaicReader(candidate.cover.tiles, band, grid, params.network, resampling, shifts)
            )
            for band in bands
        ]
        # All bands of a strip at once: each pixel-interleaved block is written once.
        for row in range(0, grid.height, STRIP_ROWS):
            height = min(STRIP_ROWS, grid.height - row)
            strip = np.empty((len(bands), height, grid.width), dtype=np.uint16)
            for k, mosaic in enumerate(mosaics):
                strip[k] = mosaic.read(row, height)
                step()
            dst.write(strip, window=Window(0, row, grid.width, height))
        for index, band in enumerate(bands, start=1):
            dst.set_band_description(index, band)
            dst.update_tags(index, band=band, native_resolution_m=str(BAND_RESOLUTION[band]))
        dst.update_tags(**tags)


def _strip_profile(grid: Grid, count: int) -> dict[str, Any]:
    """The temporary GeoTIFF: tiled, pixel-interleaved, fast to write (ZSTD level 1)."""
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": "uint16",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": NODATA_DN,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "ZSTD",
        "zstd_level": 1,
        "predictor": 2,
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }


def _scene_tags(
    candidate: Candidate, params: IngestParams, baselines: Sequence[str], offset: int
) -> dict[str, str]:
    """What a scene COG says about itself: acquisition, items, baselines, clouds."""
    acquisition, tiles = candidate.acquisition, candidate.cover.tiles
    orbit = acquisition.relative_orbit
    return {
        "datetime": _utc(acquisition.datetime),
        "acquisition": acquisition.key,
        "platform": acquisition.platform,
        "relative_orbit": "" if orbit is None else str(orbit),
        "item_ids": ",".join(t.id for t in tiles),
        "tiles": ",".join(t.mgrs_tile for t in tiles),
        "processing_baseline": max(baselines, key=parse_baseline),
        "processing_baselines": ",".join(baselines),
        "boa_add_offset": str(offset),
        "reflectance": f"(DN + {offset}) / 10000; DN 0 is nodata",
        "cloud_fraction": f"{candidate.sky.cloud_fraction:.6f}",
        "nodata_fraction": f"{candidate.sky.nodata_fraction:.6f}",
        "bands": ",".join(params.search.bands),
        "collection": params.search.collection,
        "generator": f"s2sam {__version__}",
    }


def _utc(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def build_manifest(
    params: IngestParams,
    grid: Grid,
    records: Sequence[SceneRecord],
    candidates: Sequence[Candidate],
    selected: set[int],
) -> dict[str, Any]:
    """The manifest: the search, the grid, each scene written and each one screened."""
    search = params.search
    return {
        "manifest_version": MANIFEST_VERSION,
        "generator": f"s2sam {__version__}",
        "created": _utc(datetime.now(timezone.utc)),
        "search": {
            "stac_url": params.stac_url,
            "collection": search.collection,
            "bbox": list(params.area.bbox),
            "datetime": params.time_range.to_stac(),
            "windows": [w.to_stac() for w in params.windows or (params.time_range,)],
            "max_cloud_cover": search.max_cloud_cover,
        },
        "selection": {
            "strategy": search.strategy,
            "max_scenes": search.max_scenes,
            "max_roi_cloud_fraction": search.max_roi_cloud_fraction,
            "max_roi_nodata_fraction": search.max_roi_nodata_fraction,
        },
        "area": {"geometry": params.area.to_geojson(), "area_km2": params.area.area_km2},
        "grid": {
            "crs": grid.crs,
            "transform": list(grid.transform)[:6],
            "width": grid.width,
            "height": grid.height,
            "resolution_m": grid.resolution,
            "margin_m": search.margin_m,
        },
        "bands": list(search.bands),
        "dtype": "uint16",
        "nodata": NODATA_DN,
        "scenes": [_scene_entry(record) for record in records],
        "screened": [_screened_entry(c, id(c) in selected) for c in candidates],
    }


def _scene_entry(record: SceneRecord) -> dict[str, Any]:
    return {
        "file": record.path.name,
        "acquisition": record.key,
        "datetime": _utc(record.datetime),
        "item_ids": list(record.item_ids),
        "tiles": list(record.tiles),
        "processing_baseline": record.processing_baseline,
        "boa_add_offset": record.boa_add_offset,
        "cloud_fraction": record.cloud_fraction,
        "nodata_fraction": record.nodata_fraction,
        "window": record.window,
    }


def _screened_entry(candidate: Candidate, selected: bool) -> dict[str, Any]:
    return {
        "acquisition": candidate.acquisition.key,
        "datetime": _utc(candidate.acquisition.datetime),
        "tiles": [t.mgrs_tile for t in candidate.cover.tiles],
        "coverage": candidate.cover.coverage,
        "cloud_fraction": candidate.sky.cloud_fraction,
        "nodata_fraction": candidate.sky.nodata_fraction,
        "selected": selected,
    }


LEFTOVERS = (".*.part", ".*.cog", ".*.ovr.tmp", ".*.aux.xml")
"""Temporary files of a scene being written (this module's and GDAL's): only a killed
ingest leaves them behind, and the next ingest into the folder removes them."""


def start_new_set(out: Path) -> None:
    """Retire the previous manifest and remove what killed ingests left behind.

    The manifest is written last and lists complete scenes only; deleting it first
    means a folder holds a manifest only while every scene it lists is in place.
    """
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for pattern in LEFTOVERS:
        for leftover in out.glob(pattern):
            leftover.unlink(missing_ok=True)


def read_manifest(scenes_dir: Path) -> list[dict[str, Any]]:
    """The scenes an ingest wrote into ``scenes_dir``, as its manifest lists them.

    Raises:
        InputError: No manifest, or one that lists no scene.
    """
    manifest = Path(scenes_dir) / MANIFEST_NAME
    if not manifest.is_file():
        raise InputError(f"{scenes_dir} holds no ingest {MANIFEST_NAME}")
    scenes: list[dict[str, Any]] = json.loads(manifest.read_text())["scenes"]
    if not scenes:
        raise InputError(f"{manifest} lists no scene")
    return scenes


CROPLAND_NAME = "cropland.tif"
"""The land-cover filter's cropland (uint8 1/0) on the scenes' grid, beside them."""


def write_cropland(out: Path, grid: Grid, cropland: NDArray[np.bool_]) -> Path:
    """Write the cropland mask on the scenes' ``grid`` (through a temporary file)."""
    path = out / CROPLAND_NAME
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1,
        "dtype": "uint8", "crs": grid.crs, "transform": grid.transform, "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    try:
        with rasterio.open(part, "w", **profile) as dst:
            dst.write(cropland.astype(np.uint8), 1)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def read_cropland(scenes_dir: Path) -> NDArray[np.bool_] | None:
    """The cropland mask the ingest wrote (its manifest names it); ``None`` without one.

    Read-only and read once for as long as the file is unchanged: the merge of every
    acquisition and the fused layer ask for it, and on a full tile it is 120 Mpixel.
    """
    manifest = json.loads((Path(scenes_dir) / MANIFEST_NAME).read_text())
    entry = manifest.get("cropland")
    if not entry:
        return None
    path = (Path(scenes_dir) / entry["file"]).resolve()
    stat = path.stat()
    return _read_cropland_file(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _read_cropland_file(path: str, inode: int, mtime_ns: int, size: int) -> NDArray[np.bool_]:
    """The file's cropland, cached per file contents.

    ``inode`` (a rewrite replaces the file), ``mtime_ns`` and ``size`` key the cache.
    """
    with rasterio.open(path) as src:
        cropland = np.asarray(src.read(1) != 0)
    cropland.setflags(write=False)  # shared by every caller
    return cropland
