"""Outputs appear as a set or not at all, also when the run is killed half-way.

A real ``s2sam segment-raster`` process is killed (SIGKILL: no clean-up runs) at chosen
points of writing its outputs; the folder is then checked, and a second run must
clean up and leave a complete set.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

pytest.importorskip("torch")

from components.io.outputs import SUMMARY, WORK_PREFIX, is_complete

TRANSFORM = Affine(10.0, 0.0, 360_000.0, 0.0, -10.0, 5_350_000.0)

KILLER = """
import os, signal, sys
import components.io.outputs as outputs
stage, n = sys.argv[1], int(sys.argv[2])
count = [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if stage == "replace":  # the n-th rename of the set into place
    real = os.replace
    class Os:
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, a, b):
            count[0] += 1
            if count[0] == n:
                die()
            real(a, b)
    outputs.os = Os()
elif stage == "polygons":  # while the files are being written
    def polygons(*args, **kwargs):
        die()
    outputs._write_polygons = polygons
from pipelines.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture
def raster(tmp_path):
    rng = np.random.default_rng(0)
    dn = rng.integers(300, 2500, (3, 300, 400)).astype(np.uint16)
    dn[:, 100:200, 150:300] = 3000
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "height": 300, "width": 400, "count": 3, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": TRANSFORM, "nodata": 0}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn)
        for b, name in enumerate(("B04", "B03", "B02"), start=1):
            dst.set_band_description(b, name)
    return path


def prompts(tmp_path, col, row):
    x, y = TRANSFORM @ (col + 0.5, row + 0.5)
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "features": [{"type": "Feature", "properties": {"label": 1, "prompt_id": 1},
                      "geometry": {"type": "Point", "coordinates": [x, y]}}],
    }  # fmt: skip
    path = tmp_path / f"prompts_{col}_{row}.geojson"
    path.write_text(json.dumps(doc))
    return path


def segment(tmp_path, raster, model, prompt_file, out, kill=None):
    args = ["segment-raster", "--raster", str(raster), "--prompts", str(prompt_file),
            "--model-uri", str(model), "--output-dir", str(out)]  # fmt: skip
    env = {**os.environ, "S2SAM_CACHE_DIR": str(tmp_path / "cache")}
    if kill is None:
        cmd = [sys.executable, "-m", "pipelines", *args]
    else:
        cmd = [sys.executable, "-c", KILLER, *map(str, kill), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("kill", [("polygons", 0), ("replace", 1), ("replace", 3)])
def test_a_killed_run_leaves_no_mixed_set_and_the_next_run_cleans_up(
    tmp_path, raster, tiny_export, kill
):
    out = tmp_path / "out"
    first = segment(tmp_path, raster, tiny_export, prompts(tmp_path, 200, 150), out)
    assert first.returncode == 0, first.stderr
    assert is_complete(out)
    old = json.loads((out / SUMMARY).read_text())

    killed = segment(tmp_path, raster, tiny_export, prompts(tmp_path, 50, 50), out, kill=kill)
    assert killed.returncode == -signal.SIGKILL
    # the previous set is retired first: no summary vouches for a mix of old and new
    assert not (out / SUMMARY).exists()
    assert not is_complete(out)

    again = segment(tmp_path, raster, tiny_export, prompts(tmp_path, 50, 50), out)
    assert again.returncode == 0, again.stderr
    assert is_complete(out)
    assert not list(out.glob(WORK_PREFIX + "*"))  # the killed run's temporary folder is gone
    new = json.loads((out / SUMMARY).read_text())
    assert new["created"] >= old["created"] and new["sha256"] != old["sha256"]
