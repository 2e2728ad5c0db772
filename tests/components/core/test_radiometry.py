from __future__ import annotations

import warnings

import numpy as np
import pytest

from components.core.radiometry import (
    RgbScaling,
    band_parameter,
    boa_add_offset,
    dn_to_reflectance,
    parse_baseline,
    scene_rgb_scaling,
    to_rgb,
)

SAMPLE = "s2/ftw_t33uup_2021_b4b3b2b8x2.tif"


def random_dn(shape: tuple[int, ...], seed: int = 0, high: int = 12_000) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, high, size=shape).astype(np.uint16)


# --- processing baseline ----------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline", "expected"),
    [
        ("04.00", (4, 0)),
        ("05.09", (5, 9)),
        ("02.12", (2, 12)),
        (" 4.0 ", (4, 0)),
        ("3", (3, 0)),
        ("N0400", (4, 0)),
        ("N0213", (2, 13)),
        (4.0, (4, 0)),
        (5.09, (5, 9)),
        (3.99, (3, 99)),
        (5, (5, 0)),
    ],
)
def test_parse_baseline(baseline: str | float, expected: tuple[int, int]) -> None:
    assert parse_baseline(baseline) == expected


@pytest.mark.parametrize(
    "baseline", ["", "abc", "4.0.1", "04.000", "-4.00", float("nan"), -1.0, True, None]
)
def test_unparseable_baseline_names_the_value(baseline: object) -> None:
    with pytest.raises(ValueError, match="processing baseline") as err:
        parse_baseline(baseline)  # type: ignore[arg-type]
    assert repr(baseline) in str(err.value)


@pytest.mark.parametrize(
    ("baseline", "offset"),
    [("04.00", -1000), ("05.09", -1000), ("04.01", -1000), ("03.01", 0), ("02.12", 0)],
)
def test_boa_add_offset_from_baseline_04_00(baseline: str, offset: int) -> None:
    assert boa_add_offset(baseline) == offset


def test_boa_add_offset_float_baseline() -> None:
    assert boa_add_offset(4.0) == -1000
    assert boa_add_offset(3.99) == 0


def test_dn_to_reflectance_applies_offset_and_keeps_nodata() -> None:
    dn = np.array([0, 1000, 1500, 11000], dtype=np.uint16)
    new = dn_to_reflectance(dn, "04.00")
    old = dn_to_reflectance(dn, "02.12")
    assert new.dtype == np.float32
    np.testing.assert_allclose(new, [np.nan, 0.0, 0.05, 1.0], rtol=1e-6)
    np.testing.assert_allclose(old, [np.nan, 0.1, 0.15, 1.1], rtol=1e-6)


def test_dn_to_reflectance_is_not_clipped_and_nan_is_nodata() -> None:
    dn = np.array([[500.0, np.nan], [0.0, 2000.0]])
    out = dn_to_reflectance(dn, "05.00")
    np.testing.assert_allclose(out, [[-0.05, np.nan], [np.nan, 0.1]], rtol=1e-6)


# --- FarmVibes band_scaling / band_offset -----------------------------------------


def test_band_parameter_farmvibes_semantics() -> None:
    assert band_parameter(None, 1e-4, "band_scaling") == (1e-4, 1e-4, 1e-4)
    assert band_parameter([2e-4], 1e-4, "band_scaling") == (2e-4, 2e-4, 2e-4)
    assert band_parameter([1.0, 2.0, 3.0], 1e-4, "band_scaling") == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("length", [0, 2, 4])
@pytest.mark.parametrize("name", ["band_scaling", "band_offset"])
def test_band_parameter_bad_length_names_parameter(name: str, length: int) -> None:
    values = [1e-4] * length
    kwargs = {name: values}
    with pytest.raises(ValueError, match=rf"{name} must have 1 or 3 entries.*got {length}"):
        scene_rgb_scaling(random_dn((3, 4, 4)), "04.00", **kwargs)  # type: ignore[arg-type]


def test_default_scaling_gives_harmonised_reflectance() -> None:
    new = scene_rgb_scaling(random_dn((3, 4, 4)), "04.00", stretch="none")
    old = scene_rgb_scaling(random_dn((3, 4, 4)), "02.12", stretch="none")
    assert new.scale == old.scale == (1e-4, 1e-4, 1e-4)
    assert new.offset == (-0.1, -0.1, -0.1)
    assert old.offset == (0.0, 0.0, 0.0)


def test_explicit_offset_replaces_harmonisation() -> None:
    scaling = scene_rgb_scaling(
        random_dn((3, 4, 4)), "04.00", band_scaling=[2e-4], band_offset=[0.0, 0.1, 0.2]
    )
    assert scaling.scale == (2e-4, 2e-4, 2e-4)
    assert scaling.offset == (0.0, 0.1, 0.2)


def test_none_mode_equals_farmvibes_clip_times_255() -> None:
    dn = random_dn((3, 37, 53), seed=1, high=16_000)
    scale = np.array([1e-4, 2e-4, 1.5e-4])
    offset = -0.1
    scaling = scene_rgb_scaling(
        dn, "05.09", band_scaling=scale.tolist(), band_offset=[offset], stretch="none"
    )
    rgb, valid = to_rgb(dn, scaling)

    unit = dn.astype(np.float64) * scale[:, None, None] + offset
    reference = (np.clip(unit, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (37, 53, 3)
    assert valid.all()
    assert (reference == 0).any() and (reference == 255).any()  # both clips exercised
    np.testing.assert_array_equal(rgb, reference)


# --- percentile stretch -----------------------------------------------------------


def test_percentile_stretch_maps_scene_p2_p98_to_0_255() -> None:
    # 101 distinct DNs: p2 and p98 fall exactly on DN 1020 and DN 1980.
    dn = np.tile((1000 + 10 * np.arange(101, dtype=np.uint16))[None, None, :], (3, 1, 1))
    scaling = scene_rgb_scaling(dn, "02.12")
    np.testing.assert_allclose(scaling.low, [0.102] * 3)
    np.testing.assert_allclose(scaling.high, [0.198] * 3)
    rgb, _ = to_rgb(dn, scaling)
    assert (rgb[0, :3] == 0).all()
    assert (rgb[0, 98:] == 255).all()
    assert rgb[0, 3, 0] > 0 and rgb[0, 97, 0] < 255
    # Linear in between: the middle value maps to mid-grey.
    assert rgb[0, 50, 0] == 127


def test_percentile_parameters_are_honoured() -> None:
    dn = random_dn((3, 50, 50), seed=2)
    unit = dn.astype(np.float64) * 1e-4 - 0.1
    scaling = scene_rgb_scaling(dn, "04.00", percentiles=(10, 90))
    expected = np.percentile(unit.reshape(3, -1), [10, 90], axis=1)
    np.testing.assert_allclose(scaling.low, expected[0])
    np.testing.assert_allclose(scaling.high, expected[1])


def test_scene_level_stretch_makes_overlapping_chips_agree() -> None:
    rows, cols = np.mgrid[0:200, 0:300]
    gradient = 800 + 8 * cols + 3 * rows  # brighter to the east: chips differ
    noise = np.random.default_rng(3).integers(0, 400, size=(3, 200, 300))
    scene = (gradient[None] + noise).astype(np.uint16)
    scaling = scene_rgb_scaling(scene[:, ::4, ::4], "02.12")

    west, east = scene[:, 0:120, 0:150], scene[:, 80:200, 100:300]
    rgb_west, _ = to_rgb(west, scaling)
    rgb_east, _ = to_rgb(east, scaling)
    np.testing.assert_array_equal(rgb_west[80:120, 100:150], rgb_east[0:40, 0:50])

    # Per-chip stretch, what this avoids, disagrees on the same pixels.
    own_west, _ = to_rgb(west, scene_rgb_scaling(west, "02.12"))
    own_east, _ = to_rgb(east, scene_rgb_scaling(east, "02.12"))
    assert not np.array_equal(own_west[80:120, 100:150], own_east[0:40, 0:50])


def test_homogeneous_scene_does_not_divide_by_zero() -> None:
    dn = np.full((3, 16, 16), 1500, dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaling = scene_rgb_scaling(dn, "02.12")
        rgb, valid = to_rgb(dn, scaling)
    np.testing.assert_allclose(scaling.low, [0.145] * 3)
    np.testing.assert_allclose(scaling.high, [0.155] * 3)
    assert valid.all()
    assert (rgb == 127).all()  # centred: no contrast to stretch


def test_near_homogeneous_scene_is_not_stretched_into_noise() -> None:
    dn = random_dn((3, 16, 16), seed=4, high=3) + 1500  # 1501..1502: 1 DN of noise
    scaling = scene_rgb_scaling(dn, "02.12", min_span=0.01)
    assert all(
        h - lo == pytest.approx(0.01) for lo, h in zip(scaling.low, scaling.high, strict=True)
    )
    rgb, _ = to_rgb(dn, scaling)
    assert int(rgb.max()) - int(rgb.min()) <= 26  # 1 DN of 100 DN span: ~2.5 levels


def test_all_nodata_sample_falls_back_to_unit_range() -> None:
    dn = np.zeros((3, 8, 8), dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaling = scene_rgb_scaling(dn, "04.00")
        rgb, valid = to_rgb(dn, scaling)
    assert scaling.low == (0.0, 0.0, 0.0)
    assert scaling.high == (1.0, 1.0, 1.0)
    assert not valid.any()
    assert (rgb == 0).all()


# --- nodata -----------------------------------------------------------------------


def test_nodata_in_one_band_invalidates_the_pixel() -> None:
    dn = random_dn((3, 10, 10), seed=5, high=3000) + 1000
    dn[1, 2, 3] = 0
    dn[0, 2, 3] = dn[2, 2, 3] = 60_000  # would drag the high percentile if counted
    scaling = scene_rgb_scaling(dn, "04.00", stretch="none")
    rgb, valid = to_rgb(dn, scaling)
    assert not valid[2, 3]
    assert valid.sum() == 99
    assert (rgb[2, 3] == 0).all()
    assert (rgb[valid] > 0).any()

    stretched = scene_rgb_scaling(dn, "04.00", percentiles=(0, 100))
    assert max(stretched.high) < 0.31  # the 60000 DN pixel was ignored


def test_nan_is_nodata_without_warnings() -> None:
    dn = (random_dn((3, 10, 10), seed=6, high=3000) + 1000).astype(np.float32)
    dn[2, 4, 4] = np.nan
    dn[0, 5, 5] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaling = scene_rgb_scaling(dn, "04.00")
        rgb, valid = to_rgb(dn, scaling)
    assert all(np.isfinite(scaling.low + scaling.high))
    assert not valid[4, 4] and not valid[5, 5]
    assert valid.sum() == 98
    assert (rgb[4, 4] == 0).all() and (rgb[5, 5] == 0).all()


def test_custom_nodata_value() -> None:
    dn = random_dn((3, 4, 4), seed=7) + 1
    dn[0, 0, 0] = 65535
    rgb, valid = to_rgb(dn, scene_rgb_scaling(dn, "04.00", nodata=65535))
    assert not valid[0, 0] and valid.sum() == 15
    assert (rgb[0, 0] == 0).all()


# --- band count and validation ----------------------------------------------------


def test_single_band_is_replicated_to_grey() -> None:
    dn = random_dn((1, 12, 12), seed=8, high=4000)
    scaling = scene_rgb_scaling(dn, "02.12")
    rgb, valid = to_rgb(dn, scaling)
    assert rgb.shape == (12, 12, 3)
    assert valid.all()
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.parametrize("bands", [2, 4, 8])
def test_other_band_counts_are_rejected(bands: int) -> None:
    dn = random_dn((bands, 4, 4))
    with pytest.raises(ValueError, match=f"expected 1 or 3 bands, got {bands}"):
        scene_rgb_scaling(dn, "04.00")
    scaling = scene_rgb_scaling(random_dn((3, 4, 4)), "04.00")
    with pytest.raises(ValueError, match=f"got {bands}"):
        to_rgb(dn, scaling)


def test_to_rgb_needs_a_chip() -> None:
    scaling = scene_rgb_scaling(random_dn((3, 4, 4)), "04.00")
    with pytest.raises(ValueError, match="height, width"):
        to_rgb(random_dn((3, 16)), scaling)


def test_scene_sample_may_be_a_flat_pixel_list() -> None:
    dn = random_dn((3, 20, 20), seed=9)
    assert scene_rgb_scaling(dn.reshape(3, -1), "04.00") == scene_rgb_scaling(dn, "04.00")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stretch": "gamma"}, "stretch must be one of"),
        ({"percentiles": (98, 2)}, "percentiles"),
        ({"percentiles": (-1, 98)}, "percentiles"),
        ({"min_span": 0.0}, "min_span"),
        ({"band_scaling": [float("nan")]}, "band_scaling must be finite"),
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scene_rgb_scaling(random_dn((3, 4, 4)), "04.00", **kwargs)  # type: ignore[arg-type]


def test_rgb_scaling_rejects_empty_range() -> None:
    with pytest.raises(ValueError, match="must exceed low"):
        RgbScaling(scale=(1e-4,) * 3, offset=(0.0,) * 3, low=(0.1, 0.2, 0.3), high=(0.2, 0.2, 0.4))


# --- real scene -------------------------------------------------------------------


def test_real_scene_stretch_uses_the_range_and_none_is_dark(shared_file) -> None:
    rasterio = pytest.importorskip("rasterio")
    path = shared_file(SAMPLE)
    with rasterio.open(path) as src:
        dn = src.read([1, 2, 3])  # B04, B03, B02 of the first date (2021: baseline < 04.00)
    # Scene-level percentiles from a decimated read, as the pipeline does with an overview.
    stretched = scene_rgb_scaling(dn[:, ::4, ::4], "03.00")
    plain = scene_rgb_scaling(dn[:, ::4, ::4], "03.00", stretch="none")
    rgb, valid = to_rgb(dn, stretched)
    dark, _ = to_rgb(dn, plain)

    mean_stretched, mean_none = float(rgb[valid].mean()), float(dark[valid].mean())
    print(f"mean RGB level: percentile stretch {mean_stretched:.1f}, none {mean_none:.1f}")
    assert valid.mean() > 0.99
    for band in range(3):
        lo, hi = np.percentile(rgb[..., band][valid], [1, 99])
        assert lo < 15 and hi > 240  # most of 0..255 used
        assert np.percentile(dark[..., band][valid], 99) < 160  # never gets near white
    assert 70 < mean_stretched < 170
    assert mean_none < 40
