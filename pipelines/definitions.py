"""The pipelines: ``segment_s2``, ``auto_segment_s2`` (FarmVibes' workflows) and ``export_sam``.

Shape of both segmentation pipelines::

    check_inputs -> resolve_model ----------------------------+
                 -> ingest_s2 (retries) -> plan_chips -> ParallelFor(shard):
                                                            segment_* (GPU) -> merge_masks

``check_inputs`` rejects bad geometry, dates, prompts and parameters before anything
heavy starts. ``resolve_model`` pins the alias to one version, so every shard uses
the same model even if the alias moves mid-run. Sinks keep FarmVibes' names:
``s2_raster`` (the scene COGs) and ``segmentation_mask``, plus ``polygons``.

FarmVibes parameters that mean nothing here are accepted and mapped: ``num_workers``
-> chips read ahead of the encoder; ``in_memory`` -> raster blocks kept in memory so
overlapping chips read them once. ``pc_key`` works but is visible in the KFP UI:
prefer the ``PC_SDK_SUBSCRIPTION_KEY`` secret.

Kubernetes settings (GPU, tolerations, node selectors, resources, secrets, cache,
retries, timeouts) come from :mod:`pipelines.kubernetes`: one call per task, with the
task's resource profile. ``s2sam compile --settings FILE`` compiles a cluster's own copy.
"""

from typing import Any, NamedTuple

from kfp import dsl

from components.steps.check_inputs import check_inputs
from components.steps.export_sam import export_sam as export_sam_component
from components.steps.ingest_s2 import ingest_s2
from components.steps.merge_masks import merge_masks
from components.steps.plan_chips import plan_chips
from components.steps.resolve_model import resolve_model
from components.steps.segment import segment_auto, segment_prompts
from pipelines.kubernetes import (
    ClusterSettings,
    CpuTaskKind,
    configure_cpu_task,
    configure_inference_task,
)


class Sinks(NamedTuple):
    """The pipelines' outputs, named as FarmVibes' sinks (plus the polygons)."""

    s2_raster: dsl.Dataset
    segmentation_mask: dsl.Dataset
    polygons: dsl.Dataset


def build_pipelines(schedule_time: str, cluster: ClusterSettings | None) -> dict[str, Any]:
    """The three pipelines; ``schedule_time`` is what ingest takes as the scheduled time.

    On a cluster that is KFP's ``PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER``, so each
    recurring run's lookback window ends at its own scheduled time (KFP v2 does not
    expand v1's ``[[ScheduledTime]]`` macros). ``kfp.local`` cannot resolve that
    placeholder, so local runs are built with an empty value: "now". ``cluster``: the
    Kubernetes settings written into the compiled YAML; ``None`` for ``kfp.local``,
    which has no secrets, volumes or GPUs to request.
    """

    def cpu(task: Any, kind: CpuTaskKind, **secrets: bool) -> Any:
        if cluster is not None:
            configure_cpu_task(task, cluster, kind=kind, **secrets)
        return task

    def inference(task: Any) -> Any:
        if cluster is not None:
            configure_inference_task(task, cluster)
        return task

    def front(mode: str, p: dict[str, Any], check_extra: dict[str, Any]) -> tuple[Any, Any, Any]:
        """The first half of both pipelines: check -> (resolve model, ingest) -> plan."""
        check = check_inputs(
            mode=mode, geometry=p["geometry"], prompts=p.get("prompts", ""),
            start_date=p["start_date"], end_date=p["end_date"],
            lookback_days=p["lookback_days"], reference_time=p["reference_time"],
            model_uri=p["model_uri"], spatial_overlap=p["spatial_overlap"],
            chip_shards=p["chip_shards"], max_cloud_cover=p["max_cloud_cover"],
            max_scenes=p["max_scenes"], band_names=p["band_names"], **check_extra,
        ).set_display_name("check inputs")  # fmt: skip
        cpu(check, "light")
        model = resolve_model(model_uri=p["model_uri"], model_type=p["model_type"])
        cpu(model.after(check).set_display_name("resolve model"), "light", mlflow=True)
        ingest = ingest_s2(
            geometry=p["geometry"], start_date=p["start_date"], end_date=p["end_date"],
            lookback_days=p["lookback_days"], reference_time=p["reference_time"],
            bands=p["band_names"], max_cloud_cover=p["max_cloud_cover"],
            max_scenes=p["max_scenes"], stac_url=p["stac_url"], schedule_time=schedule_time,
            pc_key=p["pc_key"],
        )  # fmt: skip
        cpu(ingest.after(check).set_display_name("ingest Sentinel-2"), "ingest")
        plan = plan_chips(
            scenes=ingest.outputs["scenes"], mode=mode, chip_size=model.outputs["chip_size"],
            model_uri=model.outputs["pinned_uri"], prompts=p.get("prompts", ""),
            spatial_overlap=p["spatial_overlap"], chip_shards=p["chip_shards"],
            band_names=p["band_names"], band_scaling=p["band_scaling"],
            band_offset=p["band_offset"],
        ).set_display_name("plan chips")  # fmt: skip
        return model, ingest, cpu(plan, "light")

    def back(mode: str, p: dict[str, Any], model: Any, ingest: Any, segment: Any) -> Sinks:
        """The second half of both pipelines: merge -> the sinks."""
        merge = merge_masks(
            scenes=ingest.outputs["scenes"], parts=dsl.Collected(segment.outputs["masks"]),
            mode=mode, model_uri=model.outputs["pinned_uri"], prompts=p.get("prompts", ""),
            spatial_overlap=p["spatial_overlap"], mask_nms_thr=p.get("mask_nms_thr", 0.5),
            band_names=p["band_names"], band_scaling=p["band_scaling"],
            band_offset=p["band_offset"],
        ).set_display_name("merge masks")  # fmt: skip
        cpu(merge, "merge")
        return Sinks(
            s2_raster=ingest.outputs["scenes"],
            segmentation_mask=merge.outputs["segmentation_mask"],
            polygons=merge.outputs["polygons"],
        )

    @dsl.pipeline(
        name="segment-s2",
        description=(
            "Downloads Sentinel-2 L2A over an area from the Planetary Computer and segments it "
            "with Segment Anything from point and box prompts (FarmVibes' segment_s2)."
        ),
    )
    def segment_s2(
        geometry: str,
        prompts: str,
        start_date: str = "",
        end_date: str = "",
        lookback_days: int = 0,
        reference_time: str = "",
        model_type: str = "vit_b",
        spatial_overlap: float = 0.5,
        pc_key: str = "",
        model_uri: str = "",
        max_cloud_cover: float = 30.0,
        max_scenes: int = 1,
        band_names: str = "B04,B03,B02",
        band_scaling: str = "",
        band_offset: str = "",
        chip_shards: int = 4,
        refine_iterations: int = 0,
        stac_url: str = "",
    ) -> Sinks:
        """Segment fields in Sentinel-2 imagery from prompts.

        Args:
            geometry: Area of interest as GeoJSON text (lon/lat Polygon, MultiPolygon,
                Feature or FeatureCollection): FarmVibes' user_input geometry.
            prompts: GeoJSON FeatureCollection of prompts: properties label (1 foreground,
                0 background) and prompt_id; Point/MultiPoint = clicks, Polygon = box.
            start_date: First day to search (YYYY-MM-DD); with end_date.
            end_date: Last day to search (YYYY-MM-DD), included.
            lookback_days: Instead of dates: search this many days before the run's
                (scheduled) time. For recurring runs.
            reference_time: End of the lookback window (ISO time); empty: the run's
                scheduled time, or now.
            model_type: SAM model type (vit_b, vit_l, vit_h), for the default model_uri.
            spatial_overlap: Minimum overlap between neighbouring 1024 px chips, in [0, 1).
            pc_key: Planetary Computer key (FarmVibes). Leave empty and mount the
                PC_SDK_SUBSCRIPTION_KEY secret instead: parameters are visible in the UI.
            model_uri: Registered model to use: models:/name@alias or models:/name/N; empty:
                models:/sam-<model_type>@champion.
            max_cloud_cover: Tile-level cloud cover limit for the search, in %.
            max_scenes: How many of the clearest acquisitions to segment.
            band_names: Bands used as red, green, blue (comma-separated).
            band_scaling: FarmVibes band_scaling: 1 or 3 comma-separated values; empty: DN/10000.
            band_offset: FarmVibes band_offset: 1 or 3 values; empty: the baseline's offset.
            chip_shards: Chips are split into this many parallel inference tasks (GPU pods).
            refine_iterations: Extra decoder passes that feed SAM's mask back as a prompt.
            stac_url: STAC API to search; empty: the Planetary Computer.
        """
        p = dict(locals())
        model, ingest, plan = front("prompted", p, {})
        with dsl.ParallelFor(plan.output, name="shards") as shard:
            segment = segment_prompts(
                scenes=ingest.outputs["scenes"], shard=shard, prompts=prompts,
                refine_iterations=refine_iterations,
            )  # fmt: skip
            inference(segment.set_display_name("segment prompts"))
        return back("prompted", p, model, ingest, segment)

    @dsl.pipeline(
        name="auto-segment-s2",
        description=(
            "Downloads Sentinel-2 L2A over an area from the Planetary Computer and segments "
            "everything with Segment Anything's automatic mask generator (FarmVibes' "
            "auto_segment_s2)."
        ),
    )
    def auto_segment_s2(
        geometry: str,
        start_date: str = "",
        end_date: str = "",
        lookback_days: int = 0,
        reference_time: str = "",
        model_type: str = "vit_b",
        spatial_overlap: float = 0.5,
        points_per_side: int = 16,
        n_crop_layers: int = 0,
        crop_overlap_ratio: float = 0.0,
        crop_n_points_downscale_factor: int = 1,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        points_per_batch: int = 16,
        num_workers: int = 0,
        in_memory: bool = True,
        chip_nms_thr: float = 0.7,
        mask_nms_thr: float = 0.5,
        pc_key: str = "",
        model_uri: str = "",
        max_cloud_cover: float = 30.0,
        max_scenes: int = 1,
        band_names: str = "B04,B03,B02",
        band_scaling: str = "",
        band_offset: str = "",
        min_mask_region_area: int = 0,
        chip_shards: int = 4,
        stac_url: str = "",
    ) -> Sinks:
        """Segment every object (field) in Sentinel-2 imagery automatically.

        Args:
            geometry: Area of interest as GeoJSON text (lon/lat Polygon, MultiPolygon,
                Feature or FeatureCollection): FarmVibes' user_input geometry.
            start_date: First day to search (YYYY-MM-DD); with end_date.
            end_date: Last day to search (YYYY-MM-DD), included.
            lookback_days: Instead of dates: search this many days before the run's
                (scheduled) time. For recurring runs.
            reference_time: End of the lookback window (ISO time); empty: the run's
                scheduled time, or now.
            model_type: SAM model type (vit_b, vit_l, vit_h), for the default model_uri.
            spatial_overlap: Minimum overlap between neighbouring 1024 px chips, in [0, 1).
            points_per_side: Points per side of SAM's prompt grid in each chip.
            n_crop_layers: Extra layers of smaller crops, each re-encoded (SAM's crop_n_layers).
            crop_overlap_ratio: Overlap between crops of a layer.
            crop_n_points_downscale_factor: Grid points shrink by this factor per crop layer.
            pred_iou_thresh: Keep masks whose predicted IoU exceeds this.
            stability_score_thresh: Keep masks whose stability score reaches this.
            stability_score_offset: Logit offset used for the stability score.
            points_per_batch: Prompts decoded per decoder call.
            num_workers: FarmVibes' data loader workers: here, chips read ahead of the
                encoder (at least 2).
            in_memory: FarmVibes' whole-raster read: here, raster blocks kept in memory so
                overlapping chips read each block once.
            chip_nms_thr: Box NMS threshold among one chip's masks.
            mask_nms_thr: Mask NMS threshold across chips, after the seam merge.
            pc_key: Planetary Computer key (FarmVibes). Leave empty and mount the
                PC_SDK_SUBSCRIPTION_KEY secret instead: parameters are visible in the UI.
            model_uri: Registered model to use: models:/name@alias or models:/name/N; empty:
                models:/sam-<model_type>@champion.
            max_cloud_cover: Tile-level cloud cover limit for the search, in %.
            max_scenes: How many of the clearest acquisitions to segment.
            band_names: Bands used as red, green, blue (comma-separated).
            band_scaling: FarmVibes band_scaling: 1 or 3 comma-separated values; empty: DN/10000.
            band_offset: FarmVibes band_offset: 1 or 3 values; empty: the baseline's offset.
            min_mask_region_area: Fill holes and drop islands smaller than this (pixels).
            chip_shards: Chips are split into this many parallel inference tasks (GPU pods).
            stac_url: STAC API to search; empty: the Planetary Computer.
        """
        p = dict(locals())
        amg = {
            "points_per_side": points_per_side, "n_crop_layers": n_crop_layers,
            "crop_overlap_ratio": crop_overlap_ratio,
            "crop_n_points_downscale_factor": crop_n_points_downscale_factor,
            "pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh,
            "stability_score_offset": stability_score_offset,
            "points_per_batch": points_per_batch, "chip_nms_thr": chip_nms_thr,
        }  # fmt: skip
        model, ingest, plan = front("automatic", p, {"mask_nms_thr": mask_nms_thr, **amg})
        with dsl.ParallelFor(plan.output, name="shards") as shard:
            segment = segment_auto(
                scenes=ingest.outputs["scenes"], shard=shard, **amg,
                min_mask_region_area=min_mask_region_area, num_workers=num_workers,
                in_memory=in_memory,
            )  # fmt: skip
            inference(segment.set_display_name("segment automatically"))
        return back("automatic", p, model, ingest, segment)

    @dsl.pipeline(
        name="export-sam",
        description="Exports a SAM checkpoint to ONNX, checks parity and registers it in MLflow.",
    )
    def export_sam(
        model_type: str = "vit_b",
        checkpoint: str = "",
        random_weights: bool = False,
        seed: int = 0,
        fp16: bool = False,
        alias: str = "",
        model_name: str = "",
    ) -> dsl.Model:
        """Register a SAM model version from inside the cluster.

        Args:
            model_type: vit_b, vit_l or vit_h.
            checkpoint: Checkpoint path inside the export container; empty: the official
                checkpoint, downloaded and sha256-checked.
            random_weights: Seeded random weights (tests and benchmarks only).
            seed: Seed for random_weights.
            fp16: Also export an fp16 encoder for GPUs.
            alias: Alias for the new version; empty: champion (never for random weights).
            model_name: Registered model name; empty: sam-<model_type>.
        """
        task = export_sam_component(
            model_type=model_type, checkpoint=checkpoint, random_weights=random_weights,
            seed=seed, fp16=fp16, alias=alias, model_name=model_name,
        ).set_display_name("export and register SAM")  # fmt: skip
        return cpu(task, "export").outputs["model"]

    return {
        "segment_s2": segment_s2,
        "auto_segment_s2": auto_segment_s2,
        "export_sam": export_sam,
    }


def cluster_pipelines(settings: ClusterSettings | None = None) -> dict[str, Any]:
    """The pipelines as compiled for a cluster with ``settings`` (default: the defaults)."""
    return build_pipelines(
        dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, settings or ClusterSettings()
    )


PIPELINES = cluster_pipelines()
"""Pipelines by the name of their compiled file (``pipelines/compiled/<name>.yaml``)."""
LOCAL_PIPELINES = build_pipelines("", None)
"""The same pipelines for ``kfp.local``, which cannot resolve the scheduled-time placeholder."""
segment_s2 = PIPELINES["segment_s2"]
auto_segment_s2 = PIPELINES["auto_segment_s2"]
export_sam = PIPELINES["export_sam"]
