"""The ingest against real servers on loopback: pgstac + stac-fastapi, a COG host, SAS tokens.

Nothing is mocked: the search goes through pystac-client to stac-fastapi-pgstac, hrefs
are signed by ``planetary_computer.sign_inplace`` and pixels come from COGs by HTTP
range requests. Expected pixels are the source files' own (same UTM zone: the output
must be an exact copy) or the generated world's function (across zones).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from components.core.params import SearchParams
from components.core.scene_choice import (
    NoSceneError,
    TooCloudyError,
    cover_area,
    group_acquisitions,
)
from components.core.search import resolve_time_range
from components.core.seasons import DateWindow, resolve_windows
from components.errors import InputError, ServiceError
from components.io.ingest import ingest_params, ingest_s2
from components.io.network import NetworkOptions, redact
from components.io.scene_cogs import MANIFEST_NAME
from components.io.stac import blob_containers, tile_item
from tests.fixtures.s2_world import (
    ACQUISITIONS,
    BLOB_COLLECTION,
    GARBAGE_DN,
    REAL_ACQUISITIONS,
    REAL_TIF,
    expected_dn,
    fields_area,
    real_roi,
    roi,
)

NET = NetworkOptions(timeout_s=10.0, retries=2, backoff_s=0.05)
"""Generous timeouts where no fault is armed: a busy CI machine must not make a test flaky."""
FAULTY = NetworkOptions(timeout_s=2.0, retries=2, backoff_s=0.05)
"""Short timeouts where a stall is armed: 3 attempts of 2 s."""
MAY = {"start_date": "2023-05-01", "end_date": "2023-05-31"}
D1 = {"start_date": "2023-05-02", "end_date": "2023-05-02"}


DATES = ("start_date", "end_date", "lookback_days", "reference_time")


def params_of(geometry, *, stac_url=None, network=NET, pc_key=None, **kwargs):
    """Ingest parameters from flat keywords: dates, search parameters, the rest."""
    dates = {k: kwargs.pop(k) for k in DATES if k in kwargs}
    return ingest_params(
        geometry, resolve_time_range(**dates), SearchParams(**kwargs), stac_url=stac_url,
        network=network, pc_key=pc_key,
    )  # fmt: skip


def ingest(stac, out: Path, area, *, progress=None, **kwargs):
    kwargs.setdefault("stac_url", stac.url)
    return ingest_s2(params_of(json.dumps(area), **kwargs), out, progress)


def read(path: Path):
    """Pixels, profile and ``(descriptions, tags)`` of an output COG."""
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, (ds.descriptions, ds.tags())


def source_window(path: Path, out_transform, shape):
    """The window of a source raster that the output grid covers (same CRS and pixel size)."""
    with rasterio.open(path) as src:
        col = round((out_transform.c - src.transform.c) / src.transform.a)
        row = round((out_transform.f - src.transform.f) / src.transform.e)
        assert col >= 0 and row >= 0
        assert col + shape[1] <= src.width and row + shape[0] <= src.height
        return src.read(1, window=Window(col, row, shape[1], shape[0]))


def item_id(stac, tile: str, day: str) -> str:
    return next(
        i["id"]
        for i in stac.items
        if i["properties"]["s2:mgrs_tile"] == tile
        and i["properties"]["datetime"].startswith(day)
        and i["collection"] == "sentinel-2-l2a"
        and i["id"].endswith("T150000")
    )


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


# --- real Planetary Computer items (no server) ------------------------------------


def test_real_planetary_computer_items_are_understood(shared_data):
    import pystac
    import shapely

    doc = json.loads((shared_data / "stac" / "pc_sentinel-2-l2a_items.json").read_text())
    items = [pystac.Item.from_dict(f) for f in doc["features"]]
    tiles = [tile_item(i) for i in items]
    assert len(tiles) == 33
    first = tiles[0]
    assert (first.mgrs_tile, first.epsg, first.processing_baseline) == ("60VUK", 32660, "02.12")
    assert (first.platform, first.relative_orbit) == ("Sentinel-2A", 116)
    assert {"B04", "B03", "B02", "B8A", "SCL"} <= set(first.assets)
    (acquisition,) = group_acquisitions(tiles)  # one datatake over three UTM zones
    assert acquisition.key == "S2A_20190101_R116" and len(acquisition.tiles) == 33
    # on the real footprints: an area touching four tiles of zone 59 needs only two
    area = shapely.box(170.9, 57.7, 171.2, 58.2)
    assert sum(t.footprint.intersects(area) for t in acquisition.tiles) == 4
    cover = cover_area(acquisition.tiles, area, prefer_epsg=32659)
    assert sorted(t.mgrs_tile for t in cover.tiles) == ["59VME", "59VNE"]
    assert cover.coverage == pytest.approx(1.0)
    assert blob_containers(doc) == {("sentinel2l2a01", "sentinel2-l2")}


def test_redaction_hides_tokens_and_secrets():
    text = "GET https://a.blob.core.windows.net/c/x.tif?st=1&sig=abc failed for key k3y"
    assert redact(text, "k3y") == (
        "GET https://a.blob.core.windows.net/c/x.tif?<redacted> failed for key <redacted>"
    )


# --- pixels -------------------------------------------------------------------------


def test_single_tile_is_an_exact_copy_of_the_source_window(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("single"), **D1)
    (scene,) = result.scenes
    assert scene.path.name == "S2B_20230502_R022.tif" and scene.tiles == ("33UTP",)
    data, profile, _ = read(scene.path)
    assert (
        profile["crs"].to_epsg() == 32633
        and profile["dtype"] == "uint16"
        and profile["nodata"] == 0
    )
    assert data.shape == (3, 100, 100)
    source = stac.root / "s2" / item_id(stac, "33UTP", "2023-05-02")
    for k, band in enumerate(("B04", "B03", "B02")):
        expected = source_window(source / f"{band}.tif", profile["transform"], data.shape[1:])
        np.testing.assert_array_equal(data[k], expected)
    # every range request was a range request: no whole file was downloaded
    gets = [r for r in stac.cogs.requests if r.method == "GET"]
    assert gets and all(r.range and r.status == 206 for r in gets)


def test_real_sentinel2_pixels_and_the_clear_date(real_stac, shared_data, tmp_path):
    """The done-when criterion: a georeferenced COG whose pixels equal the source window."""
    result = ingest(
        real_stac,
        tmp_path,
        real_roi(),
        start_date="2021-06-01",
        end_date="2021-09-30",
        max_cloud_cover=100,
    )
    (scene,) = result.scenes
    june_id, _, first, _ = REAL_ACQUISITIONS[0]
    assert scene.key == "S2B_20210617_R022" and scene.item_ids == (june_id,)
    with rasterio.open(scene.path) as ds, rasterio.open(shared_data / REAL_TIF) as src:
        data = ds.read()
        col = round((ds.transform.c - src.transform.c) / 10)
        row = round((ds.transform.f - src.transform.f) / -10)
        assert (col, row, ds.width, ds.height) == (7, 4, 560, 370)
        window = Window(col, row, ds.width, ds.height)
        expected = src.read([first + 1, first + 2, first + 3], window=window)
        np.testing.assert_array_equal(data, expected)
        assert ds.crs == src.crs
        # a COG: tiled, compressed, with an overview, band names and the metadata downstream needs
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.compression.name == "deflate" and ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1) == [2]
        assert ds.descriptions == ("B04", "B03", "B02")
        tags = ds.tags()
        assert tags["datetime"] == "2021-06-17T10:05:59.024000Z"
        assert tags["item_ids"] == june_id and tags["tiles"] == "33UUP"
        assert tags["processing_baseline"] == "03.00" and tags["boa_add_offset"] == "0"
        assert float(tags["cloud_fraction"]) == 0.0 and tags["bands"] == "B04,B03,B02"
    manifest = json.loads(result.manifest_path.read_text())
    screened = {s["acquisition"]: s for s in manifest["screened"]}
    assert screened["S2B_20210925_R022"]["cloud_fraction"] > 0.2
    assert (
        not screened["S2B_20210925_R022"]["selected"] and screened["S2B_20210617_R022"]["selected"]
    )
    assert manifest["scenes"][0]["file"] == scene.path.name
    assert manifest["grid"]["crs"] == "EPSG:32633" and manifest["grid"]["width"] == 560


def test_mosaic_across_a_tile_edge_is_exact(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("edge"), **D1)
    (scene,) = result.scenes
    assert sorted(scene.tiles) == ["33UTP", "33UTQ"]
    data, profile, _ = read(scene.path)
    for k, band in enumerate(("B04", "B03", "B02")):
        np.testing.assert_array_equal(
            data[k], expected_dn(band, 0, profile["transform"], 32633, data.shape[1:])
        )


def test_mosaic_across_a_utm_zone_edge(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("zone"), **D1)
    (scene,) = result.scenes
    assert sorted(scene.tiles) == ["32UQU", "33UTP"]
    assert result.grid.epsg == 32633  # the zone of the area's centroid
    data, profile, _ = read(scene.path)
    assert (data > 0).all(), "no hole along the zone edge"
    expected = expected_dn("B04", 0, profile["transform"], 32633, data.shape[1:]).astype(int)
    error = np.abs(data[0].astype(int) - expected)
    # the zone-32 half is resampled (nearest: within ~7 m, ~25 DN per 10 m); the rest is a copy
    assert error.max() <= 30
    west = profile["transform"].c + 10 * np.arange(data.shape[2]) < 278000
    assert error[:, ~west].max() == 0 and error[:, west].mean() > 0


def test_an_area_in_a_tile_overlap_takes_one_tile_of_its_zone(stac, tmp_path):
    (scene,) = ingest(stac, tmp_path, roi("overlap"), **D1).scenes
    assert scene.tiles == ("33UTP",)


def test_20m_bands_are_resampled_to_10m(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("single"), bands="B04,B11", **D1)
    data, profile, (descriptions, _) = read(result.scenes[0].path)
    assert descriptions == ("B04", "B11")
    with rasterio.open(stac.root / "s2" / item_id(stac, "33UTP", "2023-05-02") / "B11.tif") as src:
        b11 = src.read(1)
        col = (profile["transform"].c - src.transform.c) / 10
        row = (profile["transform"].f - src.transform.f) / -10
    rows = ((row + np.arange(data.shape[1])) // 2).astype(int)
    cols = ((col + np.arange(data.shape[2])) // 2).astype(int)
    np.testing.assert_array_equal(data[1], b11[np.ix_(rows, cols)])


def test_progress_is_reported_per_stage(stac, tmp_path):
    calls = []
    ingest(stac, tmp_path, roi("edge"), progress=lambda *call: calls.append(call), **MAY)
    clouds = [c for c in calls if c[0] == "clouds"]
    reads = [c for c in calls if c[0] == "read"]
    assert clouds[-1] == ("clouds", 5, 5) and [c[1] for c in clouds] == [1, 2, 3, 4, 5]
    assert reads[-1] == ("read", 3, 3)  # one scene, 3 bands, one strip each


def test_margin_widens_the_window(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("single"), margin_m=100, **D1)
    assert result.grid.shape == (120, 120)
    data, _, _ = read(result.scenes[0].path)
    assert (data > 0).all()


# --- choice -------------------------------------------------------------------------


def keys(result):
    return [s.key for s in result.scenes]


def test_least_cloudy_latest_and_all(stac, tmp_path):
    area, wide = roi("single"), {**MAY, "max_cloud_cover": 100}
    # D2 is cloudy, D3 20 % cloudy, D5 lacks data on 30 % of the area: D1 and D4 are clear
    assert keys(ingest(stac, tmp_path / "a", area, **wide)) == ["S2A_20230515_R122"]
    assert keys(ingest(stac, tmp_path / "b", area, max_scenes=2, **wide)) == [
        "S2B_20230502_R022",
        "S2A_20230515_R122",
    ]
    latest = ingest(stac, tmp_path / "c", area, strategy="latest", **wide)
    assert keys(latest) == ["S2A_20230515_R122"]
    screened = json.loads(latest.manifest_path.read_text())["screened"]
    assert [s["acquisition"] for s in screened] == ["S2A_20230515_R122", "S2B_20230522_R022"]
    result = ingest(stac, tmp_path / "d", area, strategy="all", max_roi_cloud_fraction=0.3, **wide)
    assert keys(result) == ["S2B_20230502_R022", "S2B_20230512_R022", "S2A_20230515_R122"]
    fractions = {s.key: s.cloud_fraction for s in result.scenes}
    assert 0.1 < fractions["S2B_20230512_R022"] < 0.3
    assert leftovers(tmp_path / "d") == sorted(
        [MANIFEST_NAME, "S2A_20230515_R122.tif", "S2B_20230502_R022.tif", "S2B_20230512_R022.tif"]
    )


def test_lookback_from_a_reference_time(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("single"), lookback_days=5, reference_time="2023-05-03")
    assert keys(result) == ["S2B_20230502_R022"]


def ingest_windows(stac, out: Path, area, windows: str, **kwargs):
    """Ingest over date windows (seasons), as the pipelines resolve them."""
    ranges = resolve_windows(DateWindow(windows=windows), kwargs.pop("reference_time", None))
    params = ingest_params(
        json.dumps(area), ranges, SearchParams(**kwargs), stac_url=stac.url, network=NET
    )
    return ingest_s2(params, out)


def test_each_window_gets_its_clearest_acquisition_on_one_grid(stac, tmp_path):
    # Across all of May the two clear dates are D1 and D4; one window each picks both,
    # and the cloudy D2 next to D1 loses within the first window.
    result = ingest_windows(
        stac, tmp_path, roi("single"), "2023-05-14/2023-05-31 2023-05-01/2023-05-07",
        max_cloud_cover=100,
    )  # fmt: skip
    assert keys(result) == ["S2B_20230502_R022", "S2A_20230515_R122"]
    assert [s.window for s in result.scenes] == [0, 1]  # windows sorted by start
    manifest = json.loads(result.manifest_path.read_text())
    assert [s["window"] for s in manifest["scenes"]] == [0, 1]
    assert manifest["search"]["windows"] == [
        "2023-05-01T00:00:00Z/2023-05-07T23:59:59.999999Z",
        "2023-05-14T00:00:00Z/2023-05-31T23:59:59.999999Z",
    ]
    grids = {read(s.path)[1]["transform"] for s in result.scenes}
    assert len(grids) == 1


def test_relative_windows_count_back_from_the_reference_time(stac, tmp_path):
    result = ingest_windows(
        stac, tmp_path, roi("single"), "-21d/-19d,-8d/-7d", reference_time="2023-05-22",
        max_cloud_cover=100,
    )  # fmt: skip
    assert keys(result) == ["S2B_20230502_R022", "S2A_20230515_R122"]


def test_a_window_without_a_usable_scene_fails_naming_its_dates(stac, tmp_path):
    with pytest.raises(TooCloudyError) as err:
        ingest_windows(
            stac, tmp_path / "out", roi("single"), "2023-05-01/2023-05-03,2023-05-05/2023-05-05",
            max_cloud_cover=100,
        )  # fmt: skip
    assert "S2A_20230505_R122" in str(err.value)
    assert leftovers(tmp_path / "out") == []


def test_worldcover_cropland_is_read_onto_the_scenes_grid(stac, tmp_path):
    from tests.fixtures.worldcover import CROPLAND, worldcover_on_scene

    params = ingest_params(
        json.dumps(fields_area()), resolve_time_range("2022-07-01", "2022-07-31"),
        stac_url=stac.url, network=NET, cropland_mask="esa-worldcover",
    )  # fmt: skip
    result = ingest_s2(params, tmp_path)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["cropland"] == {"file": "cropland.tif", "source": "esa-worldcover"}
    with rasterio.open(tmp_path / "cropland.tif") as src:
        cropland = src.read(1)
        assert src.transform == read(result.scenes[0].path)[1]["transform"]
    expected = worldcover_on_scene()[50 : 50 + cropland.shape[0], 50 : 50 + cropland.shape[1]]
    np.testing.assert_array_equal(cropland, expected == CROPLAND)
    assert 0 < cropland.mean() < 1  # the generated forest, water and village are not cropland


def test_the_cropland_is_read_once_and_again_when_the_ingest_rewrites_it(tmp_path):
    from components.core.area import Grid
    from components.io.scene_cogs import read_cropland, write_cropland

    grid = Grid(32633, Affine(10, 0, 431250, 0, -10, 5412870), width=40, height=30)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"scenes": []}))
    assert read_cropland(tmp_path) is None  # no cropland filter in this run
    first = np.zeros((30, 40), dtype=bool)
    first[5:20, 10:30] = True
    write_cropland(tmp_path, grid, first)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"cropland": {"file": "cropland.tif"}}))
    once = read_cropland(tmp_path)
    assert once is not None
    np.testing.assert_array_equal(once, first)
    assert read_cropland(tmp_path) is once  # every merge and the fusion share one read
    assert not once.flags.writeable  # so none of them can change it for the others
    write_cropland(tmp_path, grid, ~first)  # a new file, even within one clock tick
    np.testing.assert_array_equal(read_cropland(tmp_path), ~first)


def test_a_cropland_raster_not_covering_the_area_fails_before_any_pixel(stac, tmp_path):
    from tests.fixtures.s2_world import write_cog

    mask = tmp_path / "landcover.tif"  # a 1 km square in the corner of the area
    write_cog(
        mask, np.full((100, 100), 40, np.uint8), Affine(10, 0, 600_500, 0, -10, 5_299_500), 32633
    )
    params = ingest_params(
        json.dumps(fields_area()), resolve_time_range("2022-07-01", "2022-07-31"),
        stac_url=stac.url, network=NET, cropland_mask=str(mask),
    )  # fmt: skip
    with pytest.raises(InputError, match=r"cropland_mask: land cover raster .* does not cover"):
        ingest_s2(params, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_a_users_land_cover_with_its_own_cropland_classes(stac, tmp_path):
    from tests.fixtures.s2_world import FIELDS_ORIGIN, FIELDS_SHAPE, write_cog

    classes = np.full(FIELDS_SHAPE, 3, np.uint8)  # a national scheme: 7 arable, 8 orchard
    classes[:, :600], classes[:, 600:700] = 7, 8
    left, top = FIELDS_ORIGIN
    mask = tmp_path / "national.tif"
    write_cog(mask, classes, Affine(10, 0, left, 0, -10, top), 32633)
    params = ingest_params(
        json.dumps(fields_area()), resolve_time_range("2022-07-01", "2022-07-31"),
        stac_url=stac.url, network=NET, cropland_mask=str(mask), cropland_classes=(7, 8),
    )  # fmt: skip
    ingest_s2(params, tmp_path / "out")
    with rasterio.open(tmp_path / "out" / "cropland.tif") as src:
        cropland = src.read(1)
    np.testing.assert_array_equal(cropland, np.isin(classes, (7, 8))[50:-50, 50:-50])


def test_a_missing_cropland_file_is_named_before_any_request(tmp_path):
    with pytest.raises(InputError, match="cropland_mask: no file at"):
        ingest_params(
            json.dumps(roi("single")), resolve_time_range(**MAY),
            stac_url="http://127.0.0.1:9", cropland_mask=str(tmp_path / "nope.tif"),
        )  # fmt: skip


def test_raster_classes_with_a_polygon_mask_are_refused_before_any_request(tmp_path):
    polygons = tmp_path / "fields.geojson"
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InputError, match=r"cropland_classes \[7\] apply to a land-cover raster"):
        ingest_params(
            json.dumps(roi("single")), resolve_time_range(**MAY),
            stac_url="http://127.0.0.1:9", cropland_mask=str(polygons), cropland_classes=(7,),
        )  # fmt: skip


def test_mixed_baselines_are_harmonised_and_stale_duplicates_dropped(stac, tmp_path):
    result = ingest(stac, tmp_path, roi("edge"), start_date="2023-05-15", end_date="2023-05-15")
    (scene,) = result.scenes
    assert scene.processing_baseline == "05.09" and scene.boa_add_offset == -1000
    assert all(i.endswith("T150000") for i in scene.item_ids)  # not the 04.00 duplicate
    data, profile, (_, tags) = read(scene.path)
    assert not (data == GARBAGE_DN).any()
    for k, band in enumerate(("B04", "B03", "B02")):
        # 33UTQ is in the pre-04.00 convention: rebased by +1000, it joins 33UTP seamlessly
        np.testing.assert_array_equal(
            data[k], expected_dn(band, 3, profile["transform"], 32633, data.shape[1:])
        )
    assert sorted(tags["processing_baselines"].split(",")) == ["03.01", "05.09"]


def test_every_scene_too_cloudy_lists_the_fractions(stac, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TooCloudyError) as err:
        ingest(
            stac,
            out,
            roi("single"),
            start_date="2023-05-05",
            end_date="2023-05-05",
            max_cloud_cover=100,
        )
    assert "S2A_20230505_R122: cloud/shadow 100.0%" in str(err.value)
    assert leftovers(out) == []


def test_no_scene_repeats_the_search(stac, tmp_path):
    with pytest.raises(NoSceneError) as err:
        ingest(stac, tmp_path, roi("single"), start_date="2022-05-01", end_date="2022-05-31")
    text = str(err.value)
    assert "no scene found" in text and "'sentinel-2-l2a'" in text and stac.url in text
    assert "datetime 2022-05-01T00:00:00Z/2022-05-31T23:59:59.999999Z" in text
    assert "eo:cloud_cover <= 30" in text and "bbox [12.0" in text


def test_tile_cloud_cover_is_filtered_by_the_server(stac, tmp_path):
    cloudy_day = {"start_date": "2023-05-05", "end_date": "2023-05-05"}
    assert ACQUISITIONS[1].day.isoformat() == "2023-05-05"
    with pytest.raises(NoSceneError) as err:  # 33UTP is 55 % cloudy: above 30, never returned
        ingest(stac, tmp_path, roi("single"), **cloudy_day)
    assert not isinstance(err.value, TooCloudyError)
    with pytest.raises(TooCloudyError):
        ingest(stac, tmp_path, roi("single"), max_cloud_cover=60, **cloudy_day)


# --- input errors: before any network call ------------------------------------------


@pytest.mark.parametrize(
    ("area", "kwargs", "message"),
    [
        ({"type": "Point", "coordinates": [12, 48]}, {}, "not a polygon"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[12, 48], [12.1, 48.1], [12.1, 48], [12, 48.1], [12, 48]]],
            },
            {},
            "self-intersecting",
        ),
        (roi("single"), {"max_area_km2": 0.5}, "more than the limit"),
        (roi("single"), {"start_date": "2023-05-31", "end_date": "2023-05-01"}, "after end_date"),
        (roi("single"), {"lookback_days": 3}, "not both"),
        (roi("single"), {"bands": "B04,B01"}, "'B01' is not a 10 or 20 m"),
        (roi("single"), {"strategy": "best"}, "strategy"),
        (roi("single"), {"max_cloud_cover": 130}, "max_cloud_cover"),
        (roi("single"), {"stac_url": "ftp://example.org"}, "stac_url"),
        (roi("single"), {"resampling": "magic"}, "resampling"),
    ],
)
def test_bad_input_fails_before_any_request(stac, tmp_path, area, kwargs, message):
    kwargs = {**MAY, **kwargs}
    with pytest.raises(ValueError, match=message):
        ingest(stac, tmp_path / "out", area, **kwargs)
    assert stac.api.layer.requests == [] and stac.cogs.requests == []
    assert not (tmp_path / "out").exists()


def test_geometry_from_a_file(tmp_path):
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps(roi("single")))
    for given in (path, str(path)):
        assert params_of(given, **MAY).area.area_km2 == pytest.approx(1.0, rel=3e-3)
    with pytest.raises(ValueError, match=r"geometry file .*missing\.geojson.* cannot be read"):
        params_of(str(tmp_path / "missing.geojson"), **MAY)


def test_stac_url_from_the_environment(stac, monkeypatch):
    monkeypatch.setenv("S2SAM_STAC_URL", stac.url + "/")
    assert params_of(roi("single"), **MAY).stac_url == stac.url
    monkeypatch.delenv("S2SAM_STAC_URL")
    assert params_of(roi("single"), **MAY).stac_url.startswith("https://planetarycomputer")


# --- signing ------------------------------------------------------------------------


@pytest.fixture
def blob_storage(stac, monkeypatch):
    """Blob-storage hrefs reach the COG host through GDAL's proxy; tokens come from it too."""
    import types

    import planetary_computer.sas
    import requests

    monkeypatch.setenv("PC_SDK_SAS_URL", stac.cogs.sas_url)
    monkeypatch.setenv("GDAL_HTTP_PROXY", stac.cogs.proxy)
    planetary_computer.sas.TOKEN_CACHE.clear()

    class Unbounded:
        def __init__(self, *args, **kwargs):
            raise AssertionError("planetary_computer requested a token itself (no timeout)")

    # the library's own token request must never run: ours, bounded, fills its cache
    spy = types.SimpleNamespace(Session=Unbounded, adapters=requests.adapters)
    monkeypatch.setattr(planetary_computer.sas, "requests", spy)
    yield stac
    planetary_computer.sas.TOKEN_CACHE.clear()


def test_signed_reads_from_blob_storage_and_the_key_stays_secret(
    blob_storage, tmp_path, caplog, capsys
):
    stac = blob_storage
    secret = "pc-key-0123456789-do-not-log"
    caplog.set_level(logging.DEBUG)
    result = ingest(
        stac, tmp_path / "blob", roi("single"), collection=BLOB_COLLECTION, pc_key=secret, **D1
    )
    plain = ingest(stac, tmp_path / "plain", roi("single"), **D1)
    blob_data, _, _ = read(result.scenes[0].path)
    plain_data, _, _ = read(plain.scenes[0].path)
    np.testing.assert_array_equal(blob_data, plain_data)
    # one token request for the one container, with the key; every blob read signed
    assert stac.cogs.subscription_keys == [secret]
    blob_reads = [r for r in stac.cogs.requests if r.host.endswith(".blob.core.windows.net")]
    assert blob_reads and all(r.signed and r.status in (200, 206) for r in blob_reads)
    # the key is nowhere: logs, console, manifest, COG tags
    out = capsys.readouterr()
    assert secret not in caplog.text + out.out + out.err
    for path in (tmp_path / "blob").iterdir():
        assert secret.encode() not in path.read_bytes()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("components")]
    assert ours and not any("sig=" in m for m in ours)  # our logs redact signed URLs


def test_key_from_the_environment(blob_storage, tmp_path, monkeypatch):
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "env-key")
    ingest(blob_storage, tmp_path, roi("single"), collection=BLOB_COLLECTION, **D1)
    assert blob_storage.cogs.subscription_keys == ["env-key"]


def test_a_stalled_sas_endpoint_fails_within_the_timeout(blob_storage, tmp_path):
    blob_storage.cogs.plan.add("/api/sas/v1/token", "stall", times=None, stall_s=30)
    start = time.monotonic()
    with pytest.raises(
        ServiceError,
        match=r"SAS token request for sentinel2l2a01/sentinel2-l2 failed after 3 attempts",
    ):
        ingest(
            blob_storage,
            tmp_path / "out",
            roi("single"),
            network=FAULTY,
            collection=BLOB_COLLECTION,
            **D1,
        )
    assert time.monotonic() - start < 15  # 3 attempts x 2 s + backoff, not the library's minutes
    assert leftovers(tmp_path / "out") == []


def test_a_sas_endpoint_503_is_retried(blob_storage, tmp_path):
    blob_storage.cogs.plan.add("/api/sas/v1/token", "status", times=1)
    ingest(blob_storage, tmp_path, roi("single"), collection=BLOB_COLLECTION, **D1)
    assert len(blob_storage.cogs.subscription_keys) == 2


def test_unsigned_blob_reads_are_refused_clearly(blob_storage, tmp_path, monkeypatch):
    """If signing were skipped, storage answers 403: the error names the asset, not a token."""
    import planetary_computer

    monkeypatch.setattr(planetary_computer, "sign_inplace", lambda obj: obj)
    with pytest.raises(ServiceError, match=r"reading SCL .* failed after retries: .*403"):
        ingest(blob_storage, tmp_path, roi("single"), collection=BLOB_COLLECTION, **D1)


# --- faults: STAC API -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["status", "stall", "drop"])
def test_stac_api_failure_once_is_retried(stac, tmp_path, kind):
    fault = stac.api.plan.add("/search", kind, times=1, stall_s=30)
    result = ingest(stac, tmp_path, roi("single"), network=FAULTY, **D1)
    assert fault.hits == 1 and keys(result) == ["S2B_20230502_R022"]
    assert [p for m, p in stac.api.layer.requests].count("/search") == 2


@pytest.mark.parametrize("kind", ["status", "stall"])
def test_stac_api_down_fails_clearly_within_its_timeout(stac, tmp_path, kind):
    stac.api.plan.add("/search", kind, times=None, stall_s=30)
    start = time.monotonic()
    with pytest.raises(
        ServiceError, match=r"STAC search on http://127\.0\.0\.1:\d+ failed after 3 attempts"
    ):
        ingest(stac, tmp_path / "out", roi("single"), network=FAULTY, **D1)
    assert time.monotonic() - start < 15  # 3 attempts x 2 s + backoff
    assert leftovers(tmp_path / "out") == []


def test_stac_client_errors_are_not_retried(stac, tmp_path):
    stac.api.plan.add("/search", "status", times=None, status=400)
    with pytest.raises(ServiceError, match=r"STAC search on .* failed: APIError"):
        ingest(stac, tmp_path, roi("single"), **D1)
    assert [p for m, p in stac.api.layer.requests].count("/search") == 1


# --- faults: COG host -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["status", "stall", "drop"])
def test_cog_failure_once_is_retried_and_the_pixels_are_right(stac, tmp_path, kind):
    fault = stac.cogs.plan.add("*/B04.tif", kind, times=1, stall_s=30, methods=("GET",))
    result = ingest(stac, tmp_path, roi("edge"), network=FAULTY, **D1)
    assert fault.hits == 1
    data, profile, _ = read(result.scenes[0].path)
    np.testing.assert_array_equal(
        data[0], expected_dn("B04", 0, profile["transform"], 32633, data.shape[1:])
    )


@pytest.mark.parametrize("kind", ["status", "stall", "drop"])
def test_cog_host_failing_leaves_no_partial_cog(stac, tmp_path, kind):
    stac.cogs.plan.add("*/B03.tif", kind, times=None, stall_s=30, methods=("GET",))
    out = tmp_path / "out"
    start = time.monotonic()
    with pytest.raises(
        ServiceError,
        match=r"reading B03 rows 0-100 from http://127\.0\.0\.1:\d+/s2/\S+/B03\.tif failed",
    ):
        ingest(stac, out, roi("single"), network=FAULTY, **D1)
    assert time.monotonic() - start < 40  # GDAL's 3 tries x 2 s, then one fresh open
    assert leftovers(out) == [], (
        "a failed ingest leaves neither a COG, a temporary file nor a manifest"
    )


def test_a_killed_ingests_leftovers_are_cleaned_and_the_stale_manifest_retired(stac, tmp_path):
    """A killed ingest leaves temporary files (up to tens of MB) and maybe an old manifest
    beside new scenes: the next ingest into the folder removes them first."""
    out = tmp_path / "out"
    out.mkdir()
    planted = [
        ".S2B_20230502_R022.tif.4242.part",
        ".S2B_20230502_R022.tif.4242.cog",
        ".S2B_20230502_R022.tif.4242.cog.ovr.tmp",
    ]
    for name in planted:
        (out / name).write_bytes(b"x" * 1000)
    (out / MANIFEST_NAME).write_text('{"scenes": [{"file": "gone.tif"}]}')
    result = ingest(stac, out, roi("single"), **D1)
    assert leftovers(out) == sorted([MANIFEST_NAME, f"{result.scenes[0].key}.tif"])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [s["file"] for s in manifest["scenes"]] == [f"{result.scenes[0].key}.tif"]
