"""A pipeline's flat parameters as the typed request every later step reads.

Kubeflow hands a task strings, numbers and booleans; :func:`request_from_parameters`
turns the segmentation pipelines' parameters (named as in
:data:`~components.core.params.PIPELINE_PARAMETERS`) into a validated
:class:`~components.core.params.PipelineRequest`, once, in ``check_inputs``. ``s2sam
run`` builds the same request from its options before it starts anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any

from components.core.fields import FieldCleaning
from components.core.landcover import CroplandParams
from components.core.params import (
    FIELD_PREFIX,
    KFP,
    PIPELINE_PARAMETERS,
    AmgParams,
    DateWindow,
    ExecutionParams,
    Mode,
    PipelineRequest,
    PromptParams,
    RadiometryParams,
    SearchParams,
    SegmentationSettings,
    text_list,
)
from components.core.search import TimeRange, parse_bands
from components.core.seasons import resolve_windows


def request_from_parameters(mode: Mode, values: Mapping[str, Any]) -> PipelineRequest:
    """The request of a ``mode`` pipeline run with ``values`` (defaults for the rest).

    Raises:
        InputError: The first bad value, named.
        TypeError: A name that is no pipeline parameter (a bug in the caller).
    """
    unknown = sorted(set(values) - set(PIPELINE_PARAMETERS))
    if unknown:
        raise TypeError(f"not pipeline parameters: {unknown}")
    v = {**vars(KFP), **values}
    bands = parse_bands(v["band_names"])
    settings = SegmentationSettings(
        mode=mode,
        spatial_overlap=float(v["spatial_overlap"]),
        mask_nms_thr=float(v["mask_nms_thr"]),
        upsample=v["upsample"],
        chip_anchor=v["chip_anchor"],
        radiometry=RadiometryParams(
            band_names=bands,
            band_scaling=text_list(v["band_scaling"], float, "band_scaling"),
            band_offset=text_list(v["band_offset"], float, "band_offset"),
        ),
        amg=AmgParams(**{f.name: v[f.name] for f in fields(AmgParams)}),
        prompt=PromptParams(refine_iterations=v["refine_iterations"]),
        execution=ExecutionParams(
            chip_shards=v["chip_shards"],
            num_workers=v["num_workers"],
            in_memory=v["in_memory"],
            backend=v["backend"],
            precision=v["precision"],
        ),
        fields=FieldCleaning(**{f.name: v[FIELD_PREFIX + f.name] for f in fields(FieldCleaning)}),
        cropland=CroplandParams(
            v["cropland_mask"],
            float(v["cropland_min_share"]),
            text_list(v["cropland_classes"], int, "cropland_classes") or (),
        ),
    )
    return PipelineRequest(
        geometry=v["geometry"],
        prompts=v["prompts"],
        dates=DateWindow(
            start_date=v["start_date"],
            end_date=v["end_date"],
            lookback_days=v["lookback_days"],
            reference_time=v["reference_time"],
            windows=v["windows"],
        ),
        search=SearchParams(
            bands=bands, max_cloud_cover=v["max_cloud_cover"], max_scenes=v["max_scenes"]
        ),
        settings=settings,
        model_type=v["model_type"],
        model_uri=v["model_uri"],
        stac_url=v["stac_url"],
    )


def kfp_time(value: str) -> str | None:
    """A time parameter, or ``None`` when empty or an unresolved KFP placeholder."""
    value = (value or "").strip()
    return None if not value or value.startswith("{{") else value


def windows_of(
    dates: DateWindow, schedule_time: str = "", now: datetime | None = None
) -> tuple[TimeRange, ...]:
    """The intervals searched: the windows, or explicit dates, or a lookback.

    A lookback and relative windows end at the user's reference time, else at the
    run's scheduled time (so a recurring run's window ends at its own scheduled time,
    and a retry takes the same window), else now. Explicit dates ignore the scheduled
    time.
    """
    reference = kfp_time(dates.reference_time)
    if reference is None and dates.relative:
        reference = kfp_time(schedule_time)
    return resolve_windows(dates, reference, now)
