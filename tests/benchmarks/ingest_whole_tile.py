"""Benchmark: ingest an area the size of a whole Sentinel-2 tile (10980 x 10980 px).

Not a test (it takes minutes): run it by hand and report the figures.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/ingest_whole_tile.py [--workdir DIR]

It generates one whole 10 m tile (B04, B03, B02 as 10980 x 10980 uint16 COGs with
1024 px blocks and overviews, SCL at 20 m, as the Planetary Computer stores them),
serves it from the loopback stack of the tests (pgstac + stac-fastapi-pgstac, the
Range-serving COG host), and runs ``s2sam ingest`` on the tile's own footprint in a
child process. Reported: wall time and peak RSS of that process (``wait4``; a psutil
timeline shows the phase), the HTTP
traffic, and whether the output equals the source pixel for pixel.

The target (DESIGN): peak RSS under 1.5 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from tests.fixtures.s2_world import GeneratedItem, rect_geojson
from tests.fixtures.stac import loopback_stac

TILE = "33UUP"
EPSG = 32633
LEFT, TOP = 300000.0, 5400000.0
WHEN = datetime(2024, 7, 1, 10, 5, 59, 24000, tzinfo=timezone.utc)
ITEM_ID = f"S2B_MSIL2A_{WHEN:%Y%m%dT%H%M%S}_R022_T{TILE}_{WHEN:%Y%m%d}T150000"
BANDS = ("B04", "B03", "B02")
STRIP = 1024


def pattern(band: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Field-like DNs: smooth gradients, parcels and texture (compresses like real L2A)."""
    r, c = np.meshgrid(rows, cols, indexing="ij")
    parcels = ((r // 37) * 7 + (c // 53) * 13) % 17
    value = 1800 + 300 * band + 40 * parcels + 200 * np.sin(r / 900.0) * np.cos(c / 700.0)
    value += (r * 31 + c * 17) % 23
    return value.astype(np.uint16)


def write_big_cog(path: Path, size: int, resolution: float, fill) -> None:
    """A ``size`` x ``size`` COG written strip by strip (never the whole band in memory)."""
    transform = Affine(resolution, 0.0, LEFT, 0.0, -resolution, TOP)
    part = path.with_suffix(".part.tif")
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": fill(np.arange(1), np.arange(1)).dtype,
        "crs": f"EPSG:{EPSG}",
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "ZSTD",
        "zstd_level": 1,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(part, "w", **profile) as dst:
        for row in range(0, size, STRIP):
            rows = np.arange(row, min(size, row + STRIP))
            dst.write(fill(rows, np.arange(size)), 1, window=Window(0, row, size, len(rows)))
    with rasterio.Env(GDAL_CACHEMAX=256):
        rasterio.shutil.copy(
            part,
            path,
            driver="COG",
            compress="DEFLATE",
            predictor="2",
            blocksize="1024",
            overviews="AUTO",
            num_threads="ALL_CPUS",
        )
    part.unlink()


def generate_tile(root: Path, size: int) -> GeneratedItem:
    """The whole tile's COGs under ``root/s2/<id>/`` (kept between runs) and its item."""
    folder = root / "s2" / ITEM_ID
    assets = {}
    for k, band in enumerate(BANDS):
        path = folder / f"{band}.tif"
        if not path.exists():
            write_big_cog(path, size, 10.0, lambda r, c, k=k: pattern(k, r, c))
        assets[band] = (f"s2/{ITEM_ID}/{band}.tif", Affine(10, 0, LEFT, 0, -10, TOP), (size, size))
    scl_size = math.ceil(size / 2)
    path = folder / "SCL.tif"
    if not path.exists():
        write_big_cog(path, scl_size, 20.0, lambda r, c: np.full((len(r), len(c)), 4, np.uint8))
    assets["SCL"] = (
        f"s2/{ITEM_ID}/SCL.tif",
        Affine(20, 0, LEFT, 0, -20, TOP),
        (scl_size, scl_size),
    )
    bounds = (LEFT, TOP - 10 * size, LEFT + 10 * size, TOP)
    return GeneratedItem(
        id=ITEM_ID,
        when=WHEN,
        tile=TILE,
        epsg=EPSG,
        platform="Sentinel-2B",
        orbit=22,
        baseline="05.10",
        cloud_cover=0.0,
        footprint=rect_geojson(bounds, EPSG),
        assets=assets,
    )


def run_ingest(args: list[str]) -> tuple[float, int, list[tuple[float, int]], str]:
    """Wall seconds, peak RSS bytes (``wait4``), an RSS timeline and stdout of ``s2sam ingest``.

    The timeline (psutil, every 0.25 s) shows in which phase the peak falls.
    """
    import psutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "NO_PROXY": "127.0.0.1"}
    start = time.perf_counter()
    timeline: list[tuple[float, int]] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        cmd = [sys.executable, "-m", "pipelines", "ingest", *args]
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        probe = psutil.Process(child.pid)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(psutil.NoSuchProcess):
                timeline.append((time.perf_counter() - start, probe.memory_info().rss))
            time.sleep(0.25)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise SystemExit(f"s2sam ingest failed ({code}):\n{stderr}")
    return wall, usage.ru_maxrss * 1024, timeline, stdout


def equal_to_source(output: Path, root: Path) -> bool:
    """Whether every output band equals its source COG (strip by strip)."""
    with rasterio.open(output) as ds:
        for k, band in enumerate(BANDS, start=1):
            with rasterio.open(root / "s2" / ITEM_ID / f"{band}.tif") as src:
                col = round((ds.transform.c - src.transform.c) / 10)
                row0 = round((ds.transform.f - src.transform.f) / -10)
                for row in range(0, ds.height, STRIP):
                    h = min(STRIP, ds.height - row)
                    a = ds.read(k, window=Window(0, row, ds.width, h))
                    b = src.read(1, window=Window(col, row0 + row, ds.width, h))
                    if not np.array_equal(a, b):
                        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep the generated tile here between runs")
    parser.add_argument("--size", type=int, default=10980, help="tile size in 10 m pixels")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="s2sam-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tile_root = workdir / "tile"
    start = time.perf_counter()
    item = generate_tile(tile_root, args.size)
    generated_s = time.perf_counter() - start
    stack = workdir / "stack"
    shutil.rmtree(stack, ignore_errors=True)
    stack.mkdir()
    # serve the whole tile from the stack's COG root (hard links: no copy)
    for band in (*BANDS, "SCL"):
        target = stack / "cogs" / "s2" / ITEM_ID / f"{band}.tif"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(tile_root / "s2" / ITEM_ID / f"{band}.tif", target)
    with loopback_stac(stack, extra=[item]) as servers:
        area = workdir / "area.geojson"
        left, bottom = LEFT + 1, TOP - 10 * args.size + 1
        area.write_text(
            json.dumps(rect_geojson((left, bottom, LEFT + 10 * args.size - 1, TOP - 1), EPSG))
        )
        out = workdir / "out"
        shutil.rmtree(out, ignore_errors=True)
        servers.cogs.reset()
        day = WHEN.date().isoformat()
        wall, rss, timeline, stdout = run_ingest(
            [
                "--geometry", str(area), "--start-date", day, "--end-date", day,
                "--stac-url", servers.url, "--output-dir", str(out), "--no-progress",
            ]
        )  # fmt: skip
        gets = [r for r in servers.cogs.requests if r.method == "GET"]
        output = Path(stdout.splitlines()[0].split("\t")[0])
        with rasterio.open(output) as ds:
            shape = (ds.height, ds.width)
        report = {
            "tile_px": [args.size, args.size],
            "output_px": list(shape),
            "bands": list(BANDS),
            "ingest_wall_s": round(wall, 1),
            "ingest_peak_rss_mb": round(rss / 2**20),
            "rss_timeline_mb": [(round(t, 1), round(m / 2**20)) for t, m in timeline[::8]],
            "target_peak_rss_mb": 1536,
            "within_target": rss < 1.5 * 2**30,
            "cog_get_requests": len(gets),
            "output_mb": round(output.stat().st_size / 2**20, 1),
            "pixels_equal_source": equal_to_source(output, stack / "cogs"),
            "cpus": os.cpu_count(),
            "tile_generation_s": round(generated_s, 1),
            "stack_startup_s": round(servers.startup_s, 1),
        }
    print(json.dumps(report, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
