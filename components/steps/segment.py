"""``segment``: SAM over one shard of chips, the inference task of both pipelines.

:func:`segment_shard` runs in memory (a local run is one shard); the KFP task writes
its masks as gzipped JSON lines of COCO RLE records (:func:`write_masks`, one record
per mask: :func:`mask_to_record`) that the merge reads back (:func:`read_masks`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pycocotools import mask as mask_utils

from components.core.chips import work_chip_grid
from components.core.merge import SceneMask
from components.inference.backends import choose_engine
from components.inference.embeddings import EmbeddingCache
from components.inference.model import SegmentationModel, load_model
from components.inference.shard import EncoderSettings, Progress, RunStats, segment_chips
from components.inference.strategy import scene_strategy
from components.io.files import cache_dir
from components.io.registry import resolve_model
from components.steps.plan_chips import ShardPlan, open_planned_scene

BLOCK_CACHE_MB = {True: 1024, False: 64}
"""GDAL block cache by FarmVibes' ``in_memory``: large enough that overlapping chips
read each block once, instead of up to four times at 50 % overlap."""


@dataclass
class ShardResult:
    """A shard's masks per scene (before the merge), its counts and the model's lineage."""

    masks: dict[str, list[SceneMask]] = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats)
    lineage: dict[str, Any] = field(default_factory=dict)


def segment_shard(
    plan: ShardPlan,
    root: Path,
    prompts: str = "",
    *,
    model: SegmentationModel | None = None,
    progress: Progress | None = None,
) -> ShardResult:
    """Segment every chip of ``plan`` with its pinned model (or ``model``, already loaded).

    ``root`` is the scenes folder as this task sees it.

    FarmVibes' ``num_workers`` and ``in_memory`` map to what they were for: chips read
    ahead of the encoder (at least 2) and raster blocks kept in memory.
    """
    settings = plan.settings
    execution = settings.execution
    if model is None:  # the engine first: a backend not installed fails before a download
        engine = choose_engine(execution.backend, execution.precision)
        model = load_model(resolve_model(plan.model_uri), engine, settings.mode)
    cache = EmbeddingCache(cache_dir() / "embeddings") if execution.use_cache else None
    result = ShardResult(lineage=model.lineage)
    with rasterio.Env(GDAL_CACHEMAX=BLOCK_CACHE_MB[execution.in_memory]):
        for entry in plan.scenes:
            scene = open_planned_scene(entry, settings, root)
            work = scene.work_grid(settings.upsample)
            grid = work_chip_grid(
                work, plan.chip_size, settings.spatial_overlap, settings.chip_anchor
            )
            masks, stats = segment_chips(
                model,
                scene,
                entry.scaling,
                [grid[i] for i in entry.chips],
                scene_strategy(settings, prompts, scene),
                encoder=EncoderSettings(
                    execution.encoder_batch_size, cache, entry.fingerprint, settings.upsample
                ),
                progress=progress,
                read_ahead=max(2, execution.num_workers),
            )
            result.masks.setdefault(entry.acquisition, []).extend(masks)
            result.stats.add(stats)
    return result


def mask_to_record(m: SceneMask) -> dict[str, Any]:
    """JSON-able form of a mask (COCO RLE of its cropped pixels): what shards hand to the merge."""
    rle = mask_utils.encode(np.asfortranarray(m.mask.astype(np.uint8)))
    return {
        "box": list(m.box),
        "counts": rle["counts"].decode("ascii"),
        "predicted_iou": m.predicted_iou,
        "stability_score": m.stability_score,
        "chips": list(m.chips),
        "prompt_id": m.prompt_id,
    }


def mask_from_record(record: dict[str, Any]) -> SceneMask:
    """Inverse of :func:`mask_to_record` (JSON numbers may come back as floats)."""
    x0, y0, x1, y1 = (int(v) for v in record["box"])
    rle = {"size": [y1 - y0, x1 - x0], "counts": record["counts"].encode("ascii")}
    pid = record.get("prompt_id")
    if isinstance(pid, float) and pid.is_integer():
        pid = int(pid)
    return SceneMask(
        box=(x0, y0, x1, y1),
        mask=mask_utils.decode(rle).astype(bool),
        predicted_iou=float(record["predicted_iou"]),
        stability_score=float(record["stability_score"]),
        chips=tuple(int(c) for c in record["chips"]),
        prompt_id=pid,
    )


def write_masks(result: ShardResult, path: Path) -> None:
    """A shard's masks as gzipped JSON lines (COCO RLE), written through a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with gzip.open(tmp, "wt") as out:
        for acquisition, masks in result.masks.items():
            for m in masks:
                out.write(json.dumps({"scene": acquisition, **mask_to_record(m)}) + "\n")
    tmp.replace(path)


def read_masks(paths: Sequence[Path]) -> dict[str, list[SceneMask]]:
    """Every shard's masks, by scene."""
    by_scene: dict[str, list[SceneMask]] = {}
    for part in paths:
        with gzip.open(part, "rt") as f:
            for line in f:
                record = json.loads(line)
                by_scene.setdefault(record.pop("scene"), []).append(mask_from_record(record))
    return by_scene


def segment_to_file(
    scenes_dir: Path, shard: str, prompts: str, output_path: Path
) -> dict[str, Any]:
    """The ``segment`` task: a shard's masks written to ``output_path``; lineage and counts."""
    result = segment_shard(ShardPlan.from_json(shard), scenes_dir, prompts)
    write_masks(result, output_path)
    return {"lineage": result.lineage, "stats": result.stats.to_dict()}
