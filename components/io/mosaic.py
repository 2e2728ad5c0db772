"""Reading COG assets onto one output grid: windowed range reads, copies or warps, mosaics.

Only the area's window of only the requested bands is read, by HTTP range requests;
a tile in the output's UTM zone and on its 10 m lattice is copied, any other is
warped. Tiles of one acquisition are mosaicked (the first tile with data wins a
pixel), strip by strip, so memory stays flat whatever the area's size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from components.core.area import Grid, aligned_offset, axis_overlap
from components.core.radiometry import NODATA_DN
from components.core.scene_choice import TileItem, rebase_dn
from components.errors import InputError, ServiceError
from components.io.network import NetworkOptions, redact

logger = logging.getLogger(__name__)

STRIP_ROWS = 1024
"""Rows read and written at a time: bounds memory whatever the area's size."""

GDAL_CACHE_MB = 256
"""GDAL's block cache (rasterio reads an integer below 100000 as megabytes)."""

GDAL_READ_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "GDAL_CACHEMAX": GDAL_CACHE_MB,
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 2**20),
}
"""Cloud COG reading: the header in one request, no directory listings (a signed URL
has none), adjacent blocks in one range request; caches kept small (memory target)."""


def check_assets(tiles: Sequence[TileItem], keys: Sequence[str]) -> None:
    """Raise ``ValueError`` when an item lacks an asset the ingest reads."""
    for tile in tiles:
        missing = [k for k in keys if k not in tile.assets]
        if missing:
            raise InputError(
                f"item {tile.id} has no asset {', '.join(missing)} "
                f"(it has {', '.join(sorted(tile.assets))})"
            )


def n_strips(grid: Grid) -> int:
    """Row strips a grid is read and written in."""
    return math.ceil(grid.height / STRIP_ROWS)


class TileReader:
    """Reads one COG asset onto a grid window by window: a copy when aligned, else warped.

    Where the tile has no data the window is 0 (L2A nodata); the tile's own nodata
    value, if another, becomes 0 too.
    """

    def __init__(self, href: str, grid: Grid, resampling: Resampling) -> None:
        self.href = href
        self.grid = grid
        self.resampling = resampling
        self._stack = contextlib.ExitStack()
        self._src: Any = None
        self._vrt: Any = None
        self._offset: tuple[int, int] | None = None

    def __enter__(self) -> TileReader:
        try:
            self._src = self._stack.enter_context(rasterio.open(self.href))
            src = self._src
            epsg = src.crs.to_epsg() if src.crs is not None else None
            self._offset = aligned_offset(src.transform, epsg, self.grid)
            if self._offset is None:
                self._vrt = self._stack.enter_context(
                    WarpedVRT(
                        src,
                        crs=self.grid.crs,
                        transform=self.grid.transform,
                        width=self.grid.width,
                        height=self.grid.height,
                        resampling=self.resampling,
                        src_nodata=NODATA_DN if src.nodata is None else src.nodata,
                        nodata=NODATA_DN,
                    )
                )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def read(self, row: int, height: int) -> NDArray[Any]:
        """Grid rows ``[row, row + height)``, full width."""
        if self._vrt is not None:
            data = self._vrt.read(1, window=Window(0, row, self.grid.width, height))
            return np.asarray(data)
        src = self._src
        assert self._offset is not None
        col_off, row_off = self._offset
        out = np.zeros((height, self.grid.width), dtype=src.dtypes[0])
        r0, dr, nr = axis_overlap(row, height, row_off, src.height)
        c0, dc, nc = axis_overlap(0, self.grid.width, col_off, src.width)
        if nr and nc:
            data = src.read(1, window=Window(c0, r0, nc, nr))
            if src.nodata is not None and src.nodata != NODATA_DN:
                data[data == src.nodata] = NODATA_DN
            out[dr : dr + nr, dc : dc + nc] = data
        return out


class MosaicReader:
    """One asset of several tiles, mosaicked onto a grid strip by strip.

    The first tile with data wins each pixel (tiles of one acquisition agree where
    they overlap); DNs are rebased per tile by ``shifts`` (``(from, to)`` offsets).
    A strip whose read fails after GDAL's own retries (it retries 5xx answers and
    timeouts request by request, not a connection dropped part-way) is read once
    more from freshly opened datasets; a second failure raises :class:`ServiceError`.
    """

    def __init__(
        self,
        tiles: Sequence[TileItem],
        asset: str,
        grid: Grid,
        network: NetworkOptions,
        resampling: Resampling,
        shifts: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.tiles = tuple(tiles)
        self.asset = asset
        self.grid = grid
        self.network = network
        self.resampling = resampling
        self.shifts = shifts
        self._env = rasterio.Env(**GDAL_READ_OPTIONS, **network.gdal_options())
        self._readers: contextlib.ExitStack | None = None
        self._open: dict[int, TileReader] = {}

    def __enter__(self) -> MosaicReader:
        self._env.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        self._env.__exit__(*exc)

    def _close(self) -> None:
        if self._readers is not None:
            self._readers.close()
        self._readers = None
        self._open = {}

    def _reader(self, k: int) -> TileReader:
        if self._readers is None:
            self._readers = contextlib.ExitStack()
        if k not in self._open:
            reader = TileReader(self.tiles[k].assets[self.asset], self.grid, self.resampling)
            self._open[k] = self._readers.enter_context(reader)
        return self._open[k]

    def read(self, row: int, height: int) -> NDArray[Any]:
        """Grid rows ``[row, row + height)``, full width; 0 where no tile has data."""
        for attempt in (0, 1):
            try:
                return self._read(row, height)
            except RasterioError as err:
                self._close()
                hrefs = ", ".join(redact(t.assets[self.asset]) for t in self.tiles)
                cause = f" ({redact(str(err.__cause__))})" if err.__cause__ else ""
                if attempt == 1:
                    raise ServiceError(
                        f"reading {self.asset} rows {row}-{row + height} from {hrefs} failed "
                        f"after retries: {redact(str(err))}{cause}"
                    ) from None
                logger.warning(
                    "reading %s from %s failed (%s%s); retrying",
                    self.asset,
                    hrefs,
                    redact(str(err)),
                    cause,
                )
                time.sleep(self.network.delay(0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, row: int, height: int) -> NDArray[Any]:
        out: NDArray[Any] | None = None
        for k in range(len(self.tiles)):
            data = self._reader(k).read(row, height)
            if self.shifts is not None:
                data = rebase_dn(data, *self.shifts[k])
            if out is None:
                out = data
            else:
                empty = out == NODATA_DN
                out[empty] = data[empty]
            if not (out == NODATA_DN).any():
                break
        assert out is not None
        return out
