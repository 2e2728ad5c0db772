"""Acquisitions of several date windows fused into one field layer, written as a set.

Each acquisition is first merged and written on its own (``merged/<acquisition>/``);
when the run covers more than one window (season), their merged masks are fused
(:func:`components.core.fusion.fuse_acquisitions`: a field two dates agree on is one
field, a field one date splits is split), filtered by the cropland mask when the run has
one, and written like a scene's outputs into ``merged/fused/``: label COG, polygons with
the dates each field was found in, fiboa fields, the set-aside layer, quick-look (over
the last acquisition) and a summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.core.fusion import FusedField, FusionParams, fuse_acquisitions
from components.core.rendering import InstanceLabels
from components.steps.cropland import cropland_split
from components.steps.plan_chips import ScenePlan, ShardPlan, open_planned_scene

FUSED = "fused"
"""Folder (and sink file name) of the fused layer."""


def fused_columns(
    fields: Sequence[FusedField], acquisitions: Sequence[str]
) -> dict[str, list[Any]]:
    """Per-field attributes of the fused layer, in the fields' order.

    ``dates_found`` counts the acquisitions the field was found in; ``acquisitions``
    names them; ``date_predicted_iou`` is SAM's predicted IoU per acquisition of the
    run (in ``acquisitions`` order, null where the field was not found).
    """
    return {
        "dates_found": [len(f.dates) for f in fields],
        "acquisitions": [",".join(acquisitions[d] for d in f.dates) for f in fields],
        "date_predicted_iou": [json.dumps(list(f.scores)) for f in fields],
    }


def needs_fusion(plans: Sequence[ScenePlan]) -> bool:
    """Whether the run's scenes come from more than one date window."""
    return len({p.window for p in plans}) > 1


def write_fused(
    dated: Sequence[tuple[ScenePlan, Sequence[Any]]],
    shard: ShardPlan,
    *,
    root: Path,
    lineage: Mapping[str, Any],
    output_dir: Path,
    params: FusionParams | None = None,
) -> dict[str, Any]:
    """Fuse the merged masks of each acquisition (in time order) and write the layer.

    ``dated`` pairs each planned scene with its merged masks, those the cropland
    filter set aside included: the fused fields are filtered again, so a field that one
    date drew over the forest edge is judged by the mask that represents it. All scenes
    of a run lie on one grid (the ingest's), so their masks compare pixel for pixel.

    Returns:
        The fused layer's summary (``acquisition`` is ``"fused"``).
    """
    from components.io.outputs import write_outputs

    settings = shard.settings
    fused = fuse_acquisitions([masks for _, masks in dated], params or FusionParams())
    kept, aside = cropland_split([f.mask for f in fused], root, settings)
    on_cropland = {id(m) for m in kept}
    fields = [f for f in fused if id(f.mask) in on_cropland]
    keys = [plan.acquisition for plan, _ in dated]
    last = dated[-1][0]
    scene = open_planned_scene(last, settings, root)
    columns = fused_columns(fields, keys)
    files = write_outputs(
        InstanceLabels([f.mask for f in fields], columns=columns, set_aside=aside),
        scene,
        scene.work_grid(settings.upsample),
        last.scaling,
        dict(lineage),
        output_dir,
        run={
            "mode": "fused",
            "parameters": settings.parameters(),
            "acquisitions": keys,
            "dates_found": {
                str(n): columns["dates_found"].count(n) for n in range(1, len(keys) + 1)
            },
        },
        fields=settings.fields,
    )
    summary: dict[str, Any] = json.loads(files.summary.read_text())
    summary["acquisition"] = FUSED
    return summary
