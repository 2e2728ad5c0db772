"""``merge_masks``: every shard's masks merged per scene, and the run's outputs and sinks.

Each scene's chips' masks are merged across seams by the scene's strategy and
written as a complete set (segmentation COG, GeoParquet polygons, quick-look,
summary; :func:`components.io.outputs.write_outputs`). :func:`publish_merge` then
lays the scenes out as the pipelines' sinks and builds the Kubeflow UI's page.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from components.core.chips import ChipGrid, work_chip_grid
from components.core.merge import SceneMask
from components.core.params import PipelineRequest
from components.core.prompts import DroppedPrompt
from components.core.records import from_json
from components.core.rendering import InstanceLabels
from components.inference.shard import RunStats
from components.inference.strategy import SceneStrategy, scene_strategy
from components.io.fiboa import FIELDS
from components.io.outputs import POLYGONS, QUICKLOOK, OutputFiles, write_outputs
from components.io.raster import SceneInfo, pixels_valid
from components.io.registry import resolve_model
from components.steps.cropland import cropland_split
from components.steps.fuse import FUSED, needs_fusion, write_fused
from components.steps.plan_chips import ScenePlan, ShardPlan, open_planned_scene
from components.steps.segment import read_masks


@dataclass(frozen=True)
class VectorSinks:
    """Folders of the pipeline's vector sinks: one ``<acquisition>.parquet`` per scene."""

    polygons: Path
    fields: Path


@dataclass(frozen=True)
class MergedScene:
    """One scene's merged masks, the grid they were merged on, and the files written."""

    files: OutputFiles
    masks: list[SceneMask]
    grid: ChipGrid
    set_aside: list[SceneMask] = field(default_factory=list)
    """Masks the cropland filter set aside (written to the set-aside layer)."""


def merge_scene(
    plan: ScenePlan,
    masks: Sequence[SceneMask],
    shard: ShardPlan,
    *,
    root: Path,
    prompts: str,
    lineage: Mapping[str, Any],
    output_dir: Path,
    stats: RunStats | None = None,
) -> MergedScene:
    """Merge one scene's chip masks and write its outputs into ``output_dir``.

    ``shard`` gives the run's settings and chip size (any shard of the run will do);
    ``root`` is the scenes folder as this task sees it.
    """
    settings = shard.settings
    scene = open_planned_scene(plan, settings, root)
    strategy = scene_strategy(settings, prompts, scene)
    work = scene.work_grid(settings.upsample)
    grid = work_chip_grid(work, shard.chip_size, settings.spatial_overlap, settings.chip_anchor)
    merged, aside = cropland_split(strategy.merge(masks, grid), root, settings)
    stats = stats or RunStats(chips_total=len(plan.chips))
    stats.chips_without_prompts = len(grid) - len(plan.chips)  # never read nor encoded
    stats.masks_from_chips = len(masks)
    stats.masks_merged = len(merged)
    layout = InstanceLabels(merged, set_aside=aside) if aside else strategy.layout(merged)
    files = write_outputs(
        layout,
        scene,
        work,
        plan.scaling,
        dict(lineage),
        output_dir,
        run={
            "mode": strategy.mode,
            "parameters": settings.parameters(),
            "chips": len(grid),
            "dropped_prompts": [
                asdict(d)
                for d in (
                    *strategy.dropped,
                    *unanswered(strategy, merged, scene, plan, settings.upsample),
                )
            ],
            "stats": stats.to_dict(),
        },
        fields=settings.fields,
    )
    return MergedScene(files, merged, grid, [m for m, _ in aside])


def unanswered(
    strategy: SceneStrategy,
    merged: Sequence[SceneMask],
    scene: SceneInfo,
    plan: ScenePlan,
    upsample: int,
) -> list[DroppedPrompt]:
    """Prompts whose band stayed empty, with why: never a silently empty band."""
    out = []
    for group in strategy.unanswered(merged):
        clicks = group.points[group.labels == 1] / upsample  # working grid -> scene pixels
        on_data = pixels_valid(scene, clicks[:, 0], clicks[:, 1], plan.scaling.nodata)
        if len(clicks) and not on_data.any():
            reason = "every click lies on nodata pixels: nothing to segment there"
        else:
            reason = "SAM returned an empty mask for it"
        out.append(DroppedPrompt(group.prompt_id, None, reason))
    return out


def scene_plans(shards: Sequence[ShardPlan]) -> list[ScenePlan]:
    """Each planned scene once (with all its chips), in the order they were planned."""
    by_key: dict[str, ScenePlan] = {}
    for shard in shards:
        for entry in shard.scenes:
            known = by_key.get(entry.acquisition)
            chips = entry.chips if known is None else known.chips + entry.chips
            by_key[entry.acquisition] = replace(entry, chips=tuple(sorted(chips)))
    return list(by_key.values())


def merge_shards(
    shards: Sequence[ShardPlan],
    masks: Mapping[str, Sequence[SceneMask]],
    *,
    root: Path,
    prompts: str,
    lineage: Mapping[str, Any],
    output_dir: Path,
) -> list[dict[str, Any]]:
    """Merge every planned scene into ``output_dir/<acquisition>/``; one summary each.

    Scenes of several date windows (automatic mode) are also fused into one field
    layer in ``output_dir/fused/``, whose summary comes last. ``root`` is the scenes
    folder as this task sees it.
    """
    summaries = []
    dated = []
    plans = scene_plans(shards)
    for plan in plans:
        merged = merge_scene(
            plan, masks.get(plan.acquisition, []), shards[0], root=root, prompts=prompts,
            lineage=lineage, output_dir=output_dir / plan.acquisition,
        )  # fmt: skip
        summary = json.loads(merged.files.summary.read_text())
        summary["acquisition"] = plan.acquisition
        summaries.append(summary)
        dated.append((plan, merged.masks + merged.set_aside))  # fused, then filtered
    if needs_fusion(plans) and shards[0].settings.mode == "automatic":
        summaries.append(
            write_fused(dated, shards[0], root=root, lineage=lineage, output_dir=output_dir / FUSED)
        )
    return summaries


def publish_merge(
    summaries: list[dict[str, Any]], merged_dir: Path, sinks: VectorSinks, markdown_path: Path
) -> dict[str, float]:
    """Arrange merged scenes into the pipeline's sinks and build the UI's quick-look page.

    ``merged_dir/<acquisition>/`` already holds each scene's outputs; polygons and
    fields are also gathered in their sinks' folders as ``<acquisition>.parquet``.
    Returns the run's metrics (KFP metrics are numbers).
    """
    for folder in (sinks.polygons, sinks.fields):
        folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Segmentation", ""]
    for summary in summaries:
        key = summary["acquisition"]
        folder = merged_dir / key
        shutil.copyfile(folder / POLYGONS, sinks.polygons / f"{key}.parquet")
        shutil.copyfile(folder / FIELDS, sinks.fields / f"{key}.parquet")
        png = base64.b64encode((folder / QUICKLOOK).read_bytes()).decode("ascii")
        lines += [
            f"## {key}",
            "",
            _describe(summary),
            "",
            f"![{key}](data:image/png;base64,{png})",
            "",
        ]
    if not summaries:
        lines.append("No scene had anything to segment.")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text("\n".join(lines) + "\n")
    return run_metrics(summaries)


def _describe(summary: Mapping[str, Any]) -> str:
    """One sentence on a scene's (or the fused layer's) outputs, for the UI's page."""
    model = summary["model"]
    made = (
        f"fused from {', '.join(summary['acquisitions'])}"
        if summary["mode"] == "fused"
        else f"from {summary['chips']} chips"
    )
    return (
        f"{summary['masks']} masks, {summary['polygons']} polygons, "
        f"{summary['fields']['kept']} fields {made}; model {model.get('model_name')} "
        f"version {model.get('model_version')} ({summary['mode']} mode)."
    )


def run_metrics(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The run's KFP metrics (numbers): totals over scenes, and the fused layer's fields."""
    scenes = [s for s in summaries if s["acquisition"] != FUSED]
    fused = [s for s in summaries if s["acquisition"] == FUSED]
    version = summaries[0]["model"].get("model_version") if summaries else None
    metrics = {
        "scenes": float(len(scenes)),
        "chips": float(sum(int(s["chips"]) for s in scenes)),
        "masks": float(sum(int(s["masks"]) for s in scenes)),
        "polygons": float(sum(int(s["polygons"]) for s in scenes)),
        "fields": float(sum(int(s["fields"]["kept"]) for s in scenes)),
        "model_version": float(version) if version and str(version).isdigit() else 0.0,
    }
    if fused:
        metrics["fused_fields"] = float(fused[0]["fields"]["kept"])
    return metrics


def merge_and_publish(
    scenes_dir: Path,
    parts: Sequence[Path],
    shards: Sequence[str],
    request: str,
    model_uri: str,
    merged_dir: Path,
    sinks: VectorSinks,
    markdown_path: Path,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The ``merge_masks`` task: every scene merged and written, the sinks laid out.

    Returns:
        One summary per scene and the run's metrics.
    """
    checked = from_json(PipelineRequest, request)
    summaries = merge_shards(
        [ShardPlan.from_json(s) for s in shards],
        read_masks(parts),
        root=scenes_dir,
        prompts=checked.prompts,
        lineage=resolve_model(model_uri).lineage,
        output_dir=merged_dir,
    )
    return summaries, publish_merge(summaries, merged_dir, sinks, markdown_path)
