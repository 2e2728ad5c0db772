"""``segment_auto`` and ``segment_prompts``: SAM over one shard of chips (GPU tasks)."""

from typing import Any

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("gpu"), install_kfp_package=False)
def segment_auto(
    scenes: dsl.Input[dsl.Dataset],
    shard: dict[str, Any],
    masks: dsl.Output[dsl.Dataset],
    points_per_side: int = 16,
    n_crop_layers: int = 0,
    crop_overlap_ratio: float = 0.0,
    crop_n_points_downscale_factor: int = 1,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    stability_score_offset: float = 1.0,
    points_per_batch: int = 16,
    chip_nms_thr: float = 0.7,
    min_mask_region_area: int = 0,
    encoder_batch_size: int = 0,
    num_workers: int = 0,
    in_memory: bool = True,
) -> str:
    """Automatic masks (SAM's point grid) for the shard's chips, with the shard's model.

    Returns:
        JSON with the model lineage and the shard's counts.
    """
    import json
    from pathlib import Path

    from components.inference.automatic import AmgParams
    from components.workflow import report_step_errors, segment_shard

    with report_step_errors("segment_auto"):
        result = segment_shard(
            Path(scenes.path),
            shard,
            "automatic",
            shard["model_uri"],
            Path(masks.path),
            amg_params=AmgParams(
                points_per_side=points_per_side,
                n_crop_layers=n_crop_layers,
                crop_overlap_ratio=crop_overlap_ratio,
                crop_n_points_downscale_factor=crop_n_points_downscale_factor,
                pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh,
                stability_score_offset=stability_score_offset,
                points_per_batch=points_per_batch,
                chip_nms_thr=chip_nms_thr,
                min_mask_region_area=min_mask_region_area,
            ),
            encoder_batch_size=encoder_batch_size,
            read_ahead=num_workers,
            in_memory=in_memory,
        )
    masks.metadata.update({"masks": result["stats"]["masks_from_chips"], **result["lineage"]})
    return json.dumps(result)


@dsl.component(base_image=image("gpu"), install_kfp_package=False)
def segment_prompts(
    scenes: dsl.Input[dsl.Dataset],
    shard: dict[str, Any],
    prompts: str,
    masks: dsl.Output[dsl.Dataset],
    refine_iterations: int = 0,
    encoder_batch_size: int = 0,
) -> str:
    """One mask per prompt group in each of the shard's chips, with the shard's model.

    Returns:
        JSON with the model lineage and the shard's counts.
    """
    import json
    from pathlib import Path

    from components.inference.prompted import PromptParams
    from components.workflow import report_step_errors, segment_shard

    with report_step_errors("segment_prompts"):
        result = segment_shard(
            Path(scenes.path),
            shard,
            "prompted",
            shard["model_uri"],
            Path(masks.path),
            prompts=prompts,
            prompt_params=PromptParams(refine_iterations=refine_iterations),
            encoder_batch_size=encoder_batch_size,
        )
    masks.metadata.update({"masks": result["stats"]["masks_from_chips"], **result["lineage"]})
    return json.dumps(result)
