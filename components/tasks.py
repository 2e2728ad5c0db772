"""KFP components: the typed interface of each pipeline task, a thin shell over one step.

Each body imports and calls ONE library function of :mod:`components.steps`, so the
same code runs in unit tests, under ``kfp.local`` and in the images on a cluster.
Bodies must be self-contained (KFP ships the function's source, not this module),
hence the imports inside them, and parameters carry no defaults: the pipelines pass
every value, from the one table of defaults (:mod:`components.core.params`).

After ``check_inputs`` the run's parameters travel as one typed record, the request
(:class:`~components.core.params.PipelineRequest` as JSON text: Kubeflow passes text
through as it is, where its structs turn integers into floats), and each inference task
gets its shard's plan (:class:`~components.steps.plan_chips.ShardPlan`), which holds
everything it needs.
"""

# No ``from __future__ import annotations`` here: KFP reads the signatures' real types.
from typing import Any, NamedTuple

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def check_auto_inputs(
    geometry: str,
    start_date: str,
    end_date: str,
    lookback_days: int,
    reference_time: str,
    windows: str,
    model_type: str,
    model_uri: str,
    spatial_overlap: float,
    points_per_side: int,
    n_crop_layers: int,
    crop_overlap_ratio: float,
    crop_n_points_downscale_factor: int,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    stability_score_offset: float,
    points_per_batch: int,
    num_workers: int,
    in_memory: bool,
    chip_nms_thr: float,
    mask_nms_thr: float,
    max_cloud_cover: float,
    max_scenes: int,
    band_names: str,
    band_scaling: str,
    band_offset: str,
    min_mask_region_area: int,
    mask_threshold: float,
    multimask_output: bool,
    use_m2m: bool,
    upsample: int,
    chip_anchor: str,
    chip_shards: int,
    backend: str,
    precision: str,
    field_simplify_m: float,
    field_min_area_m2: float,
    field_max_area_m2: float,
    field_fill_holes_m2: float,
    field_opening_m: float,
    cropland_mask: str,
    cropland_min_share: float,
    cropland_classes: str,
    stac_url: str,
) -> str:
    """Check an ``auto_segment_s2`` request (no network, no model); return it as JSON."""
    values = dict(locals())  # this task's parameters, by name: the pipeline's
    from components.steps.check_inputs import check_parameters
    from components.steps.reporting import report_step_errors

    with report_step_errors("check_inputs"):
        return check_parameters("automatic", values)


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def check_prompted_inputs(
    geometry: str,
    prompts: str,
    start_date: str,
    end_date: str,
    lookback_days: int,
    reference_time: str,
    windows: str,
    model_type: str,
    model_uri: str,
    spatial_overlap: float,
    upsample: int,
    chip_anchor: str,
    max_cloud_cover: float,
    max_scenes: int,
    band_names: str,
    band_scaling: str,
    band_offset: str,
    chip_shards: int,
    backend: str,
    precision: str,
    refine_iterations: int,
    field_simplify_m: float,
    field_min_area_m2: float,
    field_max_area_m2: float,
    field_fill_holes_m2: float,
    field_opening_m: float,
    cropland_mask: str,
    cropland_min_share: float,
    cropland_classes: str,
    stac_url: str,
) -> str:
    """Check a ``segment_s2`` request (no network, no model); return it as JSON."""
    values = dict(locals())  # this task's parameters, by name: the pipeline's
    from components.steps.check_inputs import check_parameters
    from components.steps.reporting import report_step_errors

    with report_step_errors("check_inputs"):
        return check_parameters("prompted", values)


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def resolve_model(
    model: dsl.Output[dsl.Model], model_uri: str, model_type: str
) -> NamedTuple("ResolvedModel", [("pinned_uri", str), ("chip_size", int)]):  # type: ignore[valid-type]  # fmt: skip
    """Resolve, download and verify the model; record its lineage.

    Args:
        model: Lineage of the resolved version (name, version, sha256) as metadata.
        model_uri: ``models:/name@alias``, ``models:/name/N`` or a model directory;
            empty: ``models:/sam-<model_type>@champion``.
        model_type: The model type, for the default ``model_uri``.

    Returns:
        The pinned ``models:/name/N`` every shard uses, and the model's chip size.
    """
    import json
    from collections import namedtuple

    from components.steps.reporting import report_step_errors
    from components.steps.resolve_model import pin_model

    with report_step_errors("resolve_model"):
        info = pin_model(model_uri, model_type)
    model.metadata.update({k: v for k, v in info.items() if v is not None})
    with open(model.path, "w") as f:
        json.dump(info, f, indent=2)
    resolved = namedtuple("resolved", ["pinned_uri", "chip_size"])
    return resolved(info["pinned_uri"], info["chip_size"])


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def ingest_s2(
    request: str,
    scenes: dsl.Output[dsl.Dataset],
    schedule_time: str,
) -> int:
    """Ingest the clearest Sentinel-2 L2A scenes of the request's area and dates.

    Args:
        request: The checked request (``check_inputs``).
        scenes: Output folder: one COG per acquisition and ``manifest.json``.
        schedule_time: The run's scheduled time (KFP's placeholder): the end of a
            lookback window when the request names no reference time, so each
            recurring run covers its own window, and a re-run the same one.

    Returns:
        The number of scenes written.
    """
    from pathlib import Path

    from components.core.params import PipelineRequest
    from components.core.records import from_json
    from components.steps.ingest_s2 import ingest_request
    from components.steps.reporting import report_step_errors

    with report_step_errors("ingest_s2"):
        result = ingest_request(
            from_json(PipelineRequest, request),
            Path(scenes.path),
            schedule_time=schedule_time,
        )
    scenes.metadata["acquisitions"] = [s.key for s in result.scenes]
    scenes.metadata["crs"] = result.grid.crs
    scenes.metadata["width"] = result.grid.width
    scenes.metadata["height"] = result.grid.height
    scenes.metadata["bands"] = list(result.bands)
    scenes.metadata["manifest"] = result.manifest_path.name
    return len(result.scenes)


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def plan_chips(
    scenes: dsl.Input[dsl.Dataset],
    request: str,
    model_uri: str,
    chip_size: int,
) -> list[str]:
    """Lay out chips, compute each scene's stretch once, and shard the chips.

    Returns:
        One self-contained plan per shard (``ShardPlan`` as JSON text).
    """
    from pathlib import Path

    from components.steps.plan_chips import plan_request
    from components.steps.reporting import report_step_errors

    with report_step_errors("plan_chips"):
        return plan_request(Path(scenes.path), request, model_uri=model_uri, chip_size=chip_size)


@dsl.component(base_image=image("gpu"), install_kfp_package=False)
def segment_shard(
    scenes: dsl.Input[dsl.Dataset],
    shard: str,
    prompts: str,
    masks: dsl.Output[dsl.Dataset],
) -> str:
    """SAM over one shard's chips, with the shard's pinned model (GPU when present).

    Returns:
        JSON with the model lineage and the shard's counts.
    """
    import json
    from pathlib import Path

    from components.steps.reporting import report_step_errors
    from components.steps.segment import segment_to_file

    with report_step_errors("segment"):
        result = segment_to_file(Path(scenes.path), shard, prompts, Path(masks.path))
    masks.metadata.update({"masks": result["stats"]["masks_from_chips"], **result["lineage"]})
    return json.dumps(result)


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def merge_masks(
    scenes: dsl.Input[dsl.Dataset],
    parts: dsl.Input[list[dsl.Dataset]],
    shards: list[str],
    request: str,
    model_uri: str,
    segmentation_mask: dsl.Output[dsl.Dataset],
    polygons: dsl.Output[dsl.Dataset],
    fields: dsl.Output[dsl.Dataset],
    quicklook: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Merge every shard's masks per scene; write COGs, GeoParquet, fields, quick-looks."""
    from pathlib import Path

    from components.steps.merge_masks import VectorSinks, merge_and_publish
    from components.steps.reporting import report_step_errors

    with report_step_errors("merge_masks"):
        summaries, values = merge_and_publish(
            Path(scenes.path),
            [Path(p.path) for p in parts],
            shards,
            request,
            model_uri,
            Path(segmentation_mask.path),
            VectorSinks(Path(polygons.path), Path(fields.path)),
            Path(quicklook.path),
        )
    for name, value in values.items():
        metrics.log_metric(name, value)
    if summaries:
        segmentation_mask.metadata["model"] = summaries[0]["model"]
    segmentation_mask.metadata["acquisitions"] = [s["acquisition"] for s in summaries]


@dsl.component(base_image=image("export"), install_kfp_package=False)
def export_sam(
    model: dsl.Output[dsl.Model],
    model_type: str,
    checkpoint: str,
    random_weights: bool,
    seed: int,
    fp16: bool,
    int8: bool,
    alias: str,
    model_name: str,
) -> str:
    """Export SAM to ONNX, check parity against PyTorch, register it in MLflow.

    Args:
        model: The registered version's manifest, with name/version/uri as metadata.
        model_type: vit_b, vit_l or vit_h (SAM); sam2.1_hiera_tiny, _small, _base_plus
            or _large (SAM 2.1; sam2_hiera_* for SAM 2.0); vit_tiny for tests.
        checkpoint: Checkpoint path inside the container; empty: the official download.
        random_weights: Seeded random weights (tests and benchmarks only).
        seed: Seed for random_weights.
        fp16: Also export an fp16 encoder for GPUs (SAM only).
        int8: Also make an int8 encoder for CPUs, kept when its masks agree with fp32
            (SAM only).
        alias: Alias to point at the new version; empty: champion, which random
            weights never take unless named here.
        model_name: Registered model name; empty: sam-<model_type>.

    Returns:
        The model URI that pins the new version (``models:/<name>/<version>``).
    """
    from components.steps.reporting import report_step_errors
    from model_export.register import export_sam_step
    from model_export.weights import WeightsSource

    with report_step_errors("export_sam"):
        return export_sam_step(
            model.path,
            model.metadata,
            model_type=model_type,
            weights=WeightsSource.from_parameters(checkpoint, random_weights, seed),
            fp16=fp16,
            int8=int8,
            alias=alias,
            model_name=model_name,
        )


TASKS: dict[str, Any] = {
    "check_auto_inputs": check_auto_inputs,
    "check_prompted_inputs": check_prompted_inputs,
    "resolve_model": resolve_model,
    "ingest_s2": ingest_s2,
    "plan_chips": plan_chips,
    "segment_shard": segment_shard,
    "merge_masks": merge_masks,
    "export_sam": export_sam,
}
"""Every component by name."""
