"""``s2sam ingest`` against the loopback STAC API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from pipelines.cli import main
from tests.fixtures.s2_world import REAL_TIF, expected_dn, real_roi, roi

FAST = ["--timeout", "10", "--retries", "1", "--no-progress"]


def write_area(tmp_path, feature):
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps(feature))
    return path


def test_console_command_writes_a_georeferenced_cog(stac, tmp_path):
    """The real entry point in a child process: ``python -m pipelines ingest``."""
    area = write_area(tmp_path, roi("edge"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines", "ingest", "--geometry", str(area)]
    cmd += ["--start-date", "2023-05-02", "--end-date", "2023-05-02", "--stac-url", stac.url]
    cmd += ["--output-dir", str(out), *FAST]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == str(out / "manifest.json")
    path, key, tiles, cloud = lines[0].split("\t")
    assert cloud == "cloud 0.0%"
    assert key == "S2B_20230502_R022" and sorted(tiles.split(",")) == ["33UTP", "33UTQ"]
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.descriptions == ("B04", "B03", "B02")
        np.testing.assert_array_equal(
            ds.read(1), expected_dn("B04", 0, ds.transform, 32633, (ds.height, ds.width))
        )


def test_cli_on_the_real_scene(real_stac, shared_data, tmp_path, capsys):
    area = write_area(tmp_path, real_roi())
    out = tmp_path / "out"
    args = ["ingest", "--geometry", str(area), "--start-date", "2021-06-01"]
    args += ["--end-date", "2021-09-30", "--max-cloud-cover", "100", "--bands", "B08,B04"]
    args += ["--stac-url", real_stac.url, "--output-dir", str(out), *FAST]
    assert main(args) == 0
    path = capsys.readouterr().out.splitlines()[0].split("\t")[0]
    with rasterio.open(path) as ds, rasterio.open(shared_data / REAL_TIF) as src:
        window = Window(7, 4, ds.width, ds.height)
        np.testing.assert_array_equal(ds.read(), src.read([4, 1], window=window))
        assert ds.descriptions == ("B08", "B04")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lookback-days", "5"], "not both"),
        (["--bands", "B04,B09"], "'B09' is not a 10 or 20 m"),
        (["--max-scenes", "0"], "max_scenes"),
        (["--window", "2023-05-01/2023-05-10"], "give windows, or start_date and end_date"),
        (["--cropland-mask", "/no/such/mask.tif"], "cropland_mask: no file at"),
    ],
)
def test_input_mistakes_exit_2_with_one_line(stac, tmp_path, capsys, extra, message):
    area = write_area(tmp_path, roi("single"))
    args = ["ingest", "--geometry", str(area), "--start-date", "2023-05-01", "--end-date"]
    args += ["2023-05-31", "--stac-url", stac.url, "--output-dir", str(tmp_path / "o"), *FAST]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2sam ingest: error: ") and message in err and "Traceback" not in err
    assert stac.api.layer.requests == []


def test_missing_or_bad_geometry_file(stac, tmp_path, capsys):
    base = ["ingest", "--start-date", "2023-05-01", "--end-date", "2023-05-31"]
    base += ["--stac-url", stac.url, "--output-dir", str(tmp_path / "o"), *FAST]
    assert main([*base, "--geometry", str(tmp_path / "nope.geojson")]) == 2
    assert "geometry file" in capsys.readouterr().err
    bad = write_area(tmp_path, {"type": "Point", "coordinates": [12, 48]})
    assert main([*base, "--geometry", str(bad)]) == 2
    assert "not a polygon" in capsys.readouterr().err


def test_no_scene_exits_1_and_says_what_was_searched(stac, tmp_path, capsys):
    area = write_area(tmp_path, roi("single"))
    args = ["ingest", "--geometry", str(area), "--start-date", "2022-01-01", "--end-date"]
    args += ["2022-01-31", "--stac-url", stac.url, "--output-dir", str(tmp_path / "o"), *FAST]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no scene found" in err and "2022-01-01T00:00:00Z/2022-01-31" in err


def test_one_clear_acquisition_per_window(stac, tmp_path, capsys):
    area = write_area(tmp_path, roi("single"))
    args = ["ingest", "--geometry", str(area), "--window", "2023-05-14/2023-05-31"]
    args += ["--window", "2023-05-01/2023-05-07", "--max-cloud-cover", "100"]
    args += ["--stac-url", stac.url, "--output-dir", str(tmp_path / "o"), *FAST]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines[:-1]] == [
        "S2B_20230502_R022",
        "S2A_20230515_R122",
    ]


def test_overlapping_windows_exit_2_before_any_request(stac, tmp_path, capsys):
    area = write_area(tmp_path, roi("single"))
    args = ["ingest", "--geometry", str(area), "--window", "2023-05-01/2023-05-10"]
    args += ["--window", "2023-05-10/2023-05-20", "--stac-url", stac.url]
    args += ["--output-dir", str(tmp_path / "o"), *FAST]
    assert main(args) == 2
    assert "windows overlap" in capsys.readouterr().err
    assert stac.api.layer.requests == []
