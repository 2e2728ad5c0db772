"""``merge_masks``: cross-chip merge and the run's sinks, quick-look and metrics."""

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def merge_masks(
    scenes: dsl.Input[dsl.Dataset],
    parts: dsl.Input[list[dsl.Dataset]],
    mode: str,
    model_uri: str,
    segmentation_mask: dsl.Output[dsl.Dataset],
    polygons: dsl.Output[dsl.Dataset],
    quicklook: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
    prompts: str = "",
    spatial_overlap: float = 0.5,
    mask_nms_thr: float = 0.5,
    band_names: str = "B04,B03,B02",
    band_scaling: str = "",
    band_offset: str = "",
    parameters: str = "{}",
) -> None:
    """Merge every shard's masks per scene; write COGs, GeoParquet, quick-looks, metrics."""
    import json
    from pathlib import Path

    from components.workflow import (
        merge_segmentation,
        parse_floats,
        publish_merge,
        radiometry_params,
        report_step_errors,
    )

    with report_step_errors("merge_masks"):
        summaries = merge_segmentation(
            Path(scenes.path),
            [Path(p.path) for p in parts],
            mode,  # type: ignore[arg-type]
            model_uri,
            Path(segmentation_mask.path),
            prompts=prompts,
            spatial_overlap=spatial_overlap,
            mask_nms_thr=mask_nms_thr,
            radiometry=radiometry_params(
                band_names, parse_floats(band_scaling), parse_floats(band_offset)
            ),
            parameters=json.loads(parameters),
        )
        values = publish_merge(
            summaries, Path(segmentation_mask.path), Path(polygons.path), Path(quicklook.path)
        )
    for name, value in values.items():
        metrics.log_metric(name, value)
    if summaries:
        segmentation_mask.metadata["model"] = summaries[0]["model"]
    segmentation_mask.metadata["acquisitions"] = [s["acquisition"] for s in summaries]
