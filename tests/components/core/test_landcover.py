"""The cropland filter's arithmetic: shares on the scene grid for masks on the working grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.core.geometry import mask_box
from components.core.landcover import (
    WORLDCOVER_CROPLAND,
    CroplandFilter,
    CroplandParams,
    check_classes_apply,
    cropland_of,
    cropland_share,
    cropland_shares,
    is_polygon_source,
    set_aside_reason,
    split_by_cropland,
)
from components.core.merge import SceneMask
from components.errors import InputError


def scene_mask(full: np.ndarray, iou: float = 0.9) -> SceneMask:
    """A SceneMask from a mask drawn on the whole working grid."""
    box = mask_box(full)
    assert box is not None
    x0, y0, x1, y1 = box
    return SceneMask(box, full[y0:y1, x0:x1].copy(), iou, 0.95, (0,))


def brute_share(full: np.ndarray, cropland: np.ndarray, factor: int) -> float:
    """The share by upsampling the whole land cover: what the filter must equal."""
    up = np.kron(cropland.astype(np.uint8), np.ones((factor, factor), np.uint8)).astype(bool)
    return np.count_nonzero(full & up) / np.count_nonzero(full)


# --- parameters -----------------------------------------------------------------------


def test_defaults_are_worldcover_cropland_at_half():
    params = CroplandFilter()
    assert params.min_share == 0.5 and params.classes == (WORLDCOVER_CROPLAND,) == (40,)


@pytest.mark.parametrize("share", [-0.1, 1.01, math.nan, math.inf, True, "0.5", None])
def test_min_share_outside_0_1_is_named(share):
    with pytest.raises(InputError, match=r"min_share must be a number in \[0, 1\]"):
        CroplandFilter(min_share=share)


@pytest.mark.parametrize("classes", [(), ("40",), (True,), (40.5,), 40, "40"])
def test_bad_classes_are_named(classes):
    with pytest.raises(InputError, match="classes must be one or more integer"):
        CroplandFilter(classes=classes)


def test_classes_become_a_tuple_of_ints():
    params = CroplandFilter(min_share=0, classes=[np.uint8(40), 41])  # type: ignore[arg-type]
    assert params.classes == (40, 41) and all(type(c) is int for c in params.classes)
    assert params.min_share == 0 and params.describe_source() == "land cover classes 40, 41"


def test_cropland_of_picks_the_classes():
    classes = np.array([[10, 40, 41], [0, 80, 40]], dtype=np.uint8)
    np.testing.assert_array_equal(
        cropland_of(classes, (40,)), [[False, True, False], [False, False, True]]
    )
    np.testing.assert_array_equal(
        cropland_of(classes, (40, 41)), [[False, True, True], [False, False, True]]
    )


# --- shares ---------------------------------------------------------------------------


def test_share_at_factor_1_counts_mask_pixels_on_cropland():
    cropland = np.zeros((6, 8), dtype=bool)
    cropland[:, :4] = True  # west half
    full = np.zeros((6, 8), dtype=bool)
    full[1:3, 2:7] = True  # 10 pixels, 4 of them west
    assert cropland_share(scene_mask(full), cropland) == pytest.approx(0.4)


def test_share_at_factor_2_follows_the_scene_pixel_of_each_working_pixel():
    cropland = np.zeros((3, 3), dtype=bool)
    cropland[1, 1] = True  # working pixels [2, 4) x [2, 4)
    full = np.zeros((6, 6), dtype=bool)
    full[3, 1:6] = True  # x = 1..5 at y = 3: x = 2, 3 lie in scene pixel (1, 1)
    assert cropland_share(scene_mask(full), cropland, factor=2) == pytest.approx(2 / 5)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_shares_equal_upsampling_the_whole_land_cover(factor):
    rng = np.random.default_rng(factor)
    cropland = rng.random((13, 17)) < 0.5
    h, w = 13 * factor, 17 * factor
    masks, fulls = [], []
    for k in range(60):
        full = np.zeros((h, w), dtype=bool)
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        if k % 4 == 0:
            x0, y0 = w - rng.integers(1, 4), h - rng.integers(1, 4)  # at the grid's far edge
        x1, y1 = min(w, x0 + rng.integers(1, 9)), min(h, y0 + rng.integers(1, 9))
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        full[y0, x0] = True
        masks.append(scene_mask(full))
        fulls.append(full)
    shares = cropland_shares(masks, cropland, factor)
    expected = [brute_share(f, cropland, factor) for f in fulls]
    np.testing.assert_allclose(shares, expected, rtol=0, atol=1e-12)
    assert any(m.box[2] == w or m.box[3] == h for m in masks)


def test_a_mask_filling_the_grid_corner_to_corner():
    cropland = np.ones((4, 5), dtype=bool)
    cropland[3, 4] = False
    full = np.ones((8, 10), dtype=bool)
    assert cropland_share(scene_mask(full), cropland, factor=2) == pytest.approx(76 / 80)


def test_an_empty_mask_has_no_cropland():
    empty = SceneMask((2, 2, 4, 4), np.zeros((2, 2), dtype=bool), 0.9, 0.9, (0,))
    assert cropland_share(empty, np.ones((5, 5), dtype=bool)) == 0.0


def test_a_mask_past_the_land_cover_is_a_grid_mismatch():
    full = np.zeros((6, 6), dtype=bool)
    full[4:6, 4:6] = True
    with pytest.raises(ValueError, match="grids do not match"):
        cropland_share(scene_mask(full), np.ones((2, 2), dtype=bool), factor=2)
    assert cropland_share(scene_mask(full), np.ones((3, 3), dtype=bool), factor=2) == 1.0


@pytest.mark.parametrize("factor", [0, -1, 1.5, True])
def test_factor_must_be_a_positive_integer(factor):
    full = np.ones((2, 2), dtype=bool)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        cropland_share(scene_mask(full), np.ones((2, 2), dtype=bool), factor=factor)


# --- split ----------------------------------------------------------------------------


def test_split_keeps_fields_and_sets_the_rest_aside_with_a_reason():
    cropland = np.zeros((10, 10), dtype=bool)
    cropland[:, :5] = True
    field = np.zeros((10, 10), dtype=bool)
    field[0:4, 0:4] = True  # share 1.0
    forest = np.zeros((10, 10), dtype=bool)
    forest[5:10, 6:10] = True  # share 0.0
    straddle = np.zeros((10, 10), dtype=bool)
    straddle[0:2, 3:7] = True  # share 0.5: kept at 0.5 (at least the threshold)
    lake = np.zeros((10, 10), dtype=bool)
    lake[8:10, 1:9] = True  # 16 px, 8 of them on cropland (columns 1-4)
    lake[7, 5:9] = True  # 4 more off cropland: 8 of 20 is 0.4
    masks = [scene_mask(m) for m in (field, forest, straddle, lake)]
    kept, aside = split_by_cropland(masks, cropland, CroplandFilter(min_share=0.5))
    assert kept == [masks[0], masks[2]]
    assert [a.mask for a in aside] == [masks[1], masks[3]]
    assert [a.share for a in aside] == pytest.approx([0.0, 0.4])
    assert aside[0].reason == "cropland share 0.00 < 0.5 (land cover classes 40)"
    assert aside[1].reason == "cropland share 0.40 < 0.5 (land cover classes 40)"


def test_min_share_0_keeps_everything_and_1_only_pure_cropland():
    cropland = np.zeros((4, 4), dtype=bool)
    cropland[:2] = True
    masks = [scene_mask(np.pad(np.ones((2, 2), bool), ((r, 2 - r), (0, 2)))) for r in range(3)]
    kept, aside = split_by_cropland(masks, cropland, CroplandFilter(min_share=0.0))
    assert kept == masks and aside == []
    kept, aside = split_by_cropland(masks, cropland, CroplandFilter(min_share=1.0))
    assert kept == [masks[0]] and [a.share for a in aside] == [0.5, 0.0]


def test_split_on_the_working_grid_at_factor_2():
    cropland = np.array([[True, False], [False, False]])
    field = np.zeros((4, 4), dtype=bool)
    field[0:2, 0:2] = True
    other = np.zeros((4, 4), dtype=bool)
    other[1:3, 1:3] = True  # one of its 4 working pixels lies in scene pixel (0, 0)
    masks = [scene_mask(field), scene_mask(other)]
    params = CroplandFilter(min_share=0.3, classes=(40, 41))
    kept, aside = split_by_cropland(masks, cropland, params, factor=2)
    assert kept == [masks[0]] and aside[0].share == pytest.approx(0.25)
    assert aside[0].reason == "cropland share 0.25 < 0.3 (land cover classes 40, 41)"


def test_a_reason_never_rounds_up_to_the_threshold():
    assert set_aside_reason(0.499, CroplandFilter()) == (
        "cropland share 0.49 < 0.5 (land cover classes 40)"
    )


def test_no_masks():
    assert split_by_cropland([], np.ones((2, 2), bool), CroplandFilter()) == ([], [])
    assert cropland_shares([], np.ones((2, 2), bool)).shape == (0,)


def test_a_polygon_masks_reason_names_polygons_not_classes():
    params = CroplandParams(mask="/data/parcels.gpkg").filter
    assert params.polygons
    assert set_aside_reason(0.2, params) == "cropland share 0.20 < 0.5 (cropland polygons)"
    raster = CroplandParams(mask="/data/landcover.tif", classes=(40, 30)).filter
    assert not raster.polygons
    assert set_aside_reason(0.2, raster) == "cropland share 0.20 < 0.5 (land cover classes 40, 30)"


@pytest.mark.parametrize(
    ("source", "polygons"),
    [
        ("fields.geojson", True),
        ("/x/Fields.GPKG", True),
        ("https://example.org/crops.parquet?sig=abc", True),
        ("esa-worldcover", False),
        ("landcover.tif", False),
        ("https://example.org/map.tif?sig=x.gpkg", False),
        ("", False),
    ],
)
def test_polygon_sources_are_known_by_their_suffix(source, polygons):
    assert is_polygon_source(source) is polygons


def test_raster_classes_for_a_polygon_file_are_refused_with_both_names():
    with pytest.raises(
        InputError,
        match=r"cropland_classes \[40, 30\] apply to a land-cover "
        r"raster, but cropland_mask '/d/fields\.gpkg' is a polygon file",
    ):
        CroplandParams(mask="/d/fields.gpkg", classes=(40, 30))
    check_classes_apply("/d/fields.gpkg", (WORLDCOVER_CROPLAND,))  # the default: fine
    check_classes_apply("/d/landcover.tif", (7,))  # a raster's own classes: fine
