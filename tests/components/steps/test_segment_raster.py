"""Whole-scene runs through the steps: plan, segment, merge; cache, nodata, outputs."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

pytest.importorskip("torch")
gpd = pytest.importorskip("geopandas")

from components.core.params import (  # noqa: E402
    AmgParams,
    ExecutionParams,
    RadiometryParams,
    SegmentationSettings,
)
from components.core.rendering import band_name  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.inference.onnx_sam import SamModel  # noqa: E402
from components.io.model_files import read_manifest  # noqa: E402
from components.io.raster import open_scene  # noqa: E402
from components.steps.merge_masks import merge_scene  # noqa: E402
from components.steps.plan_chips import SceneSource, plan_segmentation  # noqa: E402
from components.steps.segment import segment_shard  # noqa: E402
from components.steps.segment_raster import segment_raster  # noqa: E402

TRANSFORM = Affine(10.0, 0.0, 360_000.0, 0.0, -10.0, 5_350_000.0)
CRS = "EPSG:32633"


def write_scene(path, height=1100, width=1700, nodata_from_col=676):
    """Blobs of colour on a textured background; columns from ``nodata_from_col`` are nodata."""
    rng = np.random.default_rng(0)
    dn = rng.integers(300, 2500, (3, height, width)).astype(np.uint16)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(25):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(20, 90)
        dn[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(500, 4000, (3, 1))
    dn[:, :, nodata_from_col:] = 0
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint16",
        "crs": CRS, "transform": TRANSFORM, "nodata": 0, "tiled": True,
        "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn)
        for b, name in enumerate(("B04", "B03", "B02"), start=1):
            dst.set_band_description(b, name)
        dst.update_tags(processing_baseline="05.10", datetime="2024-06-01T10:00:00Z")
    return path


def prompts_at(points):
    """GeoJSON point prompts at scene pixel (col, row), in the raster CRS."""
    features = []
    for k, (col, row) in enumerate(points):
        x, y = TRANSFORM @ (col + 0.5, row + 0.5)
        features.append(
            {
                "type": "Feature",
                "properties": {"label": 1, "prompt_id": f"p{k}"},
                "geometry": {"type": "Point", "coordinates": [x, y]},
            }
        )
    return json.dumps(
        {
            "type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": CRS}},
            "features": features,
        }
    )


@pytest.fixture(scope="module")
def model(tiny_export):
    return SamModel(tiny_export, read_manifest(tiny_export))


@pytest.fixture
def scene(tmp_path):
    return open_scene(write_scene(tmp_path / "scene.tif"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("S2SAM_CACHE_DIR", str(tmp_path / "cache"))


def settings(mode, **kwargs):
    execution = ExecutionParams(chip_shards=1, encoder_batch_size=2)
    return SegmentationSettings(mode, execution=execution, **kwargs)


def run_steps(model, path, mode, prompts="", **kwargs):
    """plan -> segment (one shard) -> the shard's plan and result, as segment_raster runs them."""
    source = SceneSource("scene", path.parent, path.name)
    (shard,) = plan_segmentation(
        [source], settings(mode, **kwargs), prompts=prompts, chip_size=1024, model_uri="unused"
    )
    return shard, segment_shard(shard, path.parent, prompts, model=model)


def test_scene_band_choice_and_baseline(scene):
    assert scene.bands == (1, 2, 3) and scene.band_names == ("B04", "B03", "B02")
    assert scene.processing_baseline == "05.10" and scene.nodata == 0


def test_prompted_scene_encodes_only_chips_with_prompts_then_uses_the_cache(model, scene):
    # grid over 1100 x 1700 at 1024 px: rows start at 0 and 76, columns at 0, 338, 676:
    # both prompts lie in the top-left chip only
    shard, first = run_steps(model, scene.path, "prompted", prompts_at([(100, 50), (300, 60)]))
    (planned,) = shard.scenes
    assert planned.chips == (0,)  # 1 of the grid's 6 chips is planned
    assert first.stats.encoder_images == first.stats.chips_segmented == 1
    assert [m.prompt_id for m in first.masks["scene"]] == ["p0", "p1"]

    # new prompts on the same scene: no encoder work at all
    _, second = run_steps(model, scene.path, "prompted", prompts_at([(200, 20), (150, 70)]))
    assert second.stats.encoder_images == 0 and second.stats.encoder_calls == 0
    assert second.stats.cache_hits >= 1
    assert {m.prompt_id for m in second.masks["scene"]} <= {"p0", "p1"}


def test_automatic_scene_skips_nodata_chips_and_survives_empty_ones(model, scene, tmp_path):
    params = AmgParams(points_per_side=4)  # default thresholds: random weights give no masks
    shard, result = run_steps(model, scene.path, "automatic", amg=params)
    assert result.stats.chips_total == 6
    assert result.stats.chips_nodata == 2  # the two right-hand chips hold only nodata
    assert result.stats.chips_segmented == 4
    assert result.masks.get("scene", []) == []  # nothing survived: empty, not an error
    merged = merge_scene(
        shard.scenes[0], [], shard, root=scene.path.parent, prompts="", lineage=model.lineage,
        output_dir=tmp_path / "out",
    )  # fmt: skip
    with rasterio.open(merged.files.segmentation) as src:
        assert src.read(1).max() == 0
    assert len(gpd.read_parquet(merged.files.polygons)) == 0


def test_outputs_are_georeferenced_like_the_scene(model, scene, tmp_path):
    out = segment_raster(
        scene.path,
        tmp_path / "out",
        SegmentationSettings("prompted"),
        prompts=prompts_at([(100, 100), (600, 900)]),
        model_uri=str(model_dir(model)),
    )
    with rasterio.open(out.files.segmentation) as src, rasterio.open(scene.path) as ref:
        assert src.crs == ref.crs and src.transform == ref.transform
        assert (src.width, src.height) == (ref.width, ref.height)
        assert src.count == 2 and src.dtypes == ("uint8", "uint8")
        assert src.descriptions == (band_name("p0"), band_name("p1"))
        assert src.tags()["s2sam_model_type"] == "vit_tiny"
        assert src.tags()["source_processing_baseline"] == "05.10"
        assert src.overviews(1)  # a real COG
        bands = src.read()
    assert bands[0, 100, 100] == 1 and bands[1, 900, 600] == 1  # each prompt's own pixel
    polygons = gpd.read_parquet(out.files.polygons)
    assert list(polygons["prompt_id"]) == ["p0", "p1"]
    assert polygons.crs.to_epsg() == 32633
    assert (polygons["area_m2"] == polygons["pixel_count"] * 100).all()
    summary = json.loads(out.files.summary.read_text())
    assert summary["masks"] == 2 and summary["model"]["model_type"] == "vit_tiny"
    assert summary["stats"]["chips_without_prompts"] == 2  # of 6: never read nor encoded
    assert out.files.quicklook.stat().st_size > 1000


def test_a_failed_write_leaves_no_partial_outputs(model, scene, tmp_path):
    shard, result = run_steps(model, scene.path, "prompted", prompts_at([(100, 100)]))
    scene.path.unlink()  # merging re-reads the scene: make that step fail
    out = tmp_path / "out"
    with pytest.raises(InputError, match="does not exist"):
        merge_scene(
            shard.scenes[0], result.masks["scene"], shard, root=scene.path.parent,
            prompts=prompts_at([(100, 100)]), lineage=model.lineage, output_dir=out,
        )  # fmt: skip
    assert not out.exists() or list(out.iterdir()) == []


def model_dir(model):
    return model.lineage.get("model_uri")


def test_bad_inputs_fail_before_heavy_work(scene, tmp_path, tiny_export):
    auto, prompted = SegmentationSettings("automatic"), SegmentationSettings("prompted")
    with pytest.raises(InputError, match="does not exist"):
        segment_raster(tmp_path / "nope.tif", tmp_path / "o", auto)
    with pytest.raises(InputError, match="needs prompts"):
        segment_raster(scene.path, tmp_path / "o", prompted, model_uri=str(tiny_export))
    with pytest.raises(InputError, match="band 'B08' not found"):
        radiometry = RadiometryParams(band_names=("B08", "B03", "B02"))
        segment_raster(
            scene.path, tmp_path / "o", SegmentationSettings("automatic", radiometry=radiometry),
            model_uri=str(tiny_export),
        )  # fmt: skip
    with pytest.raises(InputError, match="no usable prompt"):
        segment_raster(
            scene.path, tmp_path / "o", prompted, model_uri=str(tiny_export),
            prompts=prompts_at([(5000, 5000)]),
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_click_on_nodata_is_reported_not_silently_empty(model, scene, tmp_path):
    # columns from 676 on are nodata: p1's click has nothing to segment
    out = segment_raster(
        scene.path, tmp_path / "out", SegmentationSettings("prompted"),
        prompts=prompts_at([(100, 100), (1000, 500)]), model_uri=str(model_dir(model)),
    )  # fmt: skip
    (dropped,) = out.summary["dropped_prompts"]
    assert dropped["prompt_id"] == "p1" and "nodata" in dropped["reason"]
    assert out.summary["masks"] == 1 and out.summary["prompt_ids"] == ["p0", "p1"]


def test_an_all_nodata_raster_is_an_error_not_an_empty_result(tmp_path, tiny_export):
    from components.errors import NoDataError

    path = write_scene(tmp_path / "empty.tif", height=300, width=400, nodata_from_col=0)
    with pytest.raises(NoDataError, match=r"empty.tif has no valid pixel .*nothing to segment"):
        segment_raster(
            path, tmp_path / "o", SegmentationSettings("automatic"), model_uri=str(tiny_export)
        )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", ["automatic", "prompted"])
def test_upsampled_runs_write_on_the_scene_grid_with_finer_polygons(model, tmp_path, mode):
    from shapely import get_coordinates

    scene = open_scene(write_scene(tmp_path / "small.tif", height=300, width=600))
    settings = SegmentationSettings(
        mode, upsample=2, amg=AmgParams(points_per_side=4, pred_iou_thresh=0.0,
                                        stability_score_thresh=0.0),
    )  # fmt: skip
    prompts = prompts_at([(100, 100), (300, 60)]) if mode == "prompted" else ""
    out = segment_raster(
        scene.path, tmp_path / "out", settings, prompts=prompts, model_uri=str(model_dir(model))
    )
    with rasterio.open(out.files.segmentation) as src, rasterio.open(scene.path) as ref:
        assert src.transform == ref.transform and (src.width, src.height) == (ref.width, ref.height)
        bands = src.read()
    assert bands.any()
    assert out.summary["parameters"]["upsample"] == 2
    assert out.grid.shape == (1, 2)  # 600 x 1200 working px at 1024 px chips
    polygons = gpd.read_parquet(out.files.polygons)
    assert len(polygons) and polygons.is_valid.all()
    xy = get_coordinates(polygons.geometry.values)
    off_grid = (xy[:, 0] - TRANSFORM.c) % 10 != 0  # vertices on the 5 m working grid
    assert off_grid.any() and ((xy[:, 0] - TRANSFORM.c) % 5 == 0).all()
