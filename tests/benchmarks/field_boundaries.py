"""Field boundaries with the trained field model: the figures of issue 17.

Not a test (minutes on two cores): run it by hand and read the table it prints.

    .venv/bin/python tests/benchmarks/field_boundaries.py [--quick]

1. **Parcels found twice** across chips: an unseen 1900 x 2600 synthetic scene at
   ``spatial_overlap`` 0.5; every chip is segmented once and the chip masks are merged
   with and without the cross-chip duplicate rule (``duplicate_ios``), so the
   comparison is on identical chip masks. A parcel is *found* by a mask with IoU >= 0.5
   and *found twice* when two merged masks do.
2. **Independence from the grid**: one scene segmented from two windows whose origins
   differ by an odd number of pixels (37 rows, 53 columns), as a user drawing a
   slightly different area would; share of masks away from either window's edge
   (64 px) matched at IoU >= 0.9 by the other run, and the median of each mask's best
   IoU with the other run's, on a synthetic scene with the chip grid anchored to the
   scene and to the map (``chip_anchor``; also with the fixed stretch, since the default
   percentile stretch is computed from each area's own pixels), and on the real
   Sentinel-2 sample (shared data; skipped with a note when absent; one chip, so no
   grid to anchor).
3. **upsample**: recall and precision at IoU 0.5 for ``upsample`` 1 and 2 on a scene of
   parcels half the size the model was trained on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from components.core.chips import ChipGrid  # noqa: E402
from components.core.merge import SceneMask, merge_automatic  # noqa: E402
from components.core.params import AmgParams, RadiometryParams, SegmentationSettings  # noqa: E402
from components.inference.model import load_model  # noqa: E402
from components.io.registry import resolve_model  # noqa: E402
from components.steps.plan_chips import SceneSource, plan_segmentation  # noqa: E402
from components.steps.segment import segment_shard  # noqa: E402
from components.steps.segment_raster import segment_raster  # noqa: E402
from tests.data.fields.data import Scene, make_scene, write_s2_geotiff  # noqa: E402
from tests.data.fields.model import CHECKPOINT, HELD_OUT_SEEDS, MODEL_TYPE  # noqa: E402

AMG = AmgParams(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
"""The field-model tests' AMG settings (tests/components/inference/test_fields_model.py)."""
SHIFT = (37, 53)
EDGE = 64
SAMPLE = "s2/ftw_t33uup_2021_b4b3b2b8x2.tif"


def export_model(folder: Path) -> str:
    """The trained field model through the real export path (as the test fixture does)."""
    from model_export.export import run_export
    from model_export.weights import WeightsSource

    run_export(MODEL_TYPE, folder, WeightsSource(checkpoint=CHECKPOINT))
    return str(folder)


def chip_masks(
    raster: Path, settings: SegmentationSettings, model_uri: str
) -> tuple[list[SceneMask], ChipGrid]:
    """Every chip's masks (before the merge) and the chip grid, as segment_raster runs them."""
    from components.core.chips import chip_grid

    source = SceneSource(raster.stem, raster.parent, raster.name)
    settings = replace(settings, execution=replace(settings.execution, chip_shards=1))
    model = load_model(resolve_model(model_uri))
    (shard,) = plan_segmentation(
        [source], settings, prompts="", chip_size=model.image_size, model_uri=model_uri
    )
    result = segment_shard(shard, raster.parent, "", model=model)
    with rasterio.open(raster) as src:
        height, width = src.height * settings.upsample, src.width * settings.upsample
    grid = chip_grid(height, width, model.image_size, settings.spatial_overlap)
    return result.masks.get(source.acquisition, []), grid


def full(mask: SceneMask, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = mask.box
    out[y0 + offset[0] : y1 + offset[0], x0 + offset[1] : x1 + offset[1]] = mask.mask
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    return inter / max(1, np.count_nonzero(a | b))


def parcel_matches(
    masks: list[SceneMask], labels: np.ndarray, threshold: float = 0.5
) -> tuple[dict[int, int], int]:
    """Per parcel label, how many masks match it at IoU >= threshold; masks matching any."""
    found: dict[int, int] = {}
    matched_masks = 0
    areas = np.bincount(labels.ravel())
    for m in masks:
        x0, y0, x1, y1 = m.box
        window = labels[y0:y1, x0:x1][m.mask]
        hit = False
        for label in np.unique(window[window > 0]):
            inter = int(np.count_nonzero(window == label))
            if inter / (m.area + areas[label] - inter) >= threshold:
                found[int(label)] = found.get(int(label), 0) + 1
                hit = True
        matched_masks += hit
    return found, matched_masks


def duplicates(model_uri: str, tmp: Path, quick: bool) -> None:
    shape = (1000, 1400) if quick else (1900, 2600)
    scene = make_scene(HELD_OUT_SEEDS[2], *shape)
    raster = write_s2_geotiff(scene, tmp / "dup.tif")
    print(f"\n1. parcels found twice: {shape[0]} x {shape[1]} px, {len(scene.parcels)} parcels")
    print(f"{'overlap':<8} {'merge':<28} {'chips':>5} {'masks':>6} {'found':>6} {'twice':>6}")
    variants = (("mask NMS only (before)", None), ("duplicate_ios 0.9", 0.9),
                ("duplicate_ios 0.8 (default)", 0.8), ("duplicate_ios 0.7", 0.7))  # fmt: skip
    for overlap in (0.0, 0.5):
        settings = SegmentationSettings("automatic", spatial_overlap=overlap, amg=AMG)
        masks, grid = chip_masks(raster, settings, model_uri)
        for name, ios in variants if overlap else variants[:1]:
            merged = merge_automatic(masks, grid, duplicate_ios=ios)
            found, _ = parcel_matches(merged, scene.labels)
            twice = sum(1 for n in found.values() if n > 1)
            print(f"{overlap:<8} {name:<28} {len(grid):>5} {len(merged):>6} {len(found):>6} "
                  f"{twice:>6}")  # fmt: skip


def shifted_windows(raster: Path, tmp: Path) -> tuple[Path, Path]:
    """Two windows of ``raster``: from (0, 0) and from SHIFT, both one SHIFT short."""
    out = []
    with rasterio.open(raster) as src:
        height, width = src.height - SHIFT[0], src.width - SHIFT[1]
        for name, (row, col) in (("a", (0, 0)), ("b", SHIFT)):
            window = Window(col, row, width, height)
            profile = {**src.profile, "height": height, "width": width,
                       "transform": src.window_transform(window)}  # fmt: skip
            path = tmp / f"{raster.stem}_{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
                dst.update_tags(**src.tags())
                for band in range(1, src.count + 1):
                    dst.set_band_description(band, src.descriptions[band - 1])
            out.append(path)
    return out[0], out[1]


def grid_independence(
    name: str, raster: Path, settings: SegmentationSettings, model_uri: str, tmp: Path
) -> None:
    a_path, b_path = shifted_windows(raster, tmp)
    out = tmp / name.replace(" ", "_").replace(",", "")
    started = time.perf_counter()
    a = segment_raster(a_path, out / "a", settings, model_uri=model_uri)
    b = segment_raster(b_path, out / "b", settings, model_uri=model_uri)
    seconds = time.perf_counter() - started
    with rasterio.open(raster) as src:
        shape = (src.height, src.width)
    dy, dx = SHIFT

    def inside(m: SceneMask, offset: tuple[int, int], size: tuple[int, int]) -> bool:
        x0, y0, x1, y1 = m.box
        return (x0 >= EDGE and y0 >= EDGE and x1 <= size[1] - EDGE and y1 <= size[0] - EDGE
                and x0 + offset[1] >= dx + EDGE and y0 + offset[0] >= dy + EDGE
                and x1 + offset[1] <= shape[1] - dx - EDGE
                and y1 + offset[0] <= shape[0] - dy - EDGE)  # fmt: skip

    size = (shape[0] - dy, shape[1] - dx)
    a_masks = [full(m, shape) for m in a.masks if inside(m, (0, 0), size)]
    b_masks = [full(m, shape, SHIFT) for m in b.masks if inside(m, SHIFT, size)]
    best_a = [max((iou(m, n) for n in b_masks), default=0.0) for m in a_masks]
    best_b = [max((iou(n, m) for m in a_masks), default=0.0) for n in b_masks]
    share_a = float(np.mean(np.array(best_a) >= 0.9)) if best_a else 0.0
    share_b = float(np.mean(np.array(best_b) >= 0.9)) if best_b else 0.0
    median = float(np.median(best_a + best_b)) if best_a + best_b else 0.0
    print(f"{name:<34} {len(a_masks):>5} {len(b_masks):>5} {share_a:>8.2f} {share_b:>8.2f} "
          f"{median:>7.2f} {seconds:>8.0f}")  # fmt: skip


def upsample_recall(model_uri: str, tmp: Path, quick: bool) -> None:
    size = 512 if quick else 1024
    scene = make_scene(HELD_OUT_SEEDS[3], size, size, parcel_size=80.0)
    raster = write_s2_geotiff(scene, tmp / "small.tif")
    parcels = [p for p in scene.parcels if p.area >= 200]
    print(f"\n3. upsample: {size} x {size} px, parcels half the trained size "
          f"({len(parcels)} of >= 200 px)")  # fmt: skip
    print(f"{'upsample':<10} {'masks':>6} {'recall':>7} {'precision':>10} {'seconds':>8}")
    for factor in (1, 2):
        settings = SegmentationSettings("automatic", upsample=factor, amg=AMG)
        started = time.perf_counter()
        result = segment_raster(raster, tmp / f"up{factor}", settings, model_uri=model_uri)
        seconds = time.perf_counter() - started
        labels = np.repeat(np.repeat(scene.labels, factor, axis=0), factor, axis=1)
        found, matched = parcel_matches(result.masks, labels)
        recall = sum(1 for p in parcels if p.label in found) / len(parcels)
        precision = matched / max(1, len(result.masks))
        print(f"{factor:<10} {len(result.masks):>6} {recall:>7.2f} {precision:>10.2f} "
              f"{seconds:>8.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller scenes")
    parser.add_argument("--only", choices=("duplicates", "grid", "upsample"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model_uri = export_model(tmp / "model")
        if args.only in (None, "duplicates"):
            duplicates(model_uri, tmp, args.quick)
        if args.only in (None, "grid"):
            print(f"\n2. grid independence: windows shifted by {SHIFT} px, masks >= {EDGE} px "
                  "from the edges, matched at IoU >= 0.9")  # fmt: skip
            print(f"{'scene':<34} {'a':>5} {'b':>5} {'a in b':>8} {'b in a':>8} {'median':>7} "
                  f"{'seconds':>8}")  # fmt: skip
            size = (900, 1300) if args.quick else (1500, 2100)
            scene: Scene = make_scene(HELD_OUT_SEEDS[4], *size)
            settings = SegmentationSettings("automatic", amg=AMG)
            raster = write_s2_geotiff(scene, tmp / "grid.tif")
            fixed = RadiometryParams(stretch="none")  # the same RGB for any area
            for anchor, radiometry, label in (
                ("scene", settings.radiometry, "scene"), ("map", settings.radiometry, "map"),
                ("map", fixed, "map, fixed stretch"),
            ):  # fmt: skip
                grid_independence(
                    f"synthetic {size[0]} x {size[1]}, {label}", raster,
                    replace(settings, chip_anchor=anchor, radiometry=radiometry), model_uri, tmp,
                )  # fmt: skip
            from tests.conftest import shared_data_dir

            data = shared_data_dir()
            if data is None or not (data / SAMPLE).is_file():
                print("real sample: shared data not found, skipped")
            else:
                real = replace(settings, radiometry=RadiometryParams(band_indexes=(1, 2, 3)))
                grid_independence("real sample 370 x 560", data / SAMPLE, real, model_uri, tmp)
        if args.only in (None, "upsample"):
            upsample_recall(model_uri, tmp, args.quick)


if __name__ == "__main__":
    main()
