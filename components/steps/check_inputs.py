"""``check_inputs``: every check that needs no network and no model, before heavy work.

Inputs are checked in the order a user can fix them: the area, the dates, the
search and segmentation parameters (checked when the request is built), the
prompts, the model URI's form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from components.core.params import Mode, PipelineRequest
from components.core.prompt_geojson import parse_prompts
from components.core.records import to_json
from components.core.search import TimeRange
from components.core.seasons import describe_windows
from components.errors import InputError
from components.io.ingest import ingest_params
from components.io.registry import parse_model_uri
from components.steps.request import request_from_parameters, windows_of


def check_request(
    request: PipelineRequest, *, schedule_time: str = "", now: datetime | None = None
) -> dict[str, Any]:
    """Validate what the request's parameters alone cannot: area, dates, prompts, model URI.

    Returns:
        A summary for the task's log: area, time range, prompt ids.

    Raises:
        InputError: The first bad input, named.
    """
    windows: tuple[TimeRange, ...] = windows_of(request.dates, schedule_time, now)
    params = ingest_params(
        request.geometry, windows, request.search, stac_url=request.stac_url or None,
        cropland_mask=request.settings.cropland.mask,
        cropland_classes=request.settings.cropland.classes,
    )  # fmt: skip
    prompt_ids: list[str] = []
    if request.settings.mode == "prompted":
        if not request.prompts.strip():
            raise InputError(
                "segment_s2 needs prompts: a GeoJSON FeatureCollection of points/boxes"
            )
        prompt_ids = [str(p) for p in parse_prompts(request.prompts).prompt_ids]
    elif request.prompts.strip():
        raise InputError("auto_segment_s2 takes no prompts (use segment_s2)")
    if request.model_uri and "://" in request.model_uri:
        parse_model_uri(request.model_uri)
    return {
        "mode": request.settings.mode,
        "area_km2": round(params.area.area_km2, 3),
        "time_range": describe_windows(windows),
        "prompt_ids": prompt_ids,
    }


def check_parameters(mode: Mode, values: Mapping[str, Any]) -> str:
    """The ``check_inputs`` task: the request from the pipeline's parameters, checked.

    What was asked for is logged; the request goes on to the next tasks as JSON.
    """
    request = request_from_parameters(mode, values)
    print(json.dumps(check_request(request)), flush=True)
    return to_json(request)
