"""``plan_chips``: the chip grid of every scene, split into shards for the fan-out."""

from typing import Any

from kfp import dsl

from components.images import image


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def plan_chips(
    scenes: dsl.Input[dsl.Dataset],
    mode: str,
    chip_size: int,
    model_uri: str,
    prompts: str = "",
    spatial_overlap: float = 0.5,
    chip_shards: int = 1,
    band_names: str = "B04,B03,B02",
    band_scaling: str = "",
    band_offset: str = "",
) -> list[dict[str, Any]]:
    """Lay out chips, compute each scene's stretch once, and shard the chips.

    Returns:
        One item per shard: the pinned model, its scenes, their chips and per-scene
        facts. Items are self-contained: the inference tasks need nothing else from
        upstream tasks (kfp.local, as of kfp 2.17, hands a loop body the loop item in
        place of any upstream task's parameter output).
    """
    from pathlib import Path

    from components.workflow import (
        parse_floats,
        plan_segmentation,
        radiometry_params,
        report_step_errors,
    )

    with report_step_errors("plan_chips"):
        shards = plan_segmentation(
            Path(scenes.path),
            mode,  # type: ignore[arg-type]
            prompts=prompts,
            spatial_overlap=spatial_overlap,
            chip_shards=chip_shards,
            chip_size=chip_size,
            radiometry=radiometry_params(
                band_names, parse_floats(band_scaling), parse_floats(band_offset)
            ),
        )
    return [{**shard, "model_uri": model_uri} for shard in shards]
