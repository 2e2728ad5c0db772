"""STAC search and Planetary Computer signing, each request bounded in time.

Searches ``sentinel-2-l2a`` (or another collection) on a STAC API by the area's bbox,
the time range and ``eo:cloud_cover`` (filtered by the server), and signs asset hrefs
with ``planetary_computer.sign_inplace`` as the pystac-client modifier. The SAS tokens
signing needs are fetched here first, with a timeout and bounded retries (the
library's own request has no timeout and retries for minutes), and put in its token
cache, so signing itself never goes to the network. The Planetary Computer key is
sent only to the SAS token endpoint and never logged or written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import planetary_computer  # type: ignore[import-untyped]
import pystac
import requests
from shapely.geometry import shape

from components.core.radiometry import parse_baseline
from components.core.scene_choice import TileItem
from components.errors import InputError, ServiceError
from components.io.network import NetworkOptions, with_retries

if TYPE_CHECKING:
    from components.io.ingest import IngestParams

logger = logging.getLogger(__name__)

DEFAULT_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
STAC_URL_ENV = "S2SAM_STAC_URL"
"""Environment variable that overrides the default STAC API."""
PC_KEY_ENV = "PC_SDK_SUBSCRIPTION_KEY"
"""The Planetary Computer subscription key, from a secret (never a parameter)."""

MAX_ITEMS = 5000
"""More items than this means the dates or area are far too wide for one ingest."""

SAS_TIMEOUT_S = 10.0
"""Longest wait for the SAS token endpoint: it answers in milliseconds when it is up."""


def describe_search(params: IngestParams) -> str:
    """The search in words, for errors: collection, server, bbox, dates, cloud filter."""
    bbox = ", ".join(f"{v:.5f}" for v in params.area.bbox)
    return (
        f"collection {params.search.collection!r} on {params.stac_url}, bbox [{bbox}], "
        f"datetime {params.time_range.to_stac()}, "
        f"eo:cloud_cover <= {params.search.max_cloud_cover:g}"
    )


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
            collections=[params.search.collection],
            bbox=params.area.bbox,
            datetime=params.time_range.to_stac(),
            query={"eo:cloud_cover": {"lte": params.search.max_cloud_cover}},
            limit=100,
            max_items=MAX_ITEMS + 1,
        )
        return list(search.items())

    found = with_retries(
        run, params.network, f"STAC search on {params.stac_url}", secrets=[params.pc_key]
    )
    if len(found) > MAX_ITEMS:
        raise InputError(
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
        raise InputError(f"item {item.id} has no geometry or no datetime")
    epsg = props.get("proj:epsg")
    if epsg is None and isinstance(props.get("proj:code"), str):
        code = props["proj:code"]
        epsg = int(code.split(":")[1]) if code.upper().startswith("EPSG:") else None
    if not isinstance(epsg, int):
        raise InputError(f"item {item.id} has no proj:epsg: its CRS is unknown")
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

    doc = with_retries(
        fetch, network, f"SAS token request for {account}/{container}", secrets=[pc_key]
    )
    try:
        sas.TOKEN_CACHE[url] = sas.SASToken(**doc)
    except Exception as err:  # pydantic's validation error, or a non-mapping answer
        raise ServiceError(f"SAS token endpoint {url} answered without a token: {err}") from err
