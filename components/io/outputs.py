"""The end product of a segmentation: COG, GeoParquet polygons, quick-look PNG, summary.

* ``segmentation.tif``: a Cloud-Optimized GeoTIFF on the scene's grid, laid out by
  :mod:`components.core.rendering` (automatic mode: one uint32 band of instance ids;
  prompted mode: one uint8 0/1 band per ``prompt_id``). Tags carry the model lineage
  and parameters.
* ``polygons.parquet``: GeoParquet, one row per instance (automatic: the visible part
  of each instance in the label raster) or per prompt, with scores, area and model.
* ``fields.parquet``: the polygons as field boundaries a GIS can take (fiboa core
  GeoParquet, cleaned in ground units), and ``fields_set_aside.parquet``: what the
  cleaning set aside, with the reason (:mod:`components.io.fiboa`).
* ``quicklook.png``: masks over the RGB scene, at most 1024 px on a side.
* ``summary.json``: counts, timings, lineage, dropped prompts, and the sha256 of each
  of the other files.

The outputs are a set: every file is written in a temporary folder and renamed into
place, and ``summary.json`` comes last, so a folder whose ``summary.json`` lists the
files it holds (with matching digests) is complete. A run first deletes the previous
run's summary, so a run killed half-way leaves a folder without a summary, never a new
raster beside an old summary; it also removes the temporary folders of killed runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

from components.core.fields import CleaningResult, FieldCleaning
from components.core.geometry import WorkGrid
from components.core.radiometry import RgbScaling, to_rgb
from components.core.rendering import RasterLayout, set_aside_polygons
from components.core.vectorize import SegmentPolygon
from components.io.fiboa import FIELDS, SET_ASIDE, write_fields
from components.io.files import file_sha256
from components.io.raster import SceneInfo
from components.version import __version__

SEGMENTATION = "segmentation.tif"
POLYGONS = "polygons.parquet"
QUICKLOOK = "quicklook.png"
SUMMARY = "summary.json"
CHECKED = (SEGMENTATION, POLYGONS, FIELDS, SET_ASIDE, QUICKLOOK)
"""The files ``summary.json`` lists with their digests."""
WORK_PREFIX = ".s2sam-"
BLOCK_BYTES = 256 * 2**20
"""Most bytes of output raster rendered at once: rows per block shrink with the band
count, so 5,000 prompt bands over a whole tile stay near this, not 56 GB."""
QUICKLOOK_SIZE = 1024


@dataclass(frozen=True)
class OutputFiles:
    """Paths of a run's outputs."""

    segmentation: Path
    polygons: Path
    fields: Path
    fields_set_aside: Path
    quicklook: Path
    summary: Path


def _write_cog(
    path: Path, layout: RasterLayout, scene: SceneInfo, grid: WorkGrid, tags: dict[str, str]
) -> None:
    profile = {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": layout.count,
        "dtype": layout.dtype,
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    raw = path.with_suffix(".raw.tif")
    f = grid.upsample
    row_bytes = layout.count * grid.width * f * np.dtype(layout.dtype).itemsize
    rows = max(1, min(scene.height, BLOCK_BYTES // row_bytes))
    with rasterio.open(raw, "w", **profile) as dst:
        for row in range(0, scene.height, rows):
            h = min(rows, scene.height - row)
            block = layout.render((0, row * f, grid.width, (row + h) * f))
            dst.write(layout.downsample(block, f), window=Window(0, row, scene.width, h))
        for b, (description, band_tags) in enumerate(layout.band_tags(), start=1):
            dst.set_band_description(b, description)
            if band_tags:
                dst.update_tags(b, **band_tags)
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


def _write_polygons(
    path: Path,
    polygons: list[SegmentPolygon],
    scene: SceneInfo,
    lineage: dict[str, Any],
    extra: Mapping[str, Sequence[Any]],
) -> int:
    import geopandas as gpd

    rows = [p.as_record() for p in polygons]
    columns = ["id", "prompt_id", "predicted_iou", "stability_score", "area_m2", "pixel_count"]
    data = {c: [r[c] for r in rows] for c in columns}
    data["prompt_id"] = [None if v is None else str(v) for v in data["prompt_id"]]
    for name, values in extra.items():  # per mask; polygon ``id`` k + 1 is mask k
        data[name] = [values[p.id - 1] for p in polygons]
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
    path: Path, layout: RasterLayout, scene: SceneInfo, scaling: RgbScaling, cog: Path
) -> None:
    factor = max(1.0, max(scene.height, scene.width) / QUICKLOOK_SIZE)
    shape = (max(1, round(scene.height / factor)), max(1, round(scene.width / factor)))
    with rasterio.open(scene.path) as src:
        dn = src.read(list(scene.bands), out_shape=(len(scene.bands), *shape))
    rgb, _ = to_rgb(dn, scaling)
    with rasterio.open(cog) as src:
        bands = (
            src.read(b, out_shape=shape, resampling=Resampling.nearest)
            for b in range(1, src.count + 1)
        )
        labels = layout.quicklook_labels(bands)
    Image.fromarray(quicklook(rgb, labels)).save(path, format="PNG")


def start_new_set(output_dir: Path) -> None:
    """Retire the previous set (its summary) and clear what killed runs left behind."""
    (output_dir / SUMMARY).unlink(missing_ok=True)
    for leftover in output_dir.glob(WORK_PREFIX + "*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def is_complete(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds a complete set: a summary whose digests match."""
    summary = output_dir / SUMMARY
    if not summary.is_file():
        return False
    digests = json.loads(summary.read_text()).get("sha256", {})
    return set(digests) == set(CHECKED) and all(
        (output_dir / name).is_file() and file_sha256(output_dir / name) == sha
        for name, sha in digests.items()
    )


def write_outputs(
    layout: RasterLayout,
    scene: SceneInfo,
    grid: WorkGrid,
    scaling: RgbScaling,
    lineage: dict[str, Any],
    output_dir: Path,
    *,
    run: dict[str, Any],
    fields: FieldCleaning,
) -> OutputFiles:
    """Write all outputs of a scene's segmentation into ``output_dir``, as a set.

    The masks lie on the working ``grid``: the raster is brought back to the scene's
    grid, the polygons keep the working grid's detail. ``run`` (``mode``,
    ``parameters``, chips, stats, dropped prompts) goes into ``summary.json`` beside
    what this function knows itself (scene, model, masks, polygons, files).
    ``fields`` says how the polygons are cleaned into ``fields.parquet``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start_new_set(output_dir)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=output_dir))
    try:
        summary = _write_files(work, layout, scene, grid, lineage, run, fields)
        summary["scaling"] = asdict(scaling)
        _write_quicklook(work / QUICKLOOK, layout, scene, scaling, work / SEGMENTATION)
        summary["files"] = list(CHECKED)
        summary["sha256"] = {name: file_sha256(work / name) for name in CHECKED}
        (work / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        for name in (*CHECKED, SUMMARY):  # the summary last: it marks a complete set
            os.replace(work / name, output_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OutputFiles(
        output_dir / SEGMENTATION, output_dir / POLYGONS, output_dir / FIELDS,
        output_dir / SET_ASIDE, output_dir / QUICKLOOK, output_dir / SUMMARY,
    )  # fmt: skip


def _write_files(
    work: Path,
    layout: RasterLayout,
    scene: SceneInfo,
    grid: WorkGrid,
    lineage: dict[str, Any],
    run: dict[str, Any],
    fields: FieldCleaning,
) -> dict[str, Any]:
    """The COG, polygons and fields in ``work``; returns the summary so far."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = _cog_tags(scene, lineage, run["mode"], run["parameters"], created)
    _write_cog(work / SEGMENTATION, layout, scene, grid, tags)
    polygons = layout.polygons(grid, scene.crs)
    n_polygons = _write_polygons(work / POLYGONS, polygons, scene, lineage, layout.columns)
    withheld = set_aside_polygons(layout.set_aside, grid, scene.crs, len(layout.masks) + 1)
    cleaned = write_fields(
        work, polygons, scene.crs, fields, lineage=lineage,
        scene_id=scene.path.stem, acquired=_acquired(scene), set_aside=withheld,
    )  # fmt: skip
    return {
        "s2sam_version": __version__,
        "created": created,
        "scene": {
            "path": str(scene.path),
            "height": scene.height,
            "width": scene.width,
            "crs": str(scene.crs),
            "bands": list(scene.band_names),
        },
        "model": lineage,
        "masks": len(layout.masks),
        "polygons": n_polygons,
        "fields": _fields_summary(cleaned, [reason for _, reason in withheld]),
        "prompt_ids": [str(p) for p in layout.prompt_order],
        **run,
    }


def _acquired(scene: SceneInfo) -> datetime | None:
    """The acquisition time ingest tagged the scene with; ``None`` for other rasters."""
    text = scene.tags.get("datetime", "")
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp


def _fields_summary(result: CleaningResult, withheld: Sequence[str]) -> dict[str, Any]:
    """How many fields were kept, how many set aside and why.

    ``withheld``: the reasons of segments set aside before the cleaning, counted by
    their first word (``cropland``), as the cleaning's reasons are.
    """
    reasons: dict[str, int] = {}
    for reason in [d.reason for d in result.dropped] + [r.split(" ")[0] for r in withheld]:
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"kept": len(result.kept), "set_aside": reasons, "simplified": result.simplified}


def _cog_tags(
    scene: SceneInfo, lineage: dict[str, Any], mode: str, parameters: dict[str, Any], created: str
) -> dict[str, str]:
    """What the segmentation COG says about how it was made, and from which scene."""
    tags = {
        "s2sam_version": __version__,
        "s2sam_mode": mode,
        "s2sam_created": created,
        "s2sam_parameters": json.dumps(parameters, sort_keys=True, default=str),
        "s2sam_source": str(scene.path),
        **{f"s2sam_{k}": str(v) for k, v in lineage.items()},
    }
    for key in ("datetime", "item_ids", "tiles", "processing_baseline"):
        if key in scene.tags:
            tags[f"source_{key}"] = scene.tags[key]
    return tags
