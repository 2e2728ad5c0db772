"""The end product of a segmentation: COG, GeoParquet polygons, quick-look PNG, summary.

* ``segmentation.tif``: a Cloud-Optimized GeoTIFF on the scene's grid. Automatic
  mode: one uint32 band of instance ids (0 = background). Prompted mode: one uint8
  0/1 band per ``prompt_id`` (``mask_prompt_<id>``, FarmVibes' band naming), in the
  prompts' order. Tags carry the model lineage and parameters.
* ``polygons.parquet``: GeoParquet, one row per instance (automatic: the visible part
  of each instance in the label raster) or per prompt, with scores, area and model.
* ``quicklook.png``: masks over the RGB scene, at most 1024 px on a side.
* ``summary.json``: counts, timings, lineage, dropped prompts.

Everything is written under temporary names and renamed into place at the end, so
a failed run never leaves a half-written output behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from numpy.typing import NDArray
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

from components.core.merge import SceneMask, render_labels, render_prompt_bands
from components.core.radiometry import RgbScaling, to_rgb
from components.core.vectorize import MaskAttributes, polygonize_labels, polygonize_masks
from components.inference.shard import SceneSegmentation
from components.io.raster import SceneInfo
from components.version import __version__

SEGMENTATION = "segmentation.tif"
POLYGONS = "polygons.parquet"
QUICKLOOK = "quicklook.png"
SUMMARY = "summary.json"
BLOCK_ROWS = 1024
QUICKLOOK_SIZE = 1024


@dataclass(frozen=True)
class OutputFiles:
    """Paths of a run's outputs."""

    segmentation: Path
    polygons: Path
    quicklook: Path
    summary: Path


def band_name(prompt_id: int | str) -> str:
    """Output band name of a prompt: ``mask_prompt_<id>`` (FarmVibes' naming)."""
    return f"mask_prompt_{prompt_id}"


def _write_cog(
    path: Path,
    segmentation: SceneSegmentation,
    scene: SceneInfo,
    tags: dict[str, str],
) -> None:
    prompted = segmentation.mode == "prompted"
    count = max(1, len(segmentation.prompt_order)) if prompted else 1
    profile = {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": count,
        "dtype": "uint8" if prompted else "uint32",
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    raw = path.with_suffix(".raw.tif")
    with rasterio.open(raw, "w", **profile) as dst:
        for row in range(0, scene.height, BLOCK_ROWS):
            h = min(BLOCK_ROWS, scene.height - row)
            window = (row, 0, h, scene.width)
            if prompted:
                block = render_prompt_bands(segmentation.masks, segmentation.prompt_order, window)
                if not segmentation.prompt_order:
                    block = np.zeros((1, h, scene.width), np.uint8)
                dst.write(block, window=Window(0, row, scene.width, h))
            else:
                labels = render_labels(segmentation.masks, window)
                dst.write(labels, 1, window=Window(0, row, scene.width, h))
        if prompted:
            for b, pid in enumerate(segmentation.prompt_order, start=1):
                dst.set_band_description(b, band_name(pid))
                dst.update_tags(b, prompt_id=str(pid))
        else:
            dst.set_band_description(1, "instance_id")
        dst.update_tags(**tags)
    rasterio.shutil.copy(
        raw,
        path,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=512,
        OVERVIEW_RESAMPLING="NEAREST",
        BIGTIFF="IF_SAFER",
    )
    raw.unlink()


def _attributes(masks: list[SceneMask], prompted: bool) -> list[MaskAttributes]:
    return [
        MaskAttributes(k + 1, m.prompt_id if prompted else None, m.predicted_iou, m.stability_score)
        for k, m in enumerate(masks)
    ]


def _write_polygons(
    path: Path,
    segmentation: SceneSegmentation,
    scene: SceneInfo,
    cog: Path,
    lineage: dict[str, Any],
) -> int:
    import geopandas as gpd

    prompted = segmentation.mode == "prompted"
    attrs = _attributes(segmentation.masks, prompted)
    if prompted:
        polygons = []
        for m, a in zip(segmentation.masks, attrs, strict=True):
            t = scene.transform @ Affine.translation(m.box[0], m.box[1])
            polygons += polygonize_masks(m.mask[None], t, scene.crs, [a])
    else:
        with rasterio.open(cog) as src:
            labels = src.read(1)
        polygons = polygonize_labels(labels, scene.transform, scene.crs, attrs)
    rows = [p.as_record() for p in polygons]
    columns = ["id", "prompt_id", "predicted_iou", "stability_score", "area_m2", "pixel_count"]
    data = {c: [r[c] for r in rows] for c in columns}
    if prompted:
        data["prompt_id"] = [str(v) for v in data["prompt_id"]]
    data["model_name"] = [lineage.get("model_name")] * len(rows)
    data["model_version"] = [lineage.get("model_version")] * len(rows)
    frame = gpd.GeoDataFrame(data, geometry=[r["geometry"] for r in rows], crs=scene.crs)
    frame.to_parquet(path)
    return len(rows)


# 20 distinguishable colours (Sasha Trubetskoy's list), cycled by instance id
_PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.float32,
)  # fmt: skip


def quicklook(rgb: NDArray[np.uint8], labels: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Instances tinted over the RGB image, with white outlines."""
    out = rgb.astype(np.float32)
    inside = labels > 0
    colours = _PALETTE[(labels.astype(np.int64) - 1) % len(_PALETTE)]
    out[inside] = 0.5 * out[inside] + 0.5 * colours[inside]
    edge = np.zeros_like(inside)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[edge & inside] = 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _write_quicklook(
    path: Path, segmentation: SceneSegmentation, scene: SceneInfo, scaling: RgbScaling, cog: Path
) -> None:
    factor = max(1.0, max(scene.height, scene.width) / QUICKLOOK_SIZE)
    shape = (max(1, round(scene.height / factor)), max(1, round(scene.width / factor)))
    with rasterio.open(scene.path) as src:
        dn = src.read(list(scene.bands), out_shape=(len(scene.bands), *shape))
    rgb, _ = to_rgb(dn, scaling)
    with rasterio.open(cog) as src:
        bands = src.read(out_shape=(src.count, *shape), resampling=Resampling.nearest)
    if segmentation.mode == "prompted":
        # each prompt's band in its own colour: label = band number where set
        labels = np.zeros(shape, np.int64)
        for b in range(bands.shape[0]):
            labels[bands[b] > 0] = b + 1
    else:
        labels = bands[0].astype(np.int64)
    Image.fromarray(quicklook(rgb, labels)).save(path, format="PNG")


def write_outputs(
    segmentation: SceneSegmentation,
    scene: SceneInfo,
    scaling: RgbScaling,
    lineage: dict[str, Any],
    output_dir: Path,
    parameters: dict[str, Any] | None = None,
) -> OutputFiles:
    """Write all outputs of a scene's segmentation into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = OutputFiles(
        output_dir / SEGMENTATION, output_dir / POLYGONS, output_dir / QUICKLOOK,
        output_dir / SUMMARY,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix=".s2sam-", dir=output_dir))
    try:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tags = {
            "s2sam_version": __version__,
            "s2sam_mode": segmentation.mode,
            "s2sam_created": created,
            "s2sam_parameters": json.dumps(parameters or {}, sort_keys=True, default=str),
            "s2sam_source": str(scene.path),
            **{f"s2sam_{k}": str(v) for k, v in lineage.items()},
        }
        for key in ("datetime", "item_ids", "tiles", "processing_baseline"):
            if key in scene.tags:
                tags[f"source_{key}"] = scene.tags[key]
        cog = work / SEGMENTATION
        _write_cog(cog, segmentation, scene, tags)
        n_polygons = _write_polygons(work / POLYGONS, segmentation, scene, cog, lineage)
        _write_quicklook(work / QUICKLOOK, segmentation, scene, scaling, cog)
        summary = {
            "s2sam_version": __version__,
            "created": created,
            "mode": segmentation.mode,
            "scene": {
                "path": str(scene.path),
                "height": scene.height,
                "width": scene.width,
                "crs": str(scene.crs),
                "bands": list(scene.band_names),
            },
            "model": lineage,
            "parameters": parameters or {},
            "chips": len(segmentation.grid),
            "masks": len(segmentation.masks),
            "polygons": n_polygons,
            "prompt_ids": [str(p) for p in segmentation.prompt_order],
            "dropped_prompts": [asdict(d) for d in segmentation.dropped_prompts],
            "stats": segmentation.stats.to_dict(),
            "scaling": asdict(scaling),
            "files": [SEGMENTATION, POLYGONS, QUICKLOOK],
        }
        (work / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        for name in (SEGMENTATION, POLYGONS, QUICKLOOK, SUMMARY):
            os.replace(work / name, output_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
