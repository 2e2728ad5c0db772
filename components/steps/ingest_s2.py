"""``ingest_s2``: the clearest Sentinel-2 acquisitions of the request's area and dates."""

from __future__ import annotations

from pathlib import Path

from components.core.params import PipelineRequest
from components.io.ingest import IngestResult, ProgressCallback, ingest_params, ingest_s2
from components.io.network import NetworkOptions
from components.steps.request import windows_of


def ingest_request(
    request: PipelineRequest,
    output_dir: Path,
    *,
    schedule_time: str = "",
    network: NetworkOptions | None = None,
    progress: ProgressCallback | None = None,
) -> IngestResult:
    """Ingest the request's scenes into ``output_dir`` (COGs and ``manifest.json``).

    ``schedule_time`` ends a lookback window when the request names no reference
    time. The Planetary Computer key comes from ``$PC_SDK_SUBSCRIPTION_KEY`` (the
    secret mounted in the task), never from a parameter: parameters reach logs.
    """
    params = ingest_params(
        request.geometry,
        windows_of(request.dates, schedule_time),
        request.search,
        stac_url=request.stac_url or None,
        network=network,
        cropland_mask=request.settings.cropland.mask,
        cropland_classes=request.settings.cropland.classes,
    )
    return ingest_s2(params, output_dir, progress)
