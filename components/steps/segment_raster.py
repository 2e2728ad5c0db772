"""``s2sam segment-raster``: plan -> segment -> merge of one local raster, in this process.

The same step functions the pipelines run, with one shard: a local run and a
pipeline run of the same scene and settings give the same masks. Inputs are checked
in the order a user can fix them: parameters (checked when the settings are built),
the raster and its bands, the prompts, then the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components.core.chips import ChipGrid
from components.core.merge import SceneMask
from components.core.params import SegmentationSettings
from components.inference.backends import choose_engine
from components.inference.model import load_model
from components.inference.shard import Progress, RunStats
from components.inference.strategy import scene_strategy
from components.io.outputs import OutputFiles
from components.io.registry import default_model_uri, resolve_model
from components.steps.merge_masks import merge_scene
from components.steps.plan_chips import SceneSource, open_planned_scene, plan_segmentation
from components.steps.segment import segment_shard


@dataclass(frozen=True)
class RasterResult:
    """What :func:`segment_raster` produced."""

    files: OutputFiles
    summary: dict[str, Any]
    stats: RunStats
    lineage: dict[str, Any]
    masks: list[SceneMask]
    """The merged masks, in instance id order."""
    grid: ChipGrid


def segment_raster(
    raster: Path,
    output_dir: Path,
    settings: SegmentationSettings,
    *,
    prompts: str = "",
    model_uri: str = "",
    model_type: str = "vit_b",
    providers: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> RasterResult:
    """Segment one local raster end to end and write its outputs into ``output_dir``.

    Raises:
        InputError: A bad parameter, raster, band choice, prompt file or model URI.
    """
    raster = Path(raster)
    source = SceneSource(raster.stem, raster.parent, raster.name)
    settings = replace(settings, execution=replace(settings.execution, chip_shards=1))
    scene_strategy(settings, prompts, open_planned_scene(source, settings))  # before the model
    uri = model_uri or default_model_uri(model_type)
    execution = settings.execution
    engine = choose_engine(execution.backend, execution.precision, providers)
    model = load_model(resolve_model(uri), engine, settings.mode)
    (shard,) = plan_segmentation(  # one shard: a scene always has a chip to segment
        [source], settings, prompts=prompts, chip_size=model.image_size, model_uri=uri
    )
    result = segment_shard(shard, raster.parent, prompts, model=model, progress=progress)
    lineage = {**model.lineage, "provider": model.provider}
    merged = merge_scene(
        shard.scenes[0], result.masks.get(source.acquisition, []), shard, root=raster.parent,
        prompts=prompts, lineage=lineage, output_dir=Path(output_dir), stats=result.stats,
    )  # fmt: skip
    summary = json.loads(merged.files.summary.read_text())
    return RasterResult(
        merged.files, summary, result.stats, model.lineage, merged.masks, merged.grid
    )
