"""Sentinel-2 L2A ingest: STAC search, signing, cloud-aware choice, windowed mosaic, COGs.

The thin I/O side of the ingest; the decisions live in :mod:`components.core.area` and
:mod:`components.core.scene_choice`. One call, :func:`ingest_s2`:

1. validates every input (area, dates, bands, limits) before any network call;
2. searches ``sentinel-2-l2a`` on a STAC API (default the Planetary Computer's;
   ``stac_url`` or ``$S2SAM_STAC_URL`` overrides) by the area's bbox, the time range
   and ``eo:cloud_cover <= max_cloud_cover`` (filtered by the server);
3. signs asset hrefs with ``planetary_computer.sign_inplace`` as the pystac-client
   modifier; the SAS tokens it needs are fetched here first, with a timeout and
   bounded retries (the library's own request has no timeout and retries for
   minutes), and put in its token cache, so signing itself never goes to the network;
4. per acquisition, picks the fewest tiles covering the area, reads their SCL over the
   area's window only and keeps the clear acquisitions (:func:`scenes.select_scenes`);
5. reads only the area's window (plus ``margin_m``) of only the requested bands by HTTP
   range requests, copies (same UTM zone) or resamples (20 m bands, other zones) them
   into one 10 m grid in the UTM zone of the area's centroid, and writes one COG per
   acquisition and a ``manifest.json``, each through a temporary file and a rename.

Network failures (5xx, stalls, dropped connections) are retried with exponential
backoff a bounded number of times, each attempt under ``timeout_s``; what still fails
raises :class:`ServiceError` naming the service and the request, with signed URLs'
tokens redacted. The Planetary Computer key is sent only to the SAS token endpoint
and never logged or written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import numpy as np
import planetary_computer  # type: ignore[import-untyped]
import pystac
import rasterio
import rasterio.shutil
import requests
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import shape

from components.core.area import (
    DEFAULT_MAX_AREA_KM2,
    Area,
    Grid,
    aligned_offset,
    area_grid,
    axis_overlap,
    parse_area,
    project,
)
from components.core.radiometry import NODATA_DN, boa_add_offset, parse_baseline
from components.core.scene_choice import (
    BAND_RESOLUTION,
    DEFAULT_BANDS,
    SCL_ASSET,
    Acquisition,
    Candidate,
    NoSceneError,
    SkyStats,
    Strategy,
    TileItem,
    TimeRange,
    check_selection_limits,
    common_offset,
    cover_area,
    group_acquisitions,
    parse_bands,
    rebase_dn,
    rejection,
    resolve_time_range,
    scl_counts,
    select_scenes,
    sky_from_counts,
)
from components.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
STAC_URL_ENV = "S2SAM_STAC_URL"
PC_KEY_ENV = "PC_SDK_SUBSCRIPTION_KEY"
COLLECTION = "sentinel-2-l2a"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

MAX_ITEMS = 5000
"""More items than this means the dates or area are far too wide for one ingest."""

SAS_TIMEOUT_S = 10.0
"""Longest wait for the SAS token endpoint: it answers in milliseconds when it is up."""

OUTPUT_RESOLUTION = 10.0
SCL_RESOLUTION = 20.0
STRIP_ROWS = 1024
"""Rows read and written at a time: bounds memory whatever the area's size."""

ResamplingName = Literal["nearest", "bilinear", "cubic", "average"]
RESAMPLINGS: tuple[str, ...] = get_args(ResamplingName)

ProgressCallback = Callable[[str, int, int], None]
"""``(stage, done, total)``; stages: ``"clouds"`` (acquisitions screened), ``"read"``
(strips of band rows read and written, over all scenes)."""

_T = TypeVar("_T")
_SIGNED_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


class ServiceError(ConnectionError):
    """A STAC API, SAS token endpoint or COG host still failed after the retries."""


# --- parameters ------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkOptions:
    """Timeouts and retries for every request the ingest makes.

    A request gets ``timeout_s`` to connect and then ``timeout_s`` between bytes; a
    transient failure (5xx, 429, timeout, dropped connection) is retried up to
    ``retries`` times, waiting ``backoff_s * 2**k`` (at most 30 s) before retry ``k``.
    """

    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout_s}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {self.retries!r}")
        if not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise ValueError(f"backoff must be a non-negative number, got {self.backoff_s}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return float(min(self.backoff_s * 2**attempt, 30.0))

    def gdal_options(self) -> dict[str, str]:
        """GDAL ``/vsicurl/`` settings: the same limits for COG range requests.

        GDAL retries 5xx answers and timeouts per request itself; a stall is a
        transfer slower than 1 byte/s for ``timeout_s``.
        """
        seconds = str(max(1, math.ceil(self.timeout_s)))
        return {
            "GDAL_HTTP_CONNECTTIMEOUT": seconds,
            "GDAL_HTTP_LOW_SPEED_TIME": seconds,
            "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
            "GDAL_HTTP_TIMEOUT": str(max(60, 10 * math.ceil(self.timeout_s))),
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": str(self.backoff_s),
        }


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


@dataclass(frozen=True)
class IngestParams:
    """Every ingest input, validated; built by :func:`ingest_params`."""

    area: Area
    time_range: TimeRange
    bands: tuple[str, ...]
    max_cloud_cover: float
    max_roi_cloud_fraction: float
    max_roi_nodata_fraction: float
    strategy: Strategy
    max_scenes: int
    margin_m: float
    resampling: ResamplingName
    stac_url: str
    collection: str
    network: NetworkOptions
    pc_key: str | None = field(default=None, repr=False)
    """Planetary Computer subscription key; only ever sent to the SAS endpoint."""


def ingest_params(
    geometry: str | os.PathLike[str] | Mapping[str, Any],
    *,
    start_date: str | date | None = None,
    end_date: str | date | None = None,
    lookback_days: int | None = None,
    reference_time: str | datetime | None = None,
    bands: str | Sequence[str] = DEFAULT_BANDS,
    max_cloud_cover: float = 30.0,
    max_roi_cloud_fraction: float = 0.1,
    max_roi_nodata_fraction: float = 0.05,
    strategy: str = "least_cloudy",
    max_scenes: int = 1,
    margin_m: float = 0.0,
    resampling: str = "nearest",
    stac_url: str | None = None,
    collection: str = COLLECTION,
    pc_key: str | None = None,
    max_area_km2: float = DEFAULT_MAX_AREA_KM2,
    network: NetworkOptions | None = None,
    now: datetime | None = None,
) -> IngestParams:
    """Validate the ingest's inputs (arguments as :func:`ingest_s2`); no network access.

    Raises:
        ValueError: The first bad input, named, with what is wrong with it.
    """
    if isinstance(geometry, os.PathLike) or (
        isinstance(geometry, str) and not geometry.lstrip().startswith("{")
    ):
        area = parse_area(read_geometry_file(Path(geometry)), max_area_km2)
    else:
        area = parse_area(geometry, max_area_km2)
    time_range = resolve_time_range(start_date, end_date, lookback_days, reference_time, now)
    if not (
        isinstance(max_cloud_cover, int | float)
        and math.isfinite(max_cloud_cover)
        and 0 <= max_cloud_cover <= 100
    ):
        raise ValueError(
            f"max_cloud_cover must be a percentage in [0, 100], got {max_cloud_cover!r}"
        )
    check_selection_limits(strategy, max_scenes, max_roi_cloud_fraction, max_roi_nodata_fraction)
    if not (isinstance(margin_m, int | float) and math.isfinite(margin_m) and margin_m >= 0):
        raise ValueError(f"margin must be a non-negative number of metres, got {margin_m!r}")
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling must be one of {RESAMPLINGS}, got {resampling!r}")
    url = stac_url or os.environ.get(STAC_URL_ENV) or DEFAULT_STAC_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"stac_url must be an http(s) URL, got {url!r}")
    if not collection or not isinstance(collection, str):
        raise ValueError(f"collection must be a collection id, got {collection!r}")
    key = pc_key or os.environ.get(PC_KEY_ENV) or None
    return IngestParams(
        area=area,
        time_range=time_range,
        bands=parse_bands(bands),
        max_cloud_cover=float(max_cloud_cover),
        max_roi_cloud_fraction=float(max_roi_cloud_fraction),
        max_roi_nodata_fraction=float(max_roi_nodata_fraction),
        strategy=strategy,  # type: ignore[arg-type]  # checked above
        max_scenes=max_scenes,
        margin_m=float(margin_m),
        resampling=resampling,  # type: ignore[arg-type]  # checked above
        stac_url=url.rstrip("/"),
        collection=collection,
        network=network or NetworkOptions(),
        pc_key=key,
    )


def read_geometry_file(path: Path) -> str:
    """A geometry file's text; ``ValueError`` naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"geometry file {str(path)!r} cannot be read: {err}") from err


# --- results ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_s2` wrote."""

    manifest_path: Path
    grid: Grid
    bands: tuple[str, ...]
    scenes: tuple[SceneRecord, ...]


# --- the ingest ------------------------------------------------------------------------


def ingest_s2(
    geometry: str | os.PathLike[str] | Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    start_date: str | date | None = None,
    end_date: str | date | None = None,
    lookback_days: int | None = None,
    reference_time: str | datetime | None = None,
    bands: str | Sequence[str] = DEFAULT_BANDS,
    max_cloud_cover: float = 30.0,
    max_roi_cloud_fraction: float = 0.1,
    max_roi_nodata_fraction: float = 0.05,
    strategy: str = "least_cloudy",
    max_scenes: int = 1,
    margin_m: float = 0.0,
    resampling: str = "nearest",
    stac_url: str | None = None,
    collection: str = COLLECTION,
    pc_key: str | None = None,
    max_area_km2: float = DEFAULT_MAX_AREA_KM2,
    network: NetworkOptions | None = None,
    progress: ProgressCallback | None = None,
) -> IngestResult:
    """Ingest the clearest Sentinel-2 L2A scenes of an area into COGs and a manifest.

    Args:
        geometry: The area: GeoJSON text or mapping (Polygon, MultiPolygon, Feature,
            FeatureCollection), or a path to a GeoJSON file (a ``Path``, or a string
            that does not start with ``{``).
        output_dir: Folder for ``<acquisition>.tif`` files and ``manifest.json``;
            created when the first file is written.
        start_date: First day searched (``YYYY-MM-DD``); with ``end_date``.
        end_date: Last day searched, included.
        lookback_days: Instead of dates: the days before ``reference_time``.
        reference_time: End of the lookback; default now (a scheduled run's time).
        bands: 10/20 m bands in output order; 20 m bands are resampled to 10 m.
        max_cloud_cover: Tile-level ``eo:cloud_cover`` limit in %, applied by the server.
        max_roi_cloud_fraction: Largest share of cloud/shadow (SCL) over the area.
        max_roi_nodata_fraction: Largest share of the area without data.
        strategy: ``least_cloudy``, ``latest`` or ``all`` (see
            :func:`components.core.scene_choice.select_scenes`).
        max_scenes: Acquisitions kept by ``least_cloudy`` and ``latest``.
        margin_m: Ground added around the area's bounds, in metres.
        resampling: Where pixels are resampled (20 m bands, other UTM zones).
        stac_url: STAC API; default ``$S2SAM_STAC_URL``, else the Planetary Computer.
        collection: The collection searched.
        pc_key: Planetary Computer subscription key; default
            ``$PC_SDK_SUBSCRIPTION_KEY``. Optional; never logged or written.
        max_area_km2: Largest area accepted.
        network: Timeouts and retries.
        progress: Called as ``(stage, done, total)`` while screening and reading.

    Returns:
        The manifest path, the output grid and one record per written scene.

    Raises:
        ValueError: Bad input (before any network call).
        NoSceneError: Nothing found; the message repeats the search.
        TooCloudyError: Every acquisition over the limits; the message lists them.
        ServiceError: A service still failed after the retries.
    """
    params = ingest_params(
        geometry,
        start_date=start_date,
        end_date=end_date,
        lookback_days=lookback_days,
        reference_time=reference_time,
        bands=bands,
        max_cloud_cover=max_cloud_cover,
        max_roi_cloud_fraction=max_roi_cloud_fraction,
        max_roi_nodata_fraction=max_roi_nodata_fraction,
        strategy=strategy,
        max_scenes=max_scenes,
        margin_m=margin_m,
        resampling=resampling,
        stac_url=stac_url,
        collection=collection,
        pc_key=pc_key,
        max_area_km2=max_area_km2,
        network=network,
    )
    return run_ingest(params, output_dir, progress)


def run_ingest(
    params: IngestParams,
    output_dir: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
) -> IngestResult:
    """:func:`ingest_s2` on validated parameters."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {str(out)!r} exists and is not a folder")
    report = progress or (lambda stage, done, total: None)

    items = search_items(params)
    if not items:
        raise NoSceneError(f"no scene found: {describe_search(params)}")
    acquisitions = group_acquisitions(items)
    logger.info("%d items in %d acquisitions", len(items), len(acquisitions))
    grid = area_grid(params.area, OUTPUT_RESOLUTION, params.margin_m)
    candidates = screen_acquisitions(params, acquisitions, grid.epsg, report)
    if not any(c.cover.tiles for c in candidates):
        raise NoSceneError(
            f"no scene found: {len(items)} items match the search but none overlaps the "
            f"area itself ({describe_search(params)})"
        )
    selection = select_scenes(
        candidates,
        params.strategy,
        params.max_scenes,
        params.max_roi_cloud_fraction,
        params.max_roi_nodata_fraction,
    )
    for candidate, reason in selection.rejected:
        logger.info("skipping %s: %s", candidate.acquisition.key, reason)

    out.mkdir(parents=True, exist_ok=True)
    total_steps = len(selection.selected) * len(params.bands) * n_strips(grid)
    done = [0]

    def step() -> None:
        done[0] += 1
        report("read", done[0], total_steps)

    records = tuple(
        write_scene(out / f"{c.acquisition.key}.tif", c, grid, params, step)
        for c in selection.selected
    )
    manifest = build_manifest(
        params, grid, records, candidates, {id(c) for c in selection.selected}
    )
    manifest_path = out / MANIFEST_NAME
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return IngestResult(manifest_path, grid, params.bands, records)


def describe_search(params: IngestParams) -> str:
    """The search in words, for errors: collection, server, bbox, dates, cloud filter."""
    bbox = ", ".join(f"{v:.5f}" for v in params.area.bbox)
    return (
        f"collection {params.collection!r} on {params.stac_url}, bbox [{bbox}], "
        f"datetime {params.time_range.to_stac()}, eo:cloud_cover <= {params.max_cloud_cover:g}"
    )


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
    if params.strategy == "latest":
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
        if rejection(sky, params.max_roi_cloud_fraction, params.max_roi_nodata_fraction) is None:
            passing += 1
        if params.strategy == "latest" and passing >= params.max_scenes:
            break
    return sorted(candidates, key=lambda c: c.acquisition.datetime)


def sky_over_area(
    tiles: Sequence[TileItem], grid: Grid, inside: NDArray[np.bool_], params: IngestParams
) -> SkyStats:
    """SCL statistics over the area, counted strip by strip (memory stays flat)."""
    totals = [0, 0, 0]
    with MosaicReader(tiles, SCL_ASSET, grid, params, Resampling.nearest) as mosaic:
        for row in range(0, grid.height, STRIP_ROWS):
            height = min(STRIP_ROWS, grid.height - row)
            counts = scl_counts(mosaic.read(row, height), inside[row : row + height])
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    return sky_from_counts(*totals)


def check_assets(tiles: Sequence[TileItem], keys: Sequence[str]) -> None:
    """Raise ``ValueError`` when an item lacks an asset the ingest reads."""
    for tile in tiles:
        missing = [k for k in keys if k not in tile.assets]
        if missing:
            raise ValueError(
                f"item {tile.id} has no asset {', '.join(missing)} "
                f"(it has {', '.join(sorted(tile.assets))})"
            )


# --- search and signing ----------------------------------------------------------------


def search_items(params: IngestParams) -> list[TileItem]:
    """Every item of the search, signed, as :class:`TileItem` records."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    signer = pc_signer(params.pc_key, params.network)
    timeout = params.network.timeout_s

    def run() -> list[pystac.Item]:
        # Client.open passes its own timeout on to the StacApiIO: give it there.
        io = StacApiIO(max_retries=None)
        client = Client.open(
            params.stac_url, modifier=signer, stac_io=io, timeout=(timeout, timeout)
        )
        search = client.search(
            collections=[params.collection],
            bbox=params.area.bbox,
            datetime=params.time_range.to_stac(),
            query={"eo:cloud_cover": {"lte": params.max_cloud_cover}},
            limit=100,
            max_items=MAX_ITEMS + 1,
        )
        return list(search.items())

    found = with_retries(run, params.network, f"STAC search on {params.stac_url}", params.pc_key)
    if len(found) > MAX_ITEMS:
        raise ValueError(
            f"the search matches more than {MAX_ITEMS} items: narrow the dates or the area "
            f"({describe_search(params)})"
        )
    logger.info("search found %d items (%s)", len(found), describe_search(params))
    return [tile_item(item) for item in found]


def tile_item(item: pystac.Item) -> TileItem:
    """The selection's view of a ``sentinel-2-l2a`` STAC item.

    Raises:
        ValueError: The item lacks what the ingest needs (geometry, CRS, tile).
    """
    props = item.properties
    if item.geometry is None or item.datetime is None:
        raise ValueError(f"item {item.id} has no geometry or no datetime")
    epsg = props.get("proj:epsg")
    if epsg is None and isinstance(props.get("proj:code"), str):
        code = props["proj:code"]
        epsg = int(code.split(":")[1]) if code.upper().startswith("EPSG:") else None
    if not isinstance(epsg, int):
        raise ValueError(f"item {item.id} has no proj:epsg: its CRS is unknown")
    tile = props.get("s2:mgrs_tile")
    if not tile:
        match = re.search(r"_T(\d{2}[A-Z]{3})_", item.id)
        tile = match.group(1) if match else item.id
    baseline = props.get("s2:processing_baseline")
    if not baseline:
        match = re.search(r"_N(\d{4})_", str(props.get("s2:product_uri", "")))
        baseline = f"{match.group(1)[:2]}.{match.group(1)[2:]}" if match else "00.00"
    parse_baseline(baseline)
    orbit = props.get("sat:relative_orbit")
    cloud = props.get("eo:cloud_cover")
    return TileItem(
        id=item.id,
        datetime=item.datetime.astimezone(timezone.utc),
        mgrs_tile=str(tile),
        platform=str(props.get("platform", "")),
        relative_orbit=int(orbit) if orbit is not None else None,
        epsg=epsg,
        processing_baseline=str(baseline),
        footprint=shape(item.geometry),
        assets={key: asset.href for key, asset in item.assets.items()},
        eo_cloud_cover=float(cloud) if cloud is not None else None,
        generation_time=str(props.get("s2:generation_time", "")),
    )


def pc_signer(pc_key: str | None, network: NetworkOptions) -> Callable[[Any], None]:
    """The pystac-client modifier: ``planetary_computer.sign_inplace``, bounded.

    The tokens for every blob container in the object are fetched first with
    :func:`fetch_sas_token` and cached where the library looks, so the library's
    own token request (no timeout, minutes of retries) never runs. Hrefs outside
    Azure blob storage are left as they are, as the library does.
    """
    # Settings are cached on first use; read PC_SDK_SAS_URL afresh for this ingest.
    planetary_computer.settings.Settings.get.cache_clear()

    def sign(obj: Any) -> None:
        for account, container in sorted(blob_containers(obj)):
            fetch_sas_token(account, container, pc_key, network)
        planetary_computer.sign_inplace(obj)

    return sign


def blob_containers(obj: Any) -> set[tuple[str, str]]:
    """``(account, container)`` of each unsigned Azure blob href in a STAC object."""
    found: set[tuple[str, str]] = set()
    for href in _asset_hrefs(obj):
        parts = urlsplit(href)
        if (
            not parts.netloc.endswith(planetary_computer.sas.BLOB_STORAGE_DOMAIN)
            or "sig=" in parts.query
        ):
            continue
        account = parts.netloc.split(".")[0]
        container = parts.path.lstrip("/").split("/", 1)[0]
        if account != "ai4edatasetspublicassets" and container:
            found.add((account, container))
    return found


def _asset_hrefs(obj: Any) -> Iterator[str]:
    if isinstance(obj, pystac.ItemCollection):
        for item in obj.items:
            yield from _asset_hrefs(item)
    elif isinstance(obj, pystac.Item | pystac.Collection):
        yield from (asset.href for asset in obj.assets.values())
    elif isinstance(obj, Mapping):
        for feature in obj.get("features", [obj]):
            if isinstance(feature, Mapping):
                for asset in (feature.get("assets") or {}).values():
                    if isinstance(asset, Mapping) and isinstance(asset.get("href"), str):
                        yield asset["href"]


def fetch_sas_token(
    account: str, container: str, pc_key: str | None, network: NetworkOptions
) -> None:
    """Put a fresh SAS token for a container in ``planetary_computer``'s token cache.

    Same endpoint and cache key as ``planetary_computer.sas.get_token`` (so
    ``$PC_SDK_SAS_URL`` redirects it), with a short timeout (at most
    :data:`SAS_TIMEOUT_S`) and bounded retries; the key, if any, goes in the
    ``Ocp-Apim-Subscription-Key`` header only.
    """
    sas = planetary_computer.sas
    url = f"{planetary_computer.settings.Settings.get().sas_url}/{account}/{container}"
    cached = sas.TOKEN_CACHE.get(url)
    if cached is not None and cached.ttl() > 120:
        return
    headers = {"Ocp-Apim-Subscription-Key": pc_key} if pc_key else {}

    timeout = min(network.timeout_s, SAS_TIMEOUT_S)

    def fetch() -> Any:
        response = requests.get(url, headers=headers, timeout=(timeout, timeout))
        response.raise_for_status()
        return response.json()

    doc = with_retries(fetch, network, f"SAS token request for {account}/{container}", pc_key)
    try:
        sas.TOKEN_CACHE[url] = sas.SASToken(**doc)
    except Exception as err:  # pydantic's validation error, or a non-mapping answer
        raise ServiceError(f"SAS token endpoint {url} answered without a token: {err}") from err


def with_retries(
    call: Callable[[], _T], network: NetworkOptions, what: str, secret: str | None = None
) -> _T:
    """``call()``, retried with backoff while it fails transiently.

    Raises:
        ServiceError: A permanent failure, or the last transient one; the message
            says what was attempted, how often, and why (tokens redacted).
    """
    attempts = network.retries + 1
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            transient = is_transient(err)
            reason = redact(f"{type(err).__name__}: {err}", secret)
            if not transient or attempt == attempts - 1:
                tries = f" after {attempt + 1} attempts" if transient else ""
                raise ServiceError(f"{what} failed{tries}: {reason}") from None
            delay = network.delay(attempt)
            logger.warning("%s failed (%s); retry %d in %.1fs", what, reason, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def is_transient(err: BaseException) -> bool:
    """Whether a request failure may pass on retry: 5xx, 429, timeouts, broken connections."""
    from pystac_client.exceptions import APIError

    if isinstance(err, ServiceError):
        return False  # raised by a nested call (a SAS token request) after its own retries
    if isinstance(err, APIError):
        status = getattr(err, "status_code", None)
        # pystac-client wraps connection errors and timeouts without a status
        return status is None or status == 429 or status >= 500
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return err.response.status_code == 429 or err.response.status_code >= 500
    return isinstance(err, requests.RequestException | ConnectionError | TimeoutError)


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with URL query strings (SAS tokens) and ``secret`` blanked out."""
    text = _SIGNED_QUERY.sub(r"\1?<redacted>", text)
    if secret:
        text = text.replace(secret, "<redacted>")
    return text


# --- reading ---------------------------------------------------------------------------


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
        params: IngestParams,
        resampling: Resampling,
        shifts: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.tiles = tuple(tiles)
        self.asset = asset
        self.grid = grid
        self.params = params
        self.resampling = resampling
        self.shifts = shifts
        self._env = rasterio.Env(**GDAL_READ_OPTIONS, **params.network.gdal_options())
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
                time.sleep(self.params.network.delay(0))
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


# --- writing ---------------------------------------------------------------------------


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
    check_assets(tiles, params.bands)
    baselines = [t.processing_baseline for t in tiles]
    offset = common_offset(baselines)
    newest = max(baselines, key=parse_baseline)
    shifts = [(boa_add_offset(b), offset) for b in baselines]
    acquisition = candidate.acquisition
    tags = {
        "datetime": acquisition.datetime.isoformat().replace("+00:00", "Z"),
        "acquisition": acquisition.key,
        "platform": acquisition.platform,
        "relative_orbit": ""
        if acquisition.relative_orbit is None
        else str(acquisition.relative_orbit),
        "item_ids": ",".join(t.id for t in tiles),
        "tiles": ",".join(t.mgrs_tile for t in tiles),
        "processing_baseline": newest,
        "processing_baselines": ",".join(baselines),
        "boa_add_offset": str(offset),
        "reflectance": f"(DN + {offset}) / 10000; DN 0 is nodata",
        "cloud_fraction": f"{candidate.sky.cloud_fraction:.6f}",
        "nodata_fraction": f"{candidate.sky.nodata_fraction:.6f}",
        "bands": ",".join(params.bands),
        "collection": params.collection,
        "generator": f"s2sam {__version__}",
    }
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    cog = path.with_name(f".{path.name}.{os.getpid()}.cog")
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": len(params.bands),
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
    try:
        resampling = Resampling[params.resampling]
        with contextlib.ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
            dst = stack.enter_context(rasterio.open(part, "w", **profile))
            mosaics = [
                stack.enter_context(MosaicReader(tiles, band, grid, params, resampling, shifts))
                for band in params.bands
            ]
            # All bands of a strip at once: each pixel-interleaved block is written once.
            for row in range(0, grid.height, STRIP_ROWS):
                height = min(STRIP_ROWS, grid.height - row)
                strip = np.empty((len(params.bands), height, grid.width), dtype=np.uint16)
                for k, mosaic in enumerate(mosaics):
                    strip[k] = mosaic.read(row, height)
                    step()
                dst.write(strip, window=Window(0, row, grid.width, height))
            for index, band in enumerate(params.bands, start=1):
                dst.set_band_description(index, band)
                dst.update_tags(index, band=band, native_resolution_m=str(BAND_RESOLUTION[band]))
            dst.update_tags(**tags)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            rasterio.shutil.copy(part, cog, driver="COG", **COG_OPTIONS)
        os.replace(cog, path)
    finally:
        part.unlink(missing_ok=True)
        cog.unlink(missing_ok=True)
    logger.info("wrote %s (%d x %d px, %s)", path, grid.width, grid.height, ",".join(params.bands))
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_manifest(
    params: IngestParams,
    grid: Grid,
    records: Sequence[SceneRecord],
    candidates: Sequence[Candidate],
    selected: set[int],
) -> dict[str, Any]:
    """The manifest: the search, the grid, each scene written and each one screened."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "generator": f"s2sam {__version__}",
        "created": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "search": {
            "stac_url": params.stac_url,
            "collection": params.collection,
            "bbox": list(params.area.bbox),
            "datetime": params.time_range.to_stac(),
            "max_cloud_cover": params.max_cloud_cover,
        },
        "selection": {
            "strategy": params.strategy,
            "max_scenes": params.max_scenes,
            "max_roi_cloud_fraction": params.max_roi_cloud_fraction,
            "max_roi_nodata_fraction": params.max_roi_nodata_fraction,
        },
        "area": {"geometry": params.area.to_geojson(), "area_km2": params.area.area_km2},
        "grid": {
            "crs": grid.crs,
            "transform": list(grid.transform)[:6],
            "width": grid.width,
            "height": grid.height,
            "resolution_m": grid.resolution,
            "margin_m": params.margin_m,
        },
        "bands": list(params.bands),
        "dtype": "uint16",
        "nodata": NODATA_DN,
        "scenes": [
            {
                "file": record.path.name,
                "acquisition": record.key,
                "datetime": record.datetime.isoformat().replace("+00:00", "Z"),
                "item_ids": list(record.item_ids),
                "tiles": list(record.tiles),
                "processing_baseline": record.processing_baseline,
                "boa_add_offset": record.boa_add_offset,
                "cloud_fraction": record.cloud_fraction,
                "nodata_fraction": record.nodata_fraction,
            }
            for record in records
        ],
        "screened": [
            {
                "acquisition": c.acquisition.key,
                "datetime": c.acquisition.datetime.isoformat().replace("+00:00", "Z"),
                "tiles": [t.mgrs_tile for t in c.cover.tiles],
                "coverage": c.cover.coverage,
                "cloud_fraction": c.sky.cloud_fraction,
                "nodata_fraction": c.sky.nodata_fraction,
                "selected": id(c) in selected,
            }
            for c in candidates
        ],
    }
