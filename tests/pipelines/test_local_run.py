"""Both pipelines end to end on kfp.local: loopback STAC API, real Sentinel-2, MLflow model."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
gpd = pytest.importorskip("geopandas")
rasterio = pytest.importorskip("rasterio")

from components.io.registry import register_model  # noqa: E402
from tests.data.fiboa.validate import fiboa_errors  # noqa: E402
from tests.fixtures.s2_world import real_roi  # noqa: E402

S2SAM = Path(sys.executable).parent / "s2sam"
EMPTY_PROMPTS = json.dumps({"type": "FeatureCollection", "features": []})
DATES = ["--start-date", "2021-06-01", "--end-date", "2021-09-30", "--max-cloud-cover", "100"]


def s2sam(*args, env=None):
    return subprocess.run(
        [S2SAM, *map(str, args)], capture_output=True, text=True, timeout=1200,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


SECRETS = {
    "PC_SDK_SUBSCRIPTION_KEY": "planted-pc-key-0f3a9c",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-pw-77b2",
    "KF_PIPELINES_TOKEN": "planted-kfp-token-5d1e",
}
"""Credentials as a user's shell would hold them: none may reach a log or an output."""


def assert_no_secret_in(folder: Path, *texts: str) -> None:
    for text in texts:
        for secret in SECRETS.values():
            assert secret not in text
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS.values():
            assert secret.encode() not in data, f"{secret} in {path}"


@pytest.fixture
def setup(real_stac, tiny_export, local_registry, tmp_path):
    """An area inside the real sample, and the tiny model as the registry's champion."""
    register_model(tiny_export, "sam-vit_tiny", "champion", alias_explicit=True)
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps(real_roi()))
    return real_stac, area


def check_sinks(out: Path, mode: str):
    run = json.loads((out / "run.json").read_text())
    (scene,) = list((out / "s2_raster").glob("*.tif"))
    assert (out / "s2_raster" / "manifest.json").is_file()
    (acq,) = run["metadata"]["segmentation_mask"]["acquisitions"]
    assert acq == "S2B_20210617_R022" and scene.stem == acq  # the clear June date
    seg = out / "segmentation_mask" / acq / "segmentation.tif"
    with rasterio.open(seg) as s, rasterio.open(scene) as ref:
        assert s.crs == ref.crs and s.transform == ref.transform
        assert (s.width, s.height) == (ref.width, ref.height)
        assert s.tags()["s2sam_model_name"] == "sam-vit_tiny"
        bands = s.read()
    polygons = gpd.read_parquet(out / "polygons" / f"{acq}.parquet")
    assert polygons.crs.to_epsg() == 32633
    assert set(polygons["model_version"]) <= {"1"}
    fields = out / "fields" / f"{acq}.parquet"
    assert fiboa_errors(fields) == []
    assert gpd.read_parquet(fields).crs == polygons.crs
    (metrics,) = run["metrics"].values()
    assert metrics["fields"] == len(gpd.read_parquet(fields))
    assert metrics["model_version"] == 1.0 and metrics["scenes"] == 1.0
    assert metrics["chips"] == 1.0  # 560 x 370 px: one padded chip
    assert run["seconds"] > 0
    return run, bands, polygons, scene


def test_auto_segment_s2_end_to_end(setup, tmp_path):
    stac, area = setup
    out = tmp_path / "auto"
    started = time.perf_counter()
    result = s2sam(
        "run", "auto-segment-s2", "--geometry", area, *DATES, "--stac-url", stac.url,
        "--model-uri", "models:/sam-vit_tiny@champion", "--points-per-side", "4",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--chip-shards", "2",
        "--output-dir", out, "--keep-intermediates", env=SECRETS,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"auto_segment_s2 local run: {seconds:.0f} s wall")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "auto-segment-s2 finished" in result.stdout
    run, bands, polygons, _ = check_sinks(out, "automatic")
    assert bands.dtype == np.uint32 and bands.shape[0] == 1
    assert len(polygons) == run["metrics"][next(iter(run["metrics"]))]["polygons"]
    for task in ("check-auto-inputs", "ingest-s2", "resolve-model", "plan-chips", "merge-masks"):
        assert f"task {task}: SUCCESS" in result.stderr  # per-task progress
    # task logs (run.log), run.json, every sink and the kept KFP intermediates
    assert_no_secret_in(out, result.stdout, result.stderr)


def two_clicks(folder: Path) -> Path:
    """Two clicks inside the real sample's area, in lon/lat (RFC 7946), as a prompts file."""
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(32633, 4326, always_xy=True)
    clicks = [(360500.0, 5350000.0), (363500.0, 5351500.0)]
    features = [
        {
            "type": "Feature",
            "properties": {"label": 1, "prompt_id": f"field-{k}"},
            "geometry": {"type": "Point", "coordinates": list(to_lonlat.transform(x, y))},
        }
        for k, (x, y) in enumerate(clicks)
    ]
    prompts = folder / "prompts.geojson"
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return prompts


def test_segment_s2_end_to_end(setup, tmp_path):
    stac, area = setup
    prompts = two_clicks(tmp_path)
    out = tmp_path / "prompted"
    started = time.perf_counter()
    result = s2sam(
        "run", "segment-s2", "--geometry", area, "--prompts", prompts, *DATES,
        "--stac-url", stac.url, "--model-uri", "models:/sam-vit_tiny@champion",
        "--output-dir", out,
    )  # fmt: skip
    print(f"segment_s2 local run: {time.perf_counter() - started:.0f} s wall")
    assert result.returncode == 0, result.stderr[-3000:]
    _run, bands, polygons, _scene = check_sinks(out, "prompted")
    assert bands.shape[0] == 2 and bands.dtype == np.uint8
    # one non-empty band per prompt (random weights: masks are blobs, not fields)
    assert all(band.any() for band in bands)
    assert list(polygons["prompt_id"]) == ["field-0", "field-1"]


SAM2_AUTO = (
    "--amg-defaults", "sam2", "--points-per-side", "4", "--use-m2m",
    "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
)  # fmt: skip
"""SAM 2's generator defaults and m2m, filters off (random weights score low)."""


@pytest.mark.parametrize("pipeline", ["segment-s2", "auto-segment-s2"])
def test_a_sam21_model_end_to_end(real_stac, sam2_export, local_registry, tmp_path, pipeline):
    """SAM 2.1 Hiera tiny through the real export, the registry and kfp.local."""
    register_model(sam2_export, None, "champion", alias_explicit=True)
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps(real_roi()))
    prompted = pipeline == "segment-s2"
    mode_args = ("--prompts", two_clicks(tmp_path)) if prompted else SAM2_AUTO
    result = s2sam(
        "run", pipeline, "--geometry", area, *mode_args, *DATES, "--stac-url", real_stac.url,
        "--model-type", "sam2.1_hiera_tiny", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (seg,) = (tmp_path / "out" / "segmentation_mask").glob("*/segmentation.tif")
    with rasterio.open(seg) as s:
        assert s.tags()["s2sam_model_name"] == "sam-sam2.1_hiera_tiny"
        bands = s.read()
    (polygons,) = (tmp_path / "out" / "polygons").glob("*.parquet")
    if prompted:
        assert bands.shape[0] == 2 and all(band.any() for band in bands)
        assert list(gpd.read_parquet(polygons)["prompt_id"]) == ["field-0", "field-1"]
        return
    assert bands.shape[0] == 1 and bands.max() >= 1 and len(gpd.read_parquet(polygons)) >= 1
    summary = json.loads(next((tmp_path / "out").rglob("summary.json")).read_text())
    amg = summary["parameters"]["amg"]
    assert amg["use_m2m"] and amg["points_per_batch"] == 64  # given, and SAM 2's default


def test_segment_s2_marks_the_clicked_fields(stac, fields_export, local_registry, tmp_path):
    """segment_s2 on the synthetic field scene (served like real L2A, no shared data
    needed) with the trained field model: each click's band is 1 under the click and
    covers most of the clicked parcel."""
    from pyproj import Transformer

    from tests.fixtures.s2_world import fields_area, fields_scene

    register_model(fields_export, "sam-fields", "champion", alias_explicit=True)
    scene = fields_scene()
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps(fields_area()))  # the scene less 500 m (ingest crops to it)
    to_lonlat = Transformer.from_crs(32633, 4326, always_xy=True)
    chosen = [
        p for p in scene.parcels
        if p.inradius >= 15 and 60 < p.interior[0] < 1440 and 60 < p.interior[1] < 1240
    ][:3]  # fmt: skip
    features = []
    for p in chosen:
        x, y = rasterio.transform.xy(scene.transform, p.interior[1], p.interior[0])
        features.append(
            {
                "type": "Feature",
                "properties": {"label": 1, "prompt_id": f"parcel-{p.label}"},
                "geometry": {"type": "Point", "coordinates": list(to_lonlat.transform(x, y))},
            }
        )
    prompts = tmp_path / "prompts.geojson"
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "fields"
    started = time.perf_counter()
    result = s2sam(
        "run", "segment-s2", "--geometry", area, "--prompts", prompts,
        "--start-date", "2022-07-01", "--end-date", "2022-07-31", "--stac-url", stac.url,
        "--model-uri", "models:/sam-fields@champion", "--output-dir", out,
    )  # fmt: skip
    print(f"segment_s2 on the field scene: {time.perf_counter() - started:.0f} s wall")
    assert result.returncode == 0, result.stderr[-3000:]
    (seg,) = list((out / "segmentation_mask").glob("*/segmentation.tif"))
    with rasterio.open(seg) as src:
        assert src.descriptions == tuple(f"mask_prompt_parcel-{p.label}" for p in chosen)
        bands = src.read().astype(bool)
        # the output grid is the scene's grid, cropped to the area
        col0 = round((src.transform.c - scene.transform.c) / 10)
        row0 = round((scene.transform.f - src.transform.f) / 10)
        assert (col0, row0) == (50, 50) and src.transform.a == 10.0
        labels = scene.labels[row0 : row0 + src.height, col0 : col0 + src.width]
    for p, band in zip(chosen, bands, strict=True):
        col, row = p.interior
        assert band[row - row0, col - col0], p.label
        inside = labels == p.label
        assert np.count_nonzero(band & inside) >= 0.5 * np.count_nonzero(inside), p.label


def polygon_pixels(path: Path, shape: tuple[int, int], transform) -> list[np.ndarray]:
    """Each polygon of a parquet file as pixels of the grid ``transform`` (centres inside)."""
    from rasterio.features import geometry_mask

    return [~geometry_mask([g], shape, transform) for g in gpd.read_parquet(path).geometry]


def cropland_shares(path: Path, cropland: np.ndarray, transform) -> list[float]:
    """Cropland share of each polygon of a parquet file, on the scene grid ``transform``."""
    return [
        float(cropland[inside].mean()) if inside.any() else 0.0
        for inside in polygon_pixels(path, cropland.shape, transform)
    ]


def best_iou(parcel: np.ndarray, masks: list[np.ndarray]) -> float:
    """The best IoU of ``parcel`` with any of ``masks``."""
    return max((float((m & parcel).sum() / (m | parcel).sum()) for m in masks), default=0.0)


def test_auto_segment_s2_two_seasons_and_the_cropland_filter(
    stac, fields_export, local_registry, tmp_path
):
    """auto_segment_s2 with a July and a September window over the synthetic fields and
    ESA WorldCover from the same STAC API: each date and their fusion are written, and
    segments over the generated forest, water and village are set aside with the
    reason, while no segment on cropland is."""
    from tests.fixtures.s2_world import fields_area, fields_scene
    from tests.fixtures.worldcover import CROPLAND, non_crop_parcels, worldcover_on_scene

    register_model(fields_export, "sam-fields", "champion", alias_explicit=True)
    scene = fields_scene()
    area = tmp_path / "area.geojson"
    # one chip (1024 px) per date, holding the forest, water and village parcels
    col0, row0 = 250, 150
    area.write_text(json.dumps(fields_area(pixels=(col0, row0, col0 + 1024, row0 + 1024))))
    out = tmp_path / "seasons"
    started = time.perf_counter()
    result = s2sam(
        "run", "auto-segment-s2", "--geometry", area, "--stac-url", stac.url,
        "--window", "2022-09-01/2022-09-30", "--window", "2022-07-01/2022-07-31",
        "--cropland-mask", "esa-worldcover", "--model-uri", "models:/sam-fields@champion",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--output-dir", out,
    )  # fmt: skip
    print(f"auto_segment_s2, two windows: {time.perf_counter() - started:.0f} s wall")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    july, september, fused = run["metadata"]["segmentation_mask"]["acquisitions"]
    assert (july[:12], september[:12], fused) == ("S2A_20220714", "S2A_20220913", "fused")
    (metrics,) = run["metrics"].values()
    assert metrics["scenes"] == 2.0 and metrics["fused_fields"] > 0
    polygons = gpd.read_parquet(out / "polygons" / "fused.parquet")
    assert set(polygons["dates_found"]) <= {1, 2} and (polygons["dates_found"] == 2).any()
    assert set(polygons["acquisitions"]) <= {july, september, f"{july},{september}"}
    assert fiboa_errors(out / "fields" / "fused.parquet") == []
    # The land cover and the parcels on the output grid (the area's window of the scene).
    window = (slice(row0, row0 + 1024), slice(col0, col0 + 1024))
    cropland = worldcover_on_scene()[window] == CROPLAND
    labels = scene.labels[window]
    with rasterio.open(out / "segmentation_mask" / fused / "segmentation.tif") as src:
        transform = src.transform
        assert src.shape == cropland.shape
    for layer in (july, september, fused):
        folder = out / "segmentation_mask" / layer
        aside = gpd.read_parquet(folder / "fields_set_aside.parquet")
        by_cropland = aside["reason"].str.startswith("cropland share").to_numpy()
        assert by_cropland.sum() > 0, layer  # the forest, water and village parcels
        shares = np.array(cropland_shares(folder / "fields_set_aside.parquet", cropland, transform))
        # whole masks: the filter's own share, up to polygon vs. pixel rounding at the outline
        assert shares[by_cropland].max() < 0.5 + 0.05, layer
        kept = gpd.read_parquet(folder / "polygons.parquet")
        kept_shares = np.array(cropland_shares(folder / "polygons.parquet", cropland, transform))
        weighted = np.average(kept_shares, weights=kept.area)
        print(
            f"{layer}: {len(kept)} kept (cropland share min {kept_shares.min():.2f}, mean "
            f"{weighted:.3f} by area), {int(by_cropland.sum())} set aside as not cropland"
        )
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["fields"]["set_aside"]["cropland"] == by_cropland.sum()
        # no kept segment is one of the forest, water or village parcels; none of the
        # set-aside ones is a field
        kept_pixels = polygon_pixels(folder / "polygons.parquet", cropland.shape, transform)
        for label in non_crop_parcels():
            assert best_iou(labels == label, kept_pixels) < 0.5, (layer, label)
        aside_pixels = polygon_pixels(
            folder / "fields_set_aside.parquet", cropland.shape, transform
        )
        for label in set(np.unique(labels)) - set(non_crop_parcels()) - {0}:
            assert (
                best_iou(labels == label, [aside_pixels[k] for k in np.flatnonzero(by_cropland)])
                < 0.5
            )
    assert scene.labels.shape == (1300, 1500)


@pytest.mark.parametrize(
    "args,message",
    [
        (["segment-s2"], "segment_s2 needs prompts"),
        (["auto-segment-s2", "--start-date", "2021-09-30", "--end-date", "2021-06-01"], "end"),
        (["auto-segment-s2", "--model-uri", "models:/sam-vit_tiny@nope"], "no alias 'nope'"),
    ],
)
def test_bad_input_fails_fast_with_a_clear_line(setup, tmp_path, args, message):
    stac, area = setup
    dates = [] if "--start-date" in args else DATES
    started = time.perf_counter()
    result = s2sam(
        "run", *args[:1], "--geometry", area, *dates, *args[1:], "--stac-url", stac.url,
        "--output-dir", tmp_path / "o",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "o").exists()  # nothing started


def test_invalid_geometry_is_rejected_before_any_work(setup, tmp_path):
    stac, _ = setup
    bowtie = {
        "type": "Polygon",
        "coordinates": [[[13.1, 48.3], [13.2, 48.4], [13.2, 48.3], [13.1, 48.4], [13.1, 48.3]]],
    }
    area = tmp_path / "bowtie.geojson"
    area.write_text(json.dumps(bowtie))
    result = s2sam(
        "run", "auto-segment-s2", "--geometry", area, *DATES, "--stac-url", stac.url,
        "--model-uri", "models:/sam-vit_tiny@champion", "--output-dir", tmp_path / "o",
    )  # fmt: skip
    assert result.returncode == 2
    assert "self-intersect" in result.stderr.lower() and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_failing_task_surfaces_its_own_message(setup, tmp_path):
    """Inside the pipeline (as from the Kubeflow UI): the task's line, not KFP's trace."""
    from components.errors import TaskFailed
    from pipelines.local import run_pipeline

    stac, area = setup
    with pytest.raises(TaskFailed, match=r"check_inputs: .*at least one prompt") as err:
        run_pipeline(
            "segment_s2",
            {"geometry": area.read_text(), "prompts": EMPTY_PROMPTS,
             "start_date": "2021-06-01", "end_date": "2021-09-30", "stac_url": stac.url},
            tmp_path / "o",
        )  # fmt: skip
    assert "Traceback" not in str(err.value)
    assert err.value.exit_code == 2  # the user's input, as `s2sam run` reports it


def test_main_job_offline_stops_within_a_minute_naming_what_it_cannot_reach(tmp_path):
    """`make run` on a machine without internet: no model yet, no STAC API reachable."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "S2SAM_"))}
    env.update(
        HOME=str(tmp_path), XDG_DATA_HOME="", XDG_CACHE_HOME="",
        S2SAM_STAC_URL="http://127.0.0.1:9/api/stac/v1",  # the discard port: nothing listens
    )  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(
        [S2SAM, "run", "auto-segment-s2", "--geometry", repo / "examples" / "farm.geojson",
         "--start-date", "2024-06-01", "--end-date", "2024-08-31", "--ensure-model",
         "--output-dir", tmp_path / "out"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert time.perf_counter() - started < 60
    assert result.returncode == 1  # a service it cannot reach, not the user's input (2)
    assert "cannot reach http://127.0.0.1:9/api/stac/v1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
