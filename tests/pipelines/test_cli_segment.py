import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
gpd = pytest.importorskip("geopandas")
rasterio = pytest.importorskip("rasterio")

from tests.data.fiboa.validate import fiboa_errors  # noqa: E402

S2SAM = Path(sys.executable).parent / "s2sam"
SAMPLE = "s2/ftw_t33uup_2021_b4b3b2b8x2.tif"


def run(*args, env=None):
    return subprocess.run(
        [S2SAM, *map(str, args)], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_prompted_and_automatic_on_the_real_sample(shared_data, tiny_export, tmp_path):
    def point(pid, lon, lat):
        return {
            "type": "Feature",
            "properties": {"label": 1, "prompt_id": pid},
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
        }

    prompts = tmp_path / "prompts.geojson"
    features = [point(7, 13.12, 48.29), point("far", 10.0, 45.0)]
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    cache = {"S2SAM_CACHE_DIR": str(tmp_path / "cache")}
    out = run(
        "segment-raster", "--raster", shared_data / SAMPLE, "--bands", "1,2,3",
        "--prompts", prompts, "--model-uri", tiny_export, "--output-dir", tmp_path / "p",
        env=cache,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "prompted: 1 masks from 1 of 1 chips (1 encoded, 0 from cache)" in out.stdout
    assert "dropped prompt_id 'far'" in out.stdout  # outside the scene: reported, not fatal
    with rasterio.open(tmp_path / "p" / "segmentation.tif") as src:
        assert src.descriptions == ("mask_prompt_7",)
        assert src.crs.to_epsg() == 32633 and src.transform.c == 359130.0

    out = run(
        "segment-raster", "--raster", shared_data / SAMPLE, "--bands", "1,2,3", "--auto",
        "--points-per-side", "4", "--model-uri", tiny_export, "--output-dir", tmp_path / "a",
        env=cache,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "(0 encoded, 1 from cache)" in out.stdout  # the prompted run's embedding
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["parameters"]["amg"]["points_per_side"] == 4
    assert len(gpd.read_parquet(tmp_path / "a" / "polygons.parquet")) == summary["polygons"]
    fields = gpd.read_parquet(tmp_path / "a" / "fields.parquet")
    aside = gpd.read_parquet(tmp_path / "a" / "fields_set_aside.parquet")
    assert len(fields) == summary["fields"]["kept"]
    assert len(fields) + len(aside) == summary["polygons"]  # each polygon kept or set aside
    assert fiboa_errors(tmp_path / "a" / "fields.parquet") == []


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--auto", "--bands", "1,2,3", "--model-uri", "models:/sam-nope@champion"],
            "no registered model 'sam-nope'",
        ),
        (["--auto"], "cannot tell which of the raster's 8 bands"),
        (["--auto", "--bands", "1,2,9"], "band indexes [9] are outside 1..8"),
        (["--prompts", "/no/such.geojson", "--bands", "1,2,3"], "prompts file /no/such.geojson"),
        (["--auto", "--bands", "1,2,3", "--pred-iou-thresh", "1.5"], "pred_iou_thresh"),
        (
            ["--auto", "--bands", "1,2,3", "--backend", "onnxruntime", "--precision", "bf16"],
            "precision bf16 runs on the openvino backend",
        ),
    ],
)
def test_bad_input_is_one_clear_line(shared_data, tmp_path, args, message):
    env = {"S2SAM_HOME": str(tmp_path / "home"), "S2SAM_CACHE_DIR": str(tmp_path / "c")}
    env = {**env, "MLFLOW_TRACKING_URI": ""}
    out = run("segment-raster", "--raster", shared_data / SAMPLE, *args,
              "--output-dir", tmp_path / "o", env=env)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()
