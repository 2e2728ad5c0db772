"""``check_inputs``: every cheap check first, so bad input fails before heavy work."""

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def check_inputs(
    mode: str,
    geometry: str,
    prompts: str = "",
    start_date: str = "",
    end_date: str = "",
    lookback_days: int = 0,
    reference_time: str = "",
    model_uri: str = "",
    spatial_overlap: float = 0.5,
    mask_nms_thr: float = 0.5,
    chip_shards: int = 1,
    max_cloud_cover: float = 30.0,
    max_scenes: int = 1,
    band_names: str = "B04,B03,B02",
    points_per_side: int = 16,
    n_crop_layers: int = 0,
    crop_overlap_ratio: float = 0.0,
    crop_n_points_downscale_factor: int = 1,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    stability_score_offset: float = 1.0,
    points_per_batch: int = 16,
    chip_nms_thr: float = 0.7,
) -> str:
    """Validate geometry, dates, prompts and parameters (no network, no model).

    Returns:
        A JSON summary of the request (area, time range, prompt ids).
    """
    import json

    from components.inference.automatic import AmgParams
    from components.workflow import check_request, report_step_errors

    with report_step_errors("check_inputs"):
        amg = AmgParams(
            points_per_side=points_per_side,
            n_crop_layers=n_crop_layers,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            points_per_batch=points_per_batch,
            chip_nms_thr=chip_nms_thr,
        )
        summary = check_request(
            mode,  # type: ignore[arg-type]
            geometry,
            prompts=prompts,
            start_date=start_date,
            end_date=end_date,
            lookback_days=lookback_days,
            reference_time=reference_time,
            model_uri=model_uri,
            amg_params=amg,
            spatial_overlap=spatial_overlap,
            mask_nms_thr=mask_nms_thr,
            chip_shards=chip_shards,
            max_cloud_cover=max_cloud_cover,
            max_scenes=max_scenes,
            band_names=band_names,
        )
    return json.dumps(summary)
