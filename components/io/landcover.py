"""Land cover on the scene's grid: where the cropland is, for the cropland filter.

Three sources, one answer (a boolean cropland array on the grid of the scene):

* **ESA WorldCover** from the same STAC API as the imagery (the Planetary Computer's
  ``esa-worldcover`` collection, asset ``map``: uint8 classes, 40 = cropland, 10 m,
  EPSG:4326 COGs in 3 x 3 degree tiles). :func:`worldcover_hrefs` finds the tiles of an
  area, newest product version first (2021 before 2020); :func:`worldcover_on_grid`
  mosaics them onto the grid, the first tile with data winning each pixel.
* **A local raster** (or a URL GDAL reads by ``/vsicurl/``) of categorical classes, in any
  CRS: the ``classes`` given are cropland.
* **A local vector file** (GeoJSON, GeoPackage, GeoParquet, ...) whose polygons are the
  cropland, rasterised onto the grid (a pixel is cropland when its centre is inside).

Rasters are warped onto the grid with nearest resampling and an exact transformation
(GDAL's default approximation moves class edges by a pixel), strip by strip through a
``WarpedVRT``, so only the source blocks under the area are read: a continental COG is
never read whole. Bad input (a file missing or unreadable, no CRS, land cover that does
not cover the area) is an :class:`~components.errors.InputError` naming the input; signed
URLs are redacted from every message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from components.core.landcover import WORLDCOVER_CROPLAND, cropland_of, is_polygon_source
from components.errors import InputError, ServiceError
from components.io.mosaic import GDAL_READ_OPTIONS, STRIP_ROWS
from components.io.network import NetworkOptions, redact, with_retries
from components.io.stac import pc_signer

logger = logging.getLogger(__name__)

WORLDCOVER_COLLECTION = "esa-worldcover"
WORLDCOVER_ASSET = "map"
WARP_TOLERANCE_PX = 1e-6
"""Error allowed in the warp's transformation (GDAL's default 0.125 px shifts class edges)."""
MAX_WORLDCOVER_ITEMS = 64
"""An area meets at most a few 3-degree tiles per product version; more is a wrong search."""
_NO_DATE = datetime.min.replace(tzinfo=timezone.utc)
"""Where an item has no date: it sorts last."""


@dataclass(frozen=True)
class TargetGrid:
    """The grid land cover is put on: the scene's (CRS, transform, size)."""

    crs: Any
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS (north-up grids)."""
        t = self.transform
        xs = (t.c, t.c + self.width * t.a)
        ys = (t.f, t.f + self.height * t.e)
        return (min(xs), min(ys), max(xs), max(ys))

    def bounds_in(self, crs: Any) -> tuple[float, float, float, float]:
        """The grid's bounds in another CRS (edges densified: a UTM edge bows in lon/lat)."""
        left, bottom, right, top = transform_bounds(self.crs, crs, *self.bounds, densify_pts=21)
        return (float(left), float(bottom), float(right), float(top))


def cropland_on_grid(
    source: str | Path,
    crs: Any,
    transform: Affine,
    height: int,
    width: int,
    classes: Sequence[int] = (WORLDCOVER_CROPLAND,),
    *,
    network: NetworkOptions | None = None,
) -> NDArray[np.bool_]:
    """Where the land cover of ``source`` is cropland, on a ``height`` x ``width`` grid.

    Args:
        source: A local path or URL of a categorical raster (``classes`` are cropland), or
            of a polygon file (:func:`~components.core.landcover.is_polygon_source`)
            whose polygons are cropland.
        crs: The grid's CRS (anything rasterio takes).
        transform: The grid's north-up affine transform.
        height: Grid rows.
        width: Grid columns.
        classes: Cropland classes of a raster (callers refuse others than the default
            for polygons: :func:`~components.core.landcover.check_classes_apply`).
        network: Timeouts and retries of a URL's range reads.

    Raises:
        InputError: The source is missing, unreadable, has no CRS or does not cover the grid.
    """
    grid = TargetGrid(crs, Affine(*tuple(transform)[:6]), int(height), int(width))
    if is_polygon_source(str(source)):
        return _vector_cropland(str(source), grid)
    what = "land cover raster"
    cropland, missing = mosaic_cropland([str(source)], grid, classes, what, network)
    check_covered(missing, f"land cover raster {redact(str(source))}")
    return cropland


def mosaic_cropland(
    sources: Sequence[str],
    grid: TargetGrid,
    classes: Sequence[int],
    what: str,
    network: NetworkOptions | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Cropland of categorical rasters on ``grid``, and where none of them has data.

    The first source with data (not nodata, inside its footprint) wins each pixel; a
    source is opened only when a pixel is still missing, and read strip by strip
    (:data:`~components.io.mosaic.STRIP_ROWS`), only where the grid lies. GDAL reads
    under the ingest's settings (:data:`~components.io.mosaic.GDAL_READ_OPTIONS`: no
    directory listing next to a signed URL) and ``network``'s timeouts and retries.
    """
    cropland = np.zeros(grid.shape, dtype=bool)
    missing = np.ones(grid.shape, dtype=bool)
    gdal_env = {**GDAL_READ_OPTIONS, **(network or NetworkOptions()).gdal_options()}
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(**gdal_env))
        opened: dict[int, Any] = {}
        for row in range(0, grid.height, STRIP_ROWS):
            rows = min(STRIP_ROWS, grid.height - row)
            window = Window(0, row, grid.width, rows)
            todo = missing[row : row + rows]  # a view: updated in place
            for k, source in enumerate(sources):
                if not todo.any():
                    break
                if k not in opened:
                    opened[k] = _warped(stack, source, grid, what)
                if opened[k] is None:
                    continue  # the source does not meet the grid
                data, valid = _read_strip(opened[k], window, source, what)
                fill = todo & valid
                cropland[row : row + rows][fill] = cropland_of(data[fill], classes)
                todo &= ~valid
    return cropland, missing


def check_covered(missing: NDArray[np.bool_], what: str) -> None:
    """Raise when any grid pixel has no land cover: it would silently count as not cropland."""
    n = int(np.count_nonzero(missing))
    if n:
        share = 100.0 * n / missing.size
        raise InputError(
            f"{what} does not cover the area: {n} of {missing.size} pixels ({share:.1f}%) "
            "lie outside it or on its nodata"
        )


def _is_local(source: str) -> bool:
    return "://" not in source and not source.startswith("/vsi")


def _warped(stack: contextlib.ExitStack, source: str, grid: TargetGrid, what: str) -> Any:
    """A WarpedVRT of ``source`` on ``grid`` with an alpha band; ``None`` if they do not meet."""
    name = redact(source)
    if _is_local(source) and not Path(source).is_file():
        raise InputError(f"{what} {name} does not exist")
    try:
        src = stack.enter_context(rasterio.open(source))
    except RasterioError as err:
        if _is_local(source):
            raise InputError(f"{what} {name} cannot be read as a raster: {err}") from None
        raise ServiceError(f"{what} {name} cannot be opened: {redact(str(err))}") from None
    if src.crs is None:
        raise InputError(f"{what} {name} has no CRS: it cannot be placed on the scene")
    left, bottom, right, top = grid.bounds_in(src.crs)
    s_left, s_bottom, s_right, s_top = src.bounds
    if left >= s_right or right <= s_left or bottom >= s_top or top <= s_bottom:
        return None
    return stack.enter_context(
        WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.nearest,
            tolerance=WARP_TOLERANCE_PX,
            add_alpha=True,
        )
    )


def _read_strip(
    vrt: Any, window: Window, source: str, what: str
) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    """Classes and validity (alpha: inside the footprint and not nodata) of one strip."""
    try:
        data = np.asarray(vrt.read(1, window=window))
        valid = np.asarray(vrt.read(vrt.count, window=window)) > 0
    except RasterioError as err:
        kind = InputError if _is_local(source) else ServiceError  # a broken file, or the host
        raise kind(f"reading {what} {redact(source)} failed: {redact(str(err))}") from None
    return data, valid


# --- polygons ------------------------------------------------------------------------


def _vector_cropland(source: str, grid: TargetGrid) -> NDArray[np.bool_]:
    """Polygons of a vector file rasterised onto the grid (pixel centres inside)."""
    from rasterio.features import rasterize

    frame = _read_polygons(source, grid)
    shapes = [(geom, 1) for geom in frame.to_crs(grid.crs).geometry if not geom.is_empty]
    if not shapes:
        return np.zeros(grid.shape, dtype=bool)
    burned = rasterize(
        shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8"
    )
    return np.asarray(burned, dtype=bool)


def _read_polygons(source: str, grid: TargetGrid) -> Any:
    """The file's polygons within the area's bounds, in its own CRS; errors name the file.

    Only the CRS is read first (GeoParquet: the whole file, it has no cheaper way), then
    only the features in the area's bounds, so a national layer is not read whole.
    """
    import geopandas as gpd
    import pyogrio  # type: ignore[import-untyped]

    name = redact(source)
    if _is_local(source) and not Path(source).is_file():
        raise InputError(f"land cover vector {name} does not exist")
    parquet = source.lower().endswith((".parquet", ".geoparquet"))
    whole = _vector_read(lambda: gpd.read_parquet(source), name) if parquet else None
    crs = (
        whole.crs
        if whole is not None
        else _vector_read(lambda: pyogrio.read_info(source)["crs"], name)
    )
    if crs is None:
        raise InputError(f"land cover vector {name} has no CRS: it cannot be placed on the scene")
    bbox = grid.bounds_in(crs)
    if whole is not None:
        frame = whole.cx[bbox[0] : bbox[2], bbox[1] : bbox[3]]
    else:
        frame = _vector_read(lambda: gpd.read_file(source, bbox=bbox, engine="pyogrio"), name)
    polygonal = frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if frame.empty or not polygonal.any():
        raise InputError(
            f"land cover vector {name} has no polygon in the area "
            f"(bounds {', '.join(f'{v:.6f}' for v in bbox)} in its CRS)"
        )
    return frame[polygonal]


def _vector_read(read: Callable[[], Any], name: str) -> Any:
    """``read()``, its failure (not a vector file, a broken one) an error naming the file."""
    try:
        return read()
    except Exception as err:  # pyogrio, pyarrow and geopandas raise their own kinds
        raise InputError(
            f"land cover vector {name} cannot be read as a vector file: {redact(str(err))}"
        ) from None


# --- ESA WorldCover ------------------------------------------------------------------


def worldcover_hrefs(
    stac_url: str,
    bbox_lonlat: Sequence[float],
    *,
    network: NetworkOptions | None = None,
    pc_key: str | None = None,
    collection: str = WORLDCOVER_COLLECTION,
) -> list[str]:
    """Signed ``map`` hrefs of the WorldCover tiles meeting a lon/lat bbox, newest first.

    WorldCover has a 2020 (v100) and a 2021 (v200) product; tiles are ordered by their
    ``start_datetime`` (or ``datetime``), newest first, then by id, so a mosaic takes the
    newest map and falls back to an older one only where the newer has no data.

    Raises:
        InputError: No item of ``collection`` meets the bbox, or none has a ``map`` asset.
        ServiceError: The STAC API (or the SAS token endpoint) still failed after retries.
    """
    network = network or NetworkOptions()
    bbox = [float(v) for v in bbox_lonlat]
    corners = ", ".join(f"{v:.5f}" for v in bbox)
    where = f"collection {collection!r} on {redact(stac_url)}, bbox [{corners}]"
    items = _search_worldcover(stac_url, bbox, collection, network, pc_key)
    if not items:
        raise InputError(f"no land cover tile covers the area ({where})")
    usable = [i for i in items if WORLDCOVER_ASSET in i.assets]
    if not usable:
        raise InputError(f"the land cover items have no {WORLDCOVER_ASSET!r} asset ({where})")
    usable.sort(key=lambda i: i.id)
    usable.sort(key=_item_start, reverse=True)
    logger.info("land cover: %d tiles (%s)", len(usable), ", ".join(i.id for i in usable))
    return [i.assets[WORLDCOVER_ASSET].href for i in usable]


def worldcover_on_grid(
    stac_url: str,
    crs: Any,
    transform: Affine,
    height: int,
    width: int,
    classes: Sequence[int] = (WORLDCOVER_CROPLAND,),
    *,
    network: NetworkOptions | None = None,
    pc_key: str | None = None,
) -> NDArray[np.bool_]:
    """WorldCover cropland on a grid: the area's tiles found, mosaicked, checked for gaps.

    Raises:
        InputError: No tile covers the area, or the tiles leave part of it without data.
        ServiceError: The STAC API or a COG host still failed after retries.
    """
    grid = TargetGrid(crs, Affine(*tuple(transform)[:6]), int(height), int(width))
    bbox = grid.bounds_in("EPSG:4326")
    hrefs = worldcover_hrefs(stac_url, bbox, network=network, pc_key=pc_key)
    cropland, missing = mosaic_cropland(hrefs, grid, classes, "WorldCover tile", network)
    check_covered(missing, f"ESA WorldCover ({len(hrefs)} tiles from {redact(stac_url)})")
    return cropland


def _search_worldcover(
    stac_url: str,
    bbox: list[float],
    collection: str,
    network: NetworkOptions,
    pc_key: str | None,
) -> list[Any]:
    """Every item of ``collection`` meeting ``bbox``, hrefs signed; bounded like the S2 search."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    signer = pc_signer(pc_key, network)
    timeout = network.timeout_s

    def run() -> list[Any]:
        client = Client.open(
            stac_url,
            modifier=signer,
            stac_io=StacApiIO(max_retries=None),
            timeout=(timeout, timeout),
        )
        search = client.search(
            collections=[collection], bbox=bbox, limit=100, max_items=MAX_WORLDCOVER_ITEMS
        )
        return list(search.items())

    what = f"land cover search on {redact(stac_url)}"
    return with_retries(run, network, what, secrets=[pc_key])


def _item_start(item: Any) -> datetime:
    """When an item's map begins (WorldCover items have ``start_datetime``, no ``datetime``)."""
    start = item.common_metadata.start_datetime or item.datetime
    return start.astimezone(timezone.utc) if start is not None else _NO_DATE
