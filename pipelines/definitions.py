"""The pipelines: ``segment_s2``, ``auto_segment_s2`` (FarmVibes' workflows) and ``export_sam``.

Shape of both segmentation pipelines (the front and back halves are shared)::

    check_inputs -> resolve_model ----------------------------+
                 -> ingest_s2 (retries) -> plan_chips -> ParallelFor(shard):
                                                            segment (GPU) -> merge_masks

``check_inputs`` rejects bad geometry, dates, prompts and parameters before anything
heavy starts and hands the checked request on. ``resolve_model`` pins the alias to
one version, so every shard uses the same model even if the alias moves mid-run.
Sinks keep FarmVibes' names: ``s2_raster`` (the scene COGs) and
``segmentation_mask``, plus ``polygons`` and ``fields`` (fiboa GeoParquet).

Defaults and parameter descriptions come from the one table
(:mod:`components.core.params`); the Kubeflow UI shows the generated docstrings.
FarmVibes parameters that mean nothing here are accepted and mapped: ``num_workers``
-> chips read ahead of the encoder; ``in_memory`` -> raster blocks kept in memory so
overlapping chips read them once. FarmVibes' ``pc_key`` is not a parameter: a value
would sit in the KFP database, the UI and every task log; the ingest task reads the
key from the ``PC_SDK_SUBSCRIPTION_KEY`` secret mounted in it (:mod:`pipelines.kubernetes`).

The pipeline functions are plain module-level definitions; :func:`build_pipelines`
decorates them for a target: a cluster (KFP's scheduled-time placeholder, Kubernetes
settings from :mod:`pipelines.kubernetes`, one call per task with its resource
profile) or ``kfp.local`` (which can resolve neither).
"""

# No ``from __future__ import annotations``: KFP reads the pipelines' real annotations.
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl

from components import tasks
from components.core.params import KFP, pipeline_docstring
from pipelines.cluster_settings import ClusterSettings, CpuTaskKind
from pipelines.kubernetes import configure_cpu_task, configure_inference_task


class Sinks(NamedTuple):
    """The pipelines' outputs, named as FarmVibes' sinks (plus polygons and fields)."""

    s2_raster: dsl.Dataset
    segmentation_mask: dsl.Dataset
    polygons: dsl.Dataset
    fields: dsl.Dataset


@dataclass(frozen=True)
class Target:
    """What a build is for: a cluster's settings, or ``kfp.local`` (``cluster=None``)."""

    schedule_time: str
    """What ingest takes as the scheduled time: KFP's placeholder on a cluster, "" locally."""
    cluster: ClusterSettings | None


_TARGET: ContextVar[Target] = ContextVar("pipeline_target")


def _cpu(task: Any, kind: CpuTaskKind, name: str, *, mlflow: bool | None = None) -> Any:
    cluster = _TARGET.get().cluster
    if cluster is not None:
        configure_cpu_task(task, cluster, kind=kind, mlflow=mlflow)
    return task.set_display_name(name)


def _front(check: Any, model_uri: Any, model_type: Any) -> tuple[Any, Any, Any]:
    """The first half of both pipelines: (resolve model, ingest) -> plan, after the check."""
    _cpu(check, "light", "check inputs")
    model = tasks.resolve_model(model_uri=model_uri, model_type=model_type).after(check)
    _cpu(model, "light", "resolve model", mlflow=True)
    ingest = tasks.ingest_s2(request=check.output, schedule_time=_TARGET.get().schedule_time)
    _cpu(ingest, "ingest", "ingest Sentinel-2")
    plan = tasks.plan_chips(
        scenes=ingest.outputs["scenes"],
        request=check.output,
        model_uri=model.outputs["pinned_uri"],
        chip_size=model.outputs["chip_size"],
    )
    return model, ingest, _cpu(plan, "light", "plan chips")


def _back(check: Any, prompts: Any, name: str, front: tuple[Any, Any]) -> Sinks:
    """The second half: segment each shard (GPU), then merge into the sinks.

    ``front``: the pipeline's ``model_uri`` and ``model_type``.
    """
    model, ingest, plan = _front(check, *front)
    with dsl.ParallelFor(plan.output, name="shards") as shard:
        segment = tasks.segment_shard(
            scenes=ingest.outputs["scenes"], shard=shard, prompts=prompts
        ).set_display_name(name)
        cluster = _TARGET.get().cluster
        if cluster is not None:
            configure_inference_task(segment, cluster)
    merge = tasks.merge_masks(
        scenes=ingest.outputs["scenes"],
        parts=dsl.Collected(segment.outputs["masks"]),
        shards=plan.output,
        request=check.output,
        model_uri=model.outputs["pinned_uri"],
    )
    _cpu(merge, "merge", "merge masks")
    return Sinks(
        s2_raster=ingest.outputs["scenes"],
        segmentation_mask=merge.outputs["segmentation_mask"],
        polygons=merge.outputs["polygons"],
        fields=merge.outputs["fields"],
    )


def segment_s2(
    geometry: str,
    prompts: str,
    start_date: str = KFP.start_date,
    end_date: str = KFP.end_date,
    lookback_days: int = KFP.lookback_days,
    reference_time: str = KFP.reference_time,
    windows: str = KFP.windows,
    model_type: str = KFP.model_type,
    spatial_overlap: float = KFP.spatial_overlap,
    upsample: int = KFP.upsample,
    chip_anchor: str = KFP.chip_anchor,
    model_uri: str = KFP.model_uri,
    max_cloud_cover: float = KFP.max_cloud_cover,
    max_scenes: int = KFP.max_scenes,
    band_names: str = KFP.band_names,
    band_scaling: str = KFP.band_scaling,
    band_offset: str = KFP.band_offset,
    chip_shards: int = KFP.chip_shards,
    backend: str = KFP.backend,
    precision: str = KFP.precision,
    refine_iterations: int = KFP.refine_iterations,
    field_simplify_m: float = KFP.field_simplify_m,
    field_min_area_m2: float = KFP.field_min_area_m2,
    field_max_area_m2: float = KFP.field_max_area_m2,
    field_fill_holes_m2: float = KFP.field_fill_holes_m2,
    field_opening_m: float = KFP.field_opening_m,
    cropland_mask: str = KFP.cropland_mask,
    cropland_min_share: float = KFP.cropland_min_share,
    cropland_classes: str = KFP.cropland_classes,
    stac_url: str = KFP.stac_url,
) -> Sinks:
    """Segment fields in Sentinel-2 imagery from prompts."""  # Args: generated, see DEFINITIONS
    parameters = dict(locals())  # the check task takes the pipeline's parameters, by name
    check = tasks.check_prompted_inputs(**parameters)
    return _back(check, prompts, "segment prompts", (model_uri, model_type))


def auto_segment_s2(
    geometry: str,
    start_date: str = KFP.start_date,
    end_date: str = KFP.end_date,
    lookback_days: int = KFP.lookback_days,
    reference_time: str = KFP.reference_time,
    windows: str = KFP.windows,
    model_type: str = KFP.model_type,
    spatial_overlap: float = KFP.spatial_overlap,
    points_per_side: int = KFP.points_per_side,
    n_crop_layers: int = KFP.n_crop_layers,
    crop_overlap_ratio: float = KFP.crop_overlap_ratio,
    crop_n_points_downscale_factor: int = KFP.crop_n_points_downscale_factor,
    pred_iou_thresh: float = KFP.pred_iou_thresh,
    stability_score_thresh: float = KFP.stability_score_thresh,
    stability_score_offset: float = KFP.stability_score_offset,
    points_per_batch: int = KFP.points_per_batch,
    num_workers: int = KFP.num_workers,
    in_memory: bool = KFP.in_memory,
    chip_nms_thr: float = KFP.chip_nms_thr,
    mask_nms_thr: float = KFP.mask_nms_thr,
    model_uri: str = KFP.model_uri,
    max_cloud_cover: float = KFP.max_cloud_cover,
    max_scenes: int = KFP.max_scenes,
    band_names: str = KFP.band_names,
    band_scaling: str = KFP.band_scaling,
    band_offset: str = KFP.band_offset,
    min_mask_region_area: int = KFP.min_mask_region_area,
    mask_threshold: float = KFP.mask_threshold,
    multimask_output: bool = KFP.multimask_output,
    use_m2m: bool = KFP.use_m2m,
    upsample: int = KFP.upsample,
    chip_anchor: str = KFP.chip_anchor,
    chip_shards: int = KFP.chip_shards,
    backend: str = KFP.backend,
    precision: str = KFP.precision,
    field_simplify_m: float = KFP.field_simplify_m,
    field_min_area_m2: float = KFP.field_min_area_m2,
    field_max_area_m2: float = KFP.field_max_area_m2,
    field_fill_holes_m2: float = KFP.field_fill_holes_m2,
    field_opening_m: float = KFP.field_opening_m,
    cropland_mask: str = KFP.cropland_mask,
    cropland_min_share: float = KFP.cropland_min_share,
    cropland_classes: str = KFP.cropland_classes,
    stac_url: str = KFP.stac_url,
) -> Sinks:
    """Segment every object (field) in Sentinel-2 imagery automatically."""  # Args: generated
    parameters = dict(locals())  # the check task takes the pipeline's parameters, by name
    check = tasks.check_auto_inputs(**parameters)
    return _back(check, "", "segment automatically", (model_uri, model_type))


def export_sam(
    model_type: str = KFP.model_type,
    checkpoint: str = "",
    random_weights: bool = False,
    seed: int = 0,
    fp16: bool = False,
    int8: bool = False,
    alias: str = "",
    model_name: str = "",
) -> dsl.Model:
    """Register a SAM model version from inside the cluster.

    Args:
        model_type: vit_b, vit_l or vit_h (SAM); sam2.1_hiera_tiny, sam2.1_hiera_small,
            sam2.1_hiera_base_plus or sam2.1_hiera_large (SAM 2.1; sam2_hiera_* for the
            SAM 2.0 weights).
        checkpoint: Checkpoint path inside the export container; empty: the official
            checkpoint, downloaded and sha256-checked (SAM 2: its digest recorded).
        random_weights: Seeded random weights (tests and benchmarks only).
        seed: Seed for random_weights.
        fp16: Also export an fp16 encoder for GPUs (SAM only).
        int8: Also make an int8 encoder for CPUs (calibrated on seeded field-like
            mosaics), kept only when its masks agree with fp32's (SAM only).
        alias: Alias for the new version; empty: champion (never for random weights).
        model_name: Registered model name; empty: sam-<model_type>.
    """
    task = tasks.export_sam(
        model_type=model_type, checkpoint=checkpoint, random_weights=random_weights,
        seed=seed, fp16=fp16, int8=int8, alias=alias, model_name=model_name,
    )  # fmt: skip
    return _cpu(task, "export", "export and register SAM").outputs["model"]


@dataclass(frozen=True)
class PipelineDefinition:
    """A pipeline function with its Kubeflow name, description and UI help."""

    function: Callable[..., Any]
    name: str
    description: str
    generated_args: bool = True
    """Whether the docstring's ``Args`` come from the table (the segmentation pipelines)."""

    def decorated(self) -> Any:
        """The function as a KFP pipeline (builds its graph now, for the current target)."""
        if self.generated_args:
            summary = (self.function.__doc__ or "").strip().splitlines()[0]
            names = list(inspect.signature(self.function).parameters)
            self.function.__doc__ = pipeline_docstring(summary, names)
        return dsl.pipeline(name=self.name, description=self.description)(self.function)


DEFINITIONS: dict[str, PipelineDefinition] = {
    "segment_s2": PipelineDefinition(
        segment_s2,
        "segment-s2",
        "Downloads Sentinel-2 L2A over an area from the Planetary Computer and segments it "
        "with Segment Anything from point and box prompts (FarmVibes' segment_s2).",
    ),
    "auto_segment_s2": PipelineDefinition(
        auto_segment_s2,
        "auto-segment-s2",
        "Downloads Sentinel-2 L2A over an area from the Planetary Computer and segments "
        "everything with Segment Anything's automatic mask generator (FarmVibes' "
        "auto_segment_s2).",
    ),
    "export_sam": PipelineDefinition(
        export_sam,
        "export-sam",
        "Exports a SAM checkpoint to ONNX, checks parity and registers it in MLflow.",
        generated_args=False,
    ),
}
"""Pipelines by the name of their compiled file (``pipelines/compiled/<name>.yaml``)."""


def build_pipelines(target: Target) -> dict[str, Any]:
    """Every pipeline, built for ``target``."""
    token = _TARGET.set(target)
    try:
        return {name: d.decorated() for name, d in DEFINITIONS.items()}
    finally:
        _TARGET.reset(token)


def cluster_pipelines(settings: ClusterSettings | None = None) -> dict[str, Any]:
    """The pipelines as compiled for a cluster with ``settings`` (default: the defaults).

    On a cluster ingest takes KFP's ``PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER``, so
    each recurring run's lookback window ends at its own scheduled time (KFP v2 does
    not expand v1's ``[[ScheduledTime]]`` macros).
    """
    return build_pipelines(
        Target(dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, settings or ClusterSettings())
    )


def local_pipelines() -> dict[str, Any]:
    """The pipelines for ``kfp.local``: no Kubernetes settings, "now" as scheduled time.

    kfp.local cannot resolve KFP's scheduled-time placeholder.
    """
    return build_pipelines(Target("", None))
