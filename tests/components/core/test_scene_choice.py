from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
import shapely

from components.core.scene_choice import (
    Acquisition,
    Candidate,
    NoSceneError,
    SkyStats,
    TileCover,
    TileItem,
    TooCloudyError,
    common_offset,
    cover_area,
    group_acquisitions,
    newest_per_tile,
    platform_code,
    rebase_dn,
    scl_counts,
    scl_stats,
    select_scenes,
    sky_from_counts,
)
from components.core.search import (
    TimeRange,
    format_instant,
    parse_bands,
    parse_instant,
    resolve_time_range,
)
from components.errors import InputError

UTC = timezone.utc
NOW = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)


# --- time range ---------------------------------------------------------------------


def test_explicit_dates_include_the_end_day():
    tr = resolve_time_range("2021-06-01", "2021-06-30")
    assert tr.start == datetime(2021, 6, 1, tzinfo=UTC)
    assert tr.end == datetime(2021, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert tr.to_stac() == "2021-06-01T00:00:00Z/2021-06-30T23:59:59.999999Z"


def test_one_day_range():
    tr = resolve_time_range(date(2021, 6, 17), date(2021, 6, 17))
    assert tr.end - tr.start == timedelta(days=1) - timedelta(microseconds=1)


def test_lookback_from_now_and_from_a_reference_time():
    assert resolve_time_range(lookback_days=7, now=NOW) == TimeRange(NOW - timedelta(days=7), NOW)
    tr = resolve_time_range(lookback_days=10, reference_time="2021-06-30")
    assert tr.end == datetime(2021, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert tr.start == tr.end - timedelta(days=10)
    tr = resolve_time_range(lookback_days=1, reference_time="2021-06-30T12:00:00+02:00")
    assert tr.end == datetime(2021, 6, 30, 10, tzinfo=UTC)


def test_default_now_is_the_clock():
    before = datetime.now(UTC)
    tr = resolve_time_range(lookback_days=3)
    assert before <= tr.end <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no time range"),
        ({"start_date": "2021-06-01"}, "end_date is missing"),
        ({"end_date": "2021-06-01"}, "start_date is missing"),
        ({"start_date": "2021-06-01", "end_date": "2021-06-30", "lookback_days": 5}, "not both"),
        ({"start_date": "2021-07-01", "end_date": "2021-06-30"}, "is after end_date"),
        (
            {"start_date": "2021-13-01", "end_date": "2021-06-30"},
            "start_date '2021-13-01' is not a date",
        ),
        ({"start_date": "yesterday", "end_date": "2021-06-30"}, "is not a date"),
        ({"start_date": "", "end_date": "2021-06-30"}, "start_date must be a date"),
        ({"lookback_days": 0}, "positive integer"),
        ({"lookback_days": -3}, "positive integer"),
        ({"lookback_days": 2.5}, "positive integer"),
        ({"lookback_days": True}, "positive integer"),
        (
            {"start_date": "2021-06-01", "end_date": "2021-06-30", "reference_time": "2021-07-01"},
            "reference_time only",
        ),
        ({"lookback_days": 3, "reference_time": "noon"}, "reference_time 'noon'"),
    ],
)
def test_bad_time_ranges_are_named(kwargs, message):
    with pytest.raises(ValueError, match=r"date|lookback|time") as err:
        resolve_time_range(**kwargs, now=NOW)
    assert message in str(err.value)


def test_instants():
    assert parse_instant("2021-06-17T10:05:59Z", "t") == datetime(
        2021, 6, 17, 10, 5, 59, tzinfo=UTC
    )
    assert parse_instant("2021-06-17T10:05:59", "t") == datetime(2021, 6, 17, 10, 5, 59, tzinfo=UTC)
    assert parse_instant(datetime(2021, 6, 17, 12), "t").tzinfo == UTC
    assert (
        format_instant(datetime(2021, 6, 17, 10, 5, 59, 24000, tzinfo=UTC))
        == "2021-06-17T10:05:59.024000Z"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # Each raised OverflowError ("date value out of range") before.
        ({"lookback_days": 1_000_000}, "lookback_days 1,000,000 is more than the limit of 36,525"),
        (
            {"lookback_days": 10, "reference_time": "0001-01-03"},
            "lookback_days 10 before reference_time 0001-01-03T23:59:59.999999Z reaches before",
        ),
        (
            {"start_date": "2024-01-01", "end_date": "9999-12-31T23:59:59-01:00"},
            "end_date '9999-12-31T23:59:59-01:00' is out of range",
        ),
        (
            {"start_date": "0001-01-01T00:00:00+01:00", "end_date": "2024-01-01"},
            "start_date '0001-01-01T00:00:00+01:00' is out of range",
        ),
        ({"lookback_days": 10**30}, "more than the limit"),
    ],
)
def test_out_of_range_dates_are_input_errors(kwargs, message):
    with pytest.raises(InputError) as err:
        resolve_time_range(**kwargs, now=NOW)
    assert message in str(err.value)


def test_extreme_but_representable_dates_still_work():
    tr = resolve_time_range(lookback_days=36_525, now=NOW)
    assert tr.start == NOW - timedelta(days=36_525)
    tr = resolve_time_range(lookback_days=2, reference_time="0001-01-03")
    assert format_instant(tr.start) == "0001-01-01T23:59:59.999999Z"  # four-digit year
    tr = resolve_time_range(start_date="2024-01-01", end_date="9999-12-31")
    assert format_instant(tr.end) == "9999-12-31T23:59:59.999999Z"


# --- bands --------------------------------------------------------------------------


def test_bands_are_normalised_in_order():
    assert parse_bands("B04,B03,B02") == ("B04", "B03", "B02")
    assert parse_bands(" b4, B8a ,B11") == ("B04", "B8A", "B11")
    assert parse_bands(["B08"]) == ("B08",)


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ("B01", "'B01' is not a 10 or 20 m"),
        ("B04,B10", "'B10' is not"),
        ("SCL", "'SCL' is not"),
        ("B04,B4", "B04 is listed twice"),
        ([], "bands is empty"),
        ("B04,,B03", "'' is not"),
    ],
)
def test_bad_bands_are_named(bands, message):
    with pytest.raises(ValueError) as err:
        parse_bands(bands)
    assert message in str(err.value)


# --- grouping -----------------------------------------------------------------------


def tile(
    tile_id="33UUP",
    when=datetime(2021, 6, 17, 10, 5, 59, tzinfo=UTC),
    baseline="03.00",
    platform="Sentinel-2B",
    orbit=22,
    epsg=32633,
    footprint=None,
    generated="",
    name=None,
):
    return TileItem(
        id=name or f"{platform}_{when:%Y%m%d}_{tile_id}_{baseline}_{generated}",
        datetime=when,
        mgrs_tile=tile_id,
        platform=platform,
        relative_orbit=orbit,
        epsg=epsg,
        processing_baseline=baseline,
        footprint=footprint if footprint is not None else shapely.box(0, 0, 1, 1),
        assets={},
        generation_time=generated,
    )


def test_items_of_one_pass_form_one_acquisition():
    t0 = datetime(2021, 6, 17, 10, 5, 59, tzinfo=UTC)
    items = [
        tile("33UUP", t0),
        tile("33UVP", t0 + timedelta(seconds=3)),
        tile("33UUP", t0 + timedelta(days=5), platform="Sentinel-2A"),
        tile("33UUP", t0 + timedelta(hours=1), orbit=65),  # another orbit the same day
    ]
    groups = group_acquisitions(reversed(items))
    assert [g.key for g in groups] == [
        "S2B_20210617_R022",
        "S2B_20210617_R065",
        "S2A_20210622_R022",
    ]
    assert [t.mgrs_tile for t in groups[0].tiles] == ["33UUP", "33UVP"]
    assert groups[0].datetime == t0


def test_reprocessed_tiles_keep_the_newest_baseline():
    old = tile(baseline="02.12", generated="20201007")
    new = tile(baseline="05.09", generated="20230101")
    newer_run = tile(baseline="05.09", generated="20230301")
    assert newest_per_tile([new, old]) == (new,)
    assert newest_per_tile([newer_run, old, new]) == (newer_run,)
    (group,) = group_acquisitions([old, new])
    assert group.tiles == (new,)


def test_platform_codes_and_keys():
    assert platform_code("Sentinel-2A") == "S2A"
    assert platform_code("sentinel-2c") == "S2C"
    assert platform_code("") == "S2"
    acq = Acquisition(date(2021, 6, 17), "Sentinel-2B", None, (tile(),))
    assert acq.key == "S2B_20210617"


# --- cover --------------------------------------------------------------------------


def test_one_tile_covers_an_area_inside_it():
    a = tile("A", footprint=shapely.box(0, 0, 10, 10))
    b = tile("B", footprint=shapely.box(8, 0, 18, 10))
    cover = cover_area([a, b], shapely.box(2, 2, 4, 4))
    assert cover == TileCover((a,), 1.0)


def test_two_tiles_for_an_area_across_the_edge():
    a = tile("A", footprint=shapely.box(0, 0, 10, 10))
    b = tile("B", footprint=shapely.box(8, 0, 18, 10))
    c = tile("C", footprint=shapely.box(0, 20, 10, 30))
    cover = cover_area([c, b, a], shapely.box(5, 2, 12, 4))
    assert set(cover.tiles) == {a, b} and cover.coverage == pytest.approx(1.0)


def test_fewest_tiles_not_greedy_order():
    # Three small tiles cover it too, but one big tile is enough.
    small = [tile(f"S{i}", footprint=shapely.box(i * 4, 0, i * 4 + 4.5, 10)) for i in range(3)]
    big = tile("BIG", footprint=shapely.box(0, 0, 12, 10))
    assert cover_area([*small, big], shapely.box(1, 1, 11, 9)).tiles == (big,)
    # Greedy picks the largest overlap first and then needs three; exact needs two.
    left = tile("L", footprint=shapely.box(0, 0, 6, 10))
    right = tile("R", footprint=shapely.box(6, 0, 12, 10))
    middle = tile("M", footprint=shapely.box(2, 0, 10, 10))
    assert set(cover_area([middle, left, right], shapely.box(0, 1, 12, 9)).tiles) == {left, right}


def test_prefers_the_output_zone_among_equal_covers():
    a = tile("32UQU", epsg=32632, footprint=shapely.box(0, 0, 10, 10))
    b = tile("33UTP", epsg=32633, footprint=shapely.box(2, 0, 12, 10))
    area = shapely.box(3, 3, 5, 5)
    assert cover_area([a, b], area, prefer_epsg=32633).tiles == (b,)
    assert cover_area([a, b], area, prefer_epsg=32632).tiles == (a,)


def test_partial_cover_at_a_swath_edge():
    a = tile("A", footprint=shapely.box(0, 0, 5, 10))
    b = tile("B", footprint=shapely.box(4, 0, 7, 10))
    far = tile("F", footprint=shapely.box(50, 50, 60, 60))
    cover = cover_area([far, a, b], shapely.box(0, 0, 10, 10))
    assert set(cover.tiles) == {a, b}
    assert cover.coverage == pytest.approx(0.7)
    assert cover_area([far], shapely.box(0, 0, 10, 10)) == TileCover((), 0.0)


def test_cover_needs_an_area():
    with pytest.raises(ValueError, match="zero extent"):
        cover_area([tile()], shapely.LineString([(0, 0), (1, 1)]))


# --- clouds -------------------------------------------------------------------------


def test_scl_fractions_count_only_the_area():
    scl = np.array([[4, 4, 9, 9], [3, 8, 10, 0], [0, 0, 9, 9]], dtype=np.uint8)
    inside = np.zeros_like(scl, dtype=bool)
    inside[:2] = True  # the bottom row (cloudy, nodata) is outside the area
    stats = scl_stats(scl, inside)
    assert stats.pixels == 8
    assert stats.nodata_fraction == pytest.approx(1 / 8)
    assert stats.cloud_fraction == pytest.approx(5 / 7)  # 9, 9, 3, 8, 10 of the 7 with data


def test_scl_counts_add_up_over_strips():
    rng = np.random.default_rng(3)
    scl = rng.integers(0, 12, size=(50, 40)).astype(np.uint8)
    inside = rng.random((50, 40)) < 0.7
    strips = [scl_counts(scl[r : r + 16], inside[r : r + 16]) for r in range(0, 50, 16)]
    totals = [sum(c[k] for c in strips) for k in range(3)]
    assert sky_from_counts(*totals) == scl_stats(scl, inside)


def test_scl_without_data():
    stats = scl_stats(np.zeros((3, 3), np.uint8), np.ones((3, 3), bool))
    assert (stats.cloud_fraction, stats.nodata_fraction) == (1.0, 1.0)


def test_scl_shape_and_empty_mask():
    with pytest.raises(ValueError, match="differs"):
        scl_stats(np.zeros((3, 3), np.uint8), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="no SCL pixel"):
        scl_stats(np.zeros((3, 3), np.uint8), np.zeros((3, 3), bool))


# --- baselines ----------------------------------------------------------------------


def test_common_offset_and_rebase():
    assert common_offset(["03.00", "02.12"]) == 0
    assert common_offset(["03.00", "05.09"]) == -1000
    with pytest.raises(ValueError):
        common_offset([])
    dn = np.array([0, 1, 500, 65000], dtype=np.uint16)
    out = rebase_dn(dn, 0, -1000)
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 1001, 1500, 65535]  # nodata kept, saturates
    reflectance_before = (dn[1:].astype(float) + 0) / 1e4
    reflectance_after = (out[1:3].astype(float) - 1000) / 1e4
    assert np.allclose(reflectance_before[:2], reflectance_after)
    assert rebase_dn(dn, -1000, -1000) is dn
    with pytest.raises(ValueError, match="below nodata"):
        rebase_dn(dn, -1000, 0)


# --- choice -------------------------------------------------------------------------


def candidate(day, cloud, nodata=0.0):
    when = datetime(2023, 5, day, 10, tzinfo=UTC)
    acq = Acquisition(when.date(), "Sentinel-2B", 22, (tile(when=when),))
    return Candidate(acq, TileCover(acq.tiles, 1.0 - nodata), SkyStats(cloud, nodata, 100))


CANDIDATES = [
    candidate(2, 0.05),
    candidate(5, 0.9),
    candidate(12, 0.02),
    candidate(15, 0.02),
    candidate(22, 0.0, nodata=0.3),
    candidate(25, 0.08),
]


def days(selection):
    return [c.acquisition.date.day for c in selection.selected]


def test_least_cloudy_takes_the_clearest_and_newest_on_ties():
    assert days(select_scenes(CANDIDATES)) == [15]
    assert days(select_scenes(CANDIDATES, max_scenes=3)) == [2, 12, 15]


def test_latest_takes_the_newest_passing():
    assert days(select_scenes(CANDIDATES, "latest")) == [25]
    assert days(select_scenes(CANDIDATES, "latest", max_scenes=2)) == [15, 25]


def test_all_takes_every_passing_in_time_order():
    selection = select_scenes(CANDIDATES, "all", max_cloud_fraction=0.1)
    assert days(selection) == [2, 12, 15, 25]
    reasons = {c.acquisition.date.day: r for c, r in selection.rejected}
    assert "cloud/shadow on 90.0%" in reasons[5]
    assert "no data on 30.0%" in reasons[22]


def test_limits_can_be_relaxed():
    selection = select_scenes(CANDIDATES, "all", 1, max_cloud_fraction=1.0, max_nodata_fraction=0.5)
    assert days(selection) == [2, 5, 12, 15, 22, 25]


def test_every_candidate_too_cloudy_lists_the_fractions():
    with pytest.raises(TooCloudyError) as err:
        select_scenes([candidate(5, 0.9), candidate(22, 0.0, nodata=0.3)])
    text = str(err.value)
    assert "all 2 acquisitions found are too cloudy" in text
    assert "S2B_20230505_R022: cloud/shadow 90.0%, no data 0.0%" in text
    assert "S2B_20230522_R022: cloud/shadow 0.0%, no data 30.0%" in text
    assert isinstance(err.value, NoSceneError)


def test_no_candidates_is_an_empty_selection():
    assert select_scenes([]).selected == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "best"}, "strategy must be one of"),
        ({"max_scenes": 0}, "max_scenes must be a positive integer"),
        ({"max_cloud_fraction": 1.5}, "max_roi_cloud_fraction must be in [0, 1]"),
        ({"max_nodata_fraction": -0.1}, "max_roi_nodata_fraction must be in [0, 1]"),
    ],
)
def test_bad_selection_parameters(kwargs, message):
    with pytest.raises(ValueError) as err:
        select_scenes(CANDIDATES, **kwargs)
    assert message in str(err.value)
