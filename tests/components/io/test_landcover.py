"""Land cover onto the scene's grid: local rasters and polygons, and WorldCover over STAC.

Real files and servers throughout: GeoTIFFs and vector files written in ``tmp_path``, a
COG host on loopback for range reads, and the loopback STAC API (pgstac) with the
generated WorldCover of the fields scene (:mod:`tests.fixtures.worldcover`). Expected
cropland is computed independently with pyproj at the grid's pixel centres, so a pixel
shifted by the warp fails the test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

from components.errors import InputError
from components.io.landcover import (
    TargetGrid,
    cropland_on_grid,
    mosaic_cropland,
    worldcover_hrefs,
    worldcover_on_grid,
)
from components.io.network import NetworkOptions
from tests.fixtures.http import serve_cogs
from tests.fixtures.s2_world import fields_scene, pixel_centres, rect_geojson
from tests.fixtures.worldcover import (
    CROPLAND,
    WATER,
    WORLDCOVER_BLOB_COLLECTION,
    non_crop_parcels,
    sample_worldcover,
    worldcover_on_scene,
)

UTM = "EPSG:32633"
GRID_T = Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_300_000.0)
H, W = 40, 50
RES = 1.0 / 12000
NET = NetworkOptions(timeout_s=10.0, retries=2, backoff_s=0.05)
TO_LONLAT = Transformer.from_crs(32633, 4326, always_xy=True)


def grid_lonlat() -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the test grid's pixel centres."""
    xs, ys = pixel_centres(GRID_T, (H, W))
    return TO_LONLAT.transform(xs, ys)


def lattice_around(margin_px: int = 40) -> tuple[Affine, tuple[int, int]]:
    """A WorldCover-lattice (1/12000 degree) transform and shape around the test grid."""
    lon, lat = grid_lonlat()
    col0 = int(np.floor(lon.min() / RES)) - margin_px
    col1 = int(np.ceil(lon.max() / RES)) + margin_px
    row0 = int(np.floor(-lat.max() / RES)) - margin_px
    row1 = int(np.ceil(-lat.min() / RES)) + margin_px
    return Affine(RES, 0, col0 * RES, 0, -RES, -row0 * RES), (row1 - row0, col1 - col0)


def write_raster(path: Path, data: np.ndarray, transform: Affine, crs: str | None, **kw) -> Path:
    profile = {
        "driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": data.dtype, "transform": transform, "tiled": True, "blockxsize": 256,
        "blockysize": 256, **kw,
    }  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def nearest(data: np.ndarray, transform: Affine, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    col, row = ~transform @ (lon, lat)
    return data[np.floor(row).astype(int), np.floor(col).astype(int)]


def on_grid(source, classes=(40,)):
    return cropland_on_grid(source, UTM, GRID_T, H, W, classes, network=NET)


# --- rasters --------------------------------------------------------------------------


def test_a_worldcover_like_raster_in_lonlat_is_warped_exactly(tmp_path):
    transform, shape = lattice_around()
    rng = np.random.default_rng(0)
    classes = rng.choice(np.array([10, 40, 50, 80], np.uint8), size=shape)
    path = write_raster(tmp_path / "wc.tif", classes, transform, "EPSG:4326", nodata=0)
    lon, lat = grid_lonlat()
    expected = nearest(classes, transform, lon, lat)
    np.testing.assert_array_equal(on_grid(path), expected == 40)
    np.testing.assert_array_equal(on_grid(str(path), (40, 80)), np.isin(expected, (40, 80)))


def test_a_class_edge_in_lonlat_falls_on_the_predicted_grid_pixels(tmp_path):
    transform, shape = lattice_around()
    lon, _ = grid_lonlat()
    edge_col = round(float(np.median(lon) - transform.c) / RES)  # a lattice line mid-grid
    classes = np.full(shape, 10, np.uint8)
    classes[:, :edge_col] = 40
    path = write_raster(tmp_path / "edge.tif", classes, transform, "EPSG:4326")
    cropland = on_grid(path)
    west = lon < transform.c + edge_col * RES
    np.testing.assert_array_equal(cropland, west)
    assert 0 < cropland.sum() < cropland.size and cropland[:, 0].all() and not cropland[:, -1].any()


def test_a_raster_in_the_grids_crs_at_5_m(tmp_path):
    # 5 m pixels from 599 900; cropland west of x = 600 203: grid columns 0-19 (centres
    # 600 005 ... 600 195), column 20's centre (600 205) lies east.
    transform = Affine(5.0, 0.0, 599_900.0, 0.0, -5.0, 5_300_100.0)
    data = np.full((120, 160), 30, np.uint8)
    xs = 599_900.0 + (np.arange(160) + 0.5) * 5.0
    data[:, xs < 600_203.0] = 40
    path = write_raster(tmp_path / "utm.tif", data, transform, UTM)
    expected = np.zeros((H, W), bool)
    expected[:, :20] = True
    np.testing.assert_array_equal(on_grid(path), expected)


def test_categorical_classes_of_a_users_raster(tmp_path):
    data = np.zeros((H, W), np.uint16)
    data[:, 10:] = 1001  # the user's "arable" code
    data[30:, :] = 7
    path = write_raster(tmp_path / "own.tif", data, GRID_T, UTM)
    expected = np.zeros((H, W), bool)
    expected[:30, 10:] = True
    np.testing.assert_array_equal(on_grid(path, (1001,)), expected)
    np.testing.assert_array_equal(on_grid(path, (0, 1001)), data != 7)


def test_the_first_source_with_data_wins_each_pixel(tmp_path):
    west = np.full((H, W), 40, np.uint8)
    west[:, 25:] = 0  # nodata: the second source fills it
    east = np.full((H, W), 10, np.uint8)
    east[:5, :] = 40
    paths = [
        str(write_raster(tmp_path / "a.tif", west, GRID_T, UTM, nodata=0)),
        str(write_raster(tmp_path / "b.tif", east, GRID_T, UTM, nodata=0)),
    ]
    grid = TargetGrid(UTM, GRID_T, H, W)
    cropland, missing = mosaic_cropland(paths, grid, (40,), "test raster", NET)
    expected = np.zeros((H, W), bool)
    expected[:, :25] = True
    expected[:5, :] = True
    np.testing.assert_array_equal(cropland, expected)
    assert not missing.any()


# --- rasters: errors ------------------------------------------------------------------


def test_a_missing_raster_is_named(tmp_path):
    with pytest.raises(InputError, match=r"land cover raster .*nope\.tif does not exist"):
        on_grid(tmp_path / "nope.tif")


def test_a_file_that_is_not_a_raster(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not a GeoTIFF")
    with pytest.raises(InputError, match=r"notes\.tif cannot be read as a raster"):
        on_grid(path)


def test_a_raster_without_crs(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", np.full((H, W), 40, np.uint8), GRID_T, None)
    with pytest.raises(InputError, match=r"nocrs\.tif has no CRS"):
        on_grid(path)


def test_a_raster_covering_part_of_the_area_says_how_much_is_missing(tmp_path):
    # 10 of 50 columns lie east of the raster: 400 of 2000 pixels
    data = np.full((H, 40), 40, np.uint8)
    path = write_raster(tmp_path / "part.tif", data, GRID_T, UTM)
    with pytest.raises(InputError) as err:
        on_grid(path)
    assert str(err.value) == (
        f"land cover raster {path} does not cover the area: 400 of 2000 pixels (20.0%) "
        "lie outside it or on its nodata"
    )


def test_nodata_inside_the_area_counts_as_missing(tmp_path):
    data = np.full((H, W), 40, np.uint8)
    data[0, 0:3] = 0
    path = write_raster(tmp_path / "holes.tif", data, GRID_T, UTM, nodata=0)
    with pytest.raises(InputError, match=r"3 of 2000 pixels \(0\.1%\)"):
        on_grid(path)


def test_a_raster_elsewhere_is_missing_everywhere(tmp_path):
    far = Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 5_000_000.0)
    path = write_raster(tmp_path / "far.tif", np.full((H, W), 40, np.uint8), far, UTM)
    with pytest.raises(InputError, match=r"2000 of 2000 pixels \(100\.0%\)"):
        on_grid(path)


def test_only_the_areas_window_of_a_large_cog_is_read(tmp_path, monkeypatch):
    """A 0.5 x 0.5 degree COG (36 MB, 512 px blocks) over HTTP: the read fetches a few
    blocks by range requests, not the file."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("GDAL_HTTP_PROXY", raising=False)
    transform, _ = lattice_around()
    size = 6000
    big = Affine(RES, 0, transform.c - 0.2, 0, -RES, transform.f + 0.2)
    rng = np.random.default_rng(1)
    data = rng.choice(np.array([10, 40], np.uint8), size=(size, size))
    path = tmp_path / "big.tif"
    write_raster(path, data, big, "EPSG:4326", blockxsize=512, blockysize=512)
    with serve_cogs(tmp_path, require_sas=False) as cogs:
        cropland = on_grid(f"{cogs.url}/big.tif")
        fetched = sum(_range_bytes(r.range) for r in cogs.requests if r.status == 206)
        assert not [r for r in cogs.requests if r.status == 200 and r.method == "GET"]
    lon, lat = grid_lonlat()
    np.testing.assert_array_equal(cropland, nearest(data, big, lon, lat) == 40)
    assert fetched < 0.05 * path.stat().st_size, (fetched, path.stat().st_size)


def _range_bytes(header: str | None) -> int:
    first, _, last = (header or "bytes=0-0").removeprefix("bytes=").partition("-")
    return int(last) - int(first) + 1


# --- polygons -------------------------------------------------------------------------


def block_utm(col0: int, row0: int, col1: int, row1: int) -> tuple[float, float, float, float]:
    """Grid columns [col0, col1) x rows [row0, row1) as UTM bounds."""
    left, top = GRID_T @ (col0, row0)
    right, bottom = GRID_T @ (col1, row1)
    return (left, bottom, right, top)


def expected_block(*blocks: tuple[int, int, int, int]) -> np.ndarray:
    out = np.zeros((H, W), bool)
    for col0, row0, col1, row1 in blocks:
        out[row0:row1, col0:col1] = True
    return out


def test_geojson_polygons_in_lonlat_are_the_cropland(tmp_path):
    features = [
        {"type": "Feature", "properties": {}, "geometry": rect_geojson(block_utm(*b))}
        for b in ((5, 3, 20, 15), (30, 20, 45, 38))
    ]
    path = tmp_path / "fields.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    expected = expected_block((5, 3, 20, 15), (30, 20, 45, 38))
    np.testing.assert_array_equal(on_grid(path), expected)


@pytest.mark.parametrize("suffix", ["gpkg", "parquet"])
def test_geopackage_and_geoparquet_in_another_crs(tmp_path, suffix):
    polygon = shapely.box(*block_utm(0, 0, 12, 40))  # the west 12 columns
    frame = gpd.GeoDataFrame({"crop": ["wheat"]}, geometry=[polygon], crs=UTM).to_crs(3857)
    path = tmp_path / f"fields.{suffix}"
    frame.to_parquet(path) if suffix == "parquet" else frame.to_file(path)
    np.testing.assert_array_equal(on_grid(path), expected_block((0, 0, 12, 40)))


def test_polygons_cut_by_the_areas_edge_and_holes(tmp_path):
    outer = shapely.box(*block_utm(-10, -10, 20, 20))
    hole = shapely.box(*block_utm(5, 5, 10, 10))
    frame = gpd.GeoDataFrame(geometry=[outer.difference(hole)], crs=UTM)
    frame.to_file(tmp_path / "cut.gpkg")
    expected = expected_block((0, 0, 20, 20)) & ~expected_block((5, 5, 10, 10))
    np.testing.assert_array_equal(on_grid(tmp_path / "cut.gpkg"), expected)


def test_a_missing_vector_is_named(tmp_path):
    with pytest.raises(InputError, match=r"land cover vector .*nope\.geojson does not exist"):
        on_grid(tmp_path / "nope.geojson")


def test_a_file_that_is_not_a_vector(tmp_path):
    path = tmp_path / "junk.geojson"
    path.write_text("{ not json")
    with pytest.raises(InputError, match=r"junk\.geojson cannot be read as a vector file"):
        on_grid(path)


def test_a_vector_without_crs(tmp_path):
    frame = gpd.GeoDataFrame(geometry=[shapely.box(*block_utm(0, 0, 5, 5))], crs=None)
    with pytest.warns(UserWarning, match="crs"):
        frame.to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(InputError, match=r"nocrs\.gpkg has no CRS"):
        on_grid(tmp_path / "nocrs.gpkg")


def test_a_vector_elsewhere_or_without_polygons(tmp_path):
    far = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1000, 1000)], crs=UTM)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(InputError, match=r"far\.gpkg has no polygon in the area"):
        on_grid(tmp_path / "far.gpkg")
    points = gpd.GeoDataFrame(geometry=[shapely.Point(GRID_T @ (3, 3))], crs=UTM)
    points.to_file(tmp_path / "points.gpkg")
    with pytest.raises(InputError, match=r"points\.gpkg has no polygon in the area"):
        on_grid(tmp_path / "points.gpkg")


# --- WorldCover on the loopback STAC API ------------------------------------------------


def fields_grid(dx_px: int = 0) -> tuple[str, Affine, int, int]:
    scene = fields_scene()
    return scene.crs, scene.transform @ Affine.translation(dx_px, 0), scene.height, scene.width


def test_worldcover_tiles_newest_version_first(stac):
    lon, lat = TO_LONLAT.transform([606_000, 609_000], [5_294_000, 5_296_000])
    bbox = (lon[0], lat[0], lon[1], lat[1])
    hrefs = worldcover_hrefs(stac.url, bbox, network=NET)
    names = [h.rsplit("/", 1)[1] for h in hrefs]
    assert names == [
        "ESA_WorldCover_10m_2021_v200_N45E015a_Map.tif",
        "ESA_WorldCover_10m_2021_v200_N45E015b_Map.tif",
        "ESA_WorldCover_10m_2020_v100_N45E015_Map.tif",
    ]
    assert all(h.startswith(stac.cogs.url) for h in hrefs)


def test_worldcover_on_the_fields_scene_is_the_2021_map(stac):
    crs, transform, height, width = fields_grid()
    cropland = worldcover_on_grid(stac.url, crs, transform, height, width, network=NET)
    np.testing.assert_array_equal(cropland, worldcover_on_scene(2021) == CROPLAND)
    # the drawn parcels are not cropland, the water one only since 2021; all else is
    labels = fields_scene().labels
    drawn = non_crop_parcels(year=2021)
    assert WATER in drawn.values() and WATER not in non_crop_parcels(year=2020).values()
    for label in drawn:
        assert not cropland[labels == label].any(), label
    others = (labels > 0) & ~np.isin(labels, list(drawn))
    assert cropland[others].mean() > 0.999
    # both 2021 tiles were read (the scene spans them), the 2020 tile never was
    read = {r.path.rsplit("/", 1)[1] for r in stac.cogs.requests if r.method == "GET"}
    assert read == {
        "ESA_WorldCover_10m_2021_v200_N45E015a_Map.tif",
        "ESA_WorldCover_10m_2021_v200_N45E015b_Map.tif",
    }


def test_worldcover_on_an_upsampled_crop_of_the_scene(stac):
    """Another grid than the tiles' neighbours (5 m, a crop): matches the generated map."""
    transform = Affine(5.0, 0.0, 603_000.0, 0.0, -5.0, 5_296_000.0)
    cropland = worldcover_on_grid(stac.url, UTM, transform, 300, 400, (40,), network=NET)
    expected = sample_worldcover(UTM, transform, (300, 400), 2021) == CROPLAND
    np.testing.assert_array_equal(cropland, expected)


def test_no_worldcover_tile_for_the_area(stac):
    with pytest.raises(InputError) as err:
        worldcover_hrefs(stac.url, (12.0, 48.2, 12.1, 48.3), network=NET)
    assert str(err.value) == (
        f"no land cover tile covers the area (collection 'esa-worldcover' on {stac.url}, "
        "bbox [12.00000, 48.20000, 12.10000, 48.30000])"
    )


def test_worldcover_that_covers_part_of_the_area(stac):
    crs, transform, height, width = fields_grid(dx_px=1000)  # 500 of 1500 columns still on it
    with pytest.raises(InputError, match=r"ESA WorldCover \(2 tiles from .*\) does not cover"):
        worldcover_on_grid(stac.url, crs, transform, height, width, network=NET)


def test_worldcover_from_blob_storage_is_signed_and_the_key_stays_secret(stac, monkeypatch, caplog):
    import planetary_computer.sas

    monkeypatch.setenv("PC_SDK_SAS_URL", stac.cogs.sas_url)
    monkeypatch.setenv("GDAL_HTTP_PROXY", stac.cogs.proxy)
    planetary_computer.sas.TOKEN_CACHE.clear()
    secret = "pc-key-worldcover-do-not-log"
    caplog.set_level(logging.DEBUG)
    lon, lat = TO_LONLAT.transform([606_000, 609_000], [5_294_000, 5_296_000])
    try:
        hrefs = worldcover_hrefs(
            stac.url, (lon[0], lat[0], lon[1], lat[1]), network=NET, pc_key=secret,
            collection=WORLDCOVER_BLOB_COLLECTION,
        )  # fmt: skip
        assert len(hrefs) == 3 and all("sig=" in h for h in hrefs)
        grid = TargetGrid(UTM, Affine(10.0, 0.0, 603_000.0, 0.0, -10.0, 5_296_000.0), 200, 200)
        cropland, missing = mosaic_cropland(hrefs, grid, (40,), "WorldCover tile", NET)
    finally:
        planetary_computer.sas.TOKEN_CACHE.clear()
    assert not missing.any()
    expected = sample_worldcover(UTM, grid.transform, grid.shape, 2021) == CROPLAND
    np.testing.assert_array_equal(cropland, expected)
    assert stac.cogs.subscription_keys == [secret]
    blob = [r for r in stac.cogs.requests if r.host.endswith(".blob.core.windows.net")]
    assert blob and all(r.signed and r.status in (200, 206) for r in blob)
    assert secret not in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("components")]
    assert ours and not any("sig=" in m for m in ours)  # our logs name tiles, not URLs
