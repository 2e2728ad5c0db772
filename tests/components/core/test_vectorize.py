from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely.geometry import MultiPolygon, Polygon, box

from components.core.vectorize import (
    MaskAttributes,
    SegmentPolygon,
    area_m2,
    polygonize_labels,
    polygonize_masks,
)

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 4_000_000.0
TRANSFORM = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)  # 10 m pixels, north up


def pixel_box(c0: int, r0: int, c1: int, r1: int, transform: Affine = TRANSFORM) -> Polygon:
    """Polygon covering scene pixel columns [c0, c1) and rows [r0, r1)."""
    x0, y0 = transform @ (c0, r0)
    x1, y1 = transform @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def attrs(*ids: int) -> list[MaskAttributes]:
    return [
        MaskAttributes(id=i, prompt_id=100 + i, predicted_iou=0.9, stability_score=0.95)
        for i in ids
    ]


def same_coordinates(a: Polygon | MultiPolygon, b: Polygon | MultiPolygon) -> bool:
    return bool(shapely.normalize(a).equals_exact(shapely.normalize(b), tolerance=0.0))


@pytest.fixture
def scene_labels() -> np.ndarray:
    labels = np.zeros((10, 12), dtype=np.uint32)
    labels[1:4, 1:5] = 1  # 3 x 4 rectangle
    labels[5:7, 0:2] = 2  # 2 x 2 square
    labels[4:9, 6:11] = 3  # 5 x 5 ring ...
    labels[5:8, 7:10] = 0  # ... around a 3 x 3 hole
    return labels


def test_rectangles_and_ring_have_exact_coordinates(scene_labels: np.ndarray) -> None:
    out = polygonize_labels(scene_labels, TRANSFORM, UTM, attrs(1, 2, 3))
    assert [s.id for s in out] == [1, 2, 3]
    rect, square, ring = (s.geometry for s in out)

    assert same_coordinates(rect, box(X0 + 10, Y0 - 40, X0 + 50, Y0 - 10))
    assert same_coordinates(square, box(X0, Y0 - 70, X0 + 20, Y0 - 50))
    expected_ring = Polygon(
        box(X0 + 60, Y0 - 90, X0 + 110, Y0 - 40).exterior.coords,
        [box(X0 + 70, Y0 - 80, X0 + 100, Y0 - 50).exterior.coords],
    )
    assert same_coordinates(ring, expected_ring)
    assert len(ring.interiors) == 1
    assert [s.pixel_count for s in out] == [12, 4, 16]


def test_rings_are_oriented_for_geoparquet(scene_labels: np.ndarray) -> None:
    ring = polygonize_labels(scene_labels, TRANSFORM, UTM, attrs(1, 2, 3))[2].geometry
    assert isinstance(ring, Polygon)
    assert ring.exterior.is_ccw
    assert not ring.interiors[0].is_ccw


def test_split_instance_is_one_multipolygon() -> None:
    labels = np.zeros((6, 6), dtype=np.uint32)
    labels[0:2, 0:2] = 7
    labels[4:6, 3:6] = 7
    (seg,) = polygonize_labels(labels, TRANSFORM, UTM, attrs(7))
    assert isinstance(seg.geometry, MultiPolygon)
    assert len(seg.geometry.geoms) == 2
    assert same_coordinates(
        seg.geometry, MultiPolygon([pixel_box(0, 0, 2, 2), pixel_box(3, 4, 6, 6)])
    )
    assert seg.pixel_count == 10


def test_diagonal_neighbours_are_separate_parts_of_a_valid_multipolygon() -> None:
    # 4-connectivity: pixels touching at a corner only are two parts, never a
    # self-touching ring.
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.uint32)
    (seg,) = polygonize_labels(labels, TRANSFORM, UTM, attrs(1))
    assert isinstance(seg.geometry, MultiPolygon)
    assert len(seg.geometry.geoms) == 5
    assert shapely.is_valid(seg.geometry)
    assert seg.area_m2 == pytest.approx(500.0)


def test_area_in_utm_is_pixel_count_times_pixel_area(scene_labels: np.ndarray) -> None:
    out = polygonize_labels(scene_labels, TRANSFORM, UTM, attrs(1, 2, 3))
    for seg in out:
        assert seg.area_m2 == pytest.approx(seg.pixel_count * 100.0, rel=1e-12)


def test_area_in_feet_is_converted_to_square_metres() -> None:
    us_foot = 1200 / 3937
    labels = np.ones((4, 5), dtype=np.uint32)
    (seg,) = polygonize_labels(labels, Affine(10, 0, 1e6, 0, -10, 2e5), "EPSG:2263", attrs(1))
    assert seg.area_m2 == pytest.approx(20 * 100 * us_foot**2, rel=1e-9)


def geodesic_box_area(lat0: float, lat1: float, dlon: float) -> float:
    """Ellipsoidal area of a small lat/lon box from the radii of curvature at its centre."""
    a, f = 6_378_137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    phi = math.radians((lat0 + lat1) / 2)
    w = 1 - e2 * math.sin(phi) ** 2
    meridional = a * (1 - e2) / w**1.5
    prime_vertical = a / math.sqrt(w)
    return (
        meridional * math.radians(lat1 - lat0) * prime_vertical * math.cos(phi) * math.radians(dlon)
    )


def test_geographic_area_is_geodesic() -> None:
    # 0.0005 degree pixels at 45 N: a 20 x 20 block is 0.01 x 0.01 degrees.
    transform = Affine(0.0005, 0.0, 15.0, 0.0, -0.0005, 45.005)
    labels = np.zeros((30, 30), dtype=np.uint32)
    labels[5:25, 5:25] = 1
    (seg,) = polygonize_labels(labels, transform, "EPSG:4326", attrs(1))
    expected = geodesic_box_area(45.005 - 25 * 0.0005, 45.005 - 5 * 0.0005, 0.01)
    assert expected == pytest.approx(0.01 * 111_132 * 0.01 * 78_847, rel=2e-3)  # sanity
    assert seg.area_m2 == pytest.approx(expected, rel=1e-6)


def test_geographic_area_subtracts_holes(scene_labels: np.ndarray) -> None:
    transform = Affine(0.001, 0.0, 15.0, 0.0, -0.001, 45.0)
    ring = polygonize_labels(scene_labels, transform, "EPSG:4326", attrs(1, 2, 3))[2]
    lat = 45.0 - 6.5 * 0.001
    per_pixel = geodesic_box_area(lat - 0.0005, lat + 0.0005, 0.001)
    assert ring.area_m2 == pytest.approx(16 * per_pixel, rel=1e-4)


def test_area_m2_rejects_unmeasurable_crs() -> None:
    with pytest.raises(ValueError, match="cannot measure areas"):
        area_m2(box(0, 0, 1, 1), "EPSG:4978")  # geocentric
    with pytest.raises(ValueError, match="not a CRS"):
        area_m2(box(0, 0, 1, 1), "EPSG:not-a-code")


def test_per_prompt_bands_may_overlap_and_empty_bands_give_nothing() -> None:
    masks = np.zeros((3, 8, 8), dtype=np.uint8)
    masks[0, 1:4, 2:6] = 1
    masks[2, 2:7, 4:8] = 1  # overlaps band 0
    attributes = [
        MaskAttributes(id=1, prompt_id="field-a", predicted_iou=0.91, stability_score=0.97),
        MaskAttributes(id=2, prompt_id="field-b", predicted_iou=0.5, stability_score=0.6),
        MaskAttributes(id=3, prompt_id="field-c", predicted_iou=0.88, stability_score=0.93),
    ]
    out = polygonize_masks(masks, TRANSFORM, UTM, attributes)
    assert [s.prompt_id for s in out] == ["field-a", "field-c"]
    assert same_coordinates(out[0].geometry, pixel_box(2, 1, 6, 4))
    assert same_coordinates(out[1].geometry, pixel_box(4, 2, 8, 7))
    assert out[0].geometry.intersects(out[1].geometry)
    assert [s.pixel_count for s in out] == [12, 20]
    assert [s.area_m2 for s in out] == pytest.approx([1200.0, 2000.0])


def test_boolean_mask_with_pieces_is_one_multipolygon() -> None:
    masks = np.zeros((1, 6, 9), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 4:6, 6:9] = True
    (seg,) = polygonize_masks(masks, TRANSFORM, UTM, attrs(5))
    assert isinstance(seg.geometry, MultiPolygon)
    assert same_coordinates(
        seg.geometry, MultiPolygon([pixel_box(1, 1, 3, 3), pixel_box(6, 4, 9, 6)])
    )


def test_empty_inputs_give_no_records() -> None:
    assert polygonize_labels(np.zeros((5, 5), dtype=np.uint32), TRANSFORM, UTM, []) == []
    assert polygonize_labels(np.zeros((0, 0), dtype=np.uint32), TRANSFORM, UTM, []) == []
    assert polygonize_masks(np.zeros((0, 5, 5), dtype=np.uint8), TRANSFORM, UTM, []) == []
    assert polygonize_masks(np.zeros((2, 5, 5), dtype=np.uint8), TRANSFORM, UTM, attrs(1, 2)) == []


def test_attributes_are_carried_through() -> None:
    labels = np.zeros((4, 4), dtype=np.uint32)
    labels[1:3, 1:3] = 1_000_000  # ids need not be small or consecutive
    labels[0, 0] = 3
    attributes = [
        MaskAttributes(id=1_000_000, prompt_id=None, predicted_iou=0.93, stability_score=0.96),
        MaskAttributes(id=3, prompt_id=42, predicted_iou=0.81, stability_score=0.92),
        MaskAttributes(id=9, prompt_id=1, predicted_iou=0.5, stability_score=0.5),  # absent
    ]
    out = polygonize_labels(labels, TRANSFORM, UTM, attributes)
    assert [s.as_record() for s in out] == [
        {
            "id": 3,
            "prompt_id": 42,
            "predicted_iou": 0.81,
            "stability_score": 0.92,
            "area_m2": 100.0,
            "pixel_count": 1,
            "geometry": out[0].geometry,
        },
        {
            "id": 1_000_000,
            "prompt_id": None,
            "predicted_iou": 0.93,
            "stability_score": 0.96,
            "area_m2": 400.0,
            "pixel_count": 4,
            "geometry": out[1].geometry,
        },
    ]
    assert all(isinstance(s, SegmentPolygon) for s in out)


def test_random_labels_give_valid_polygons_that_rasterize_back() -> None:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 6, size=(16, 16))
    labels = (
        np.kron(coarse, np.ones((3, 3), dtype=np.int64)) * (rng.random((48, 48)) < 0.8)
    ).astype(np.uint32)
    transform = Affine(10.0, 0.0, 359_130.0, 0.0, -10.0, 5_352_340.0)
    out = polygonize_labels(labels, transform, UTM, attrs(1, 2, 3, 4, 5))
    assert all(shapely.is_valid(s.geometry) for s in out)
    counts = np.bincount(labels.ravel(), minlength=6)
    assert {s.id: s.pixel_count for s in out} == {i: int(counts[i]) for i in range(1, 6)}
    back = rasterize(
        [(s.geometry, s.id) for s in out],
        out_shape=labels.shape,
        transform=transform,
        dtype="uint32",
    )
    np.testing.assert_array_equal(back, labels)


def test_a_window_transform_places_polygons_in_the_scene() -> None:
    window = TRANSFORM @ Affine.translation(100, 200)  # window at row 200, col 100
    labels = np.zeros((3, 3), dtype=np.uint32)
    labels[1, 1] = 1
    (seg,) = polygonize_labels(labels, window, UTM, attrs(1))
    assert same_coordinates(seg.geometry, pixel_box(101, 201, 102, 202))


@pytest.mark.parametrize(
    ("labels", "attributes", "message"),
    [
        (np.ones((2, 2), dtype=np.float32), attrs(1), "integer ids"),
        (np.full((2, 2), -1, dtype=np.int32), attrs(1), r"\[0, 2\*\*31\)"),
        (np.full((2, 2), 2**31, dtype=np.uint32), attrs(1), r"\[0, 2\*\*31\)"),
        (np.ones((2, 2, 2), dtype=np.uint32), attrs(1), "label raster"),
        (np.array([[1, 2]], dtype=np.uint32), attrs(1), r"no attributes for instance ids \[2\]"),
        (np.ones((2, 2), dtype=np.uint32), attrs(1, 1), "duplicate instance id 1"),
    ],
)
def test_bad_label_inputs_are_rejected(
    labels: np.ndarray, attributes: list[MaskAttributes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        polygonize_labels(labels, TRANSFORM, UTM, attributes)


@pytest.mark.parametrize(
    ("masks", "attributes", "message"),
    [
        (np.ones((2, 3, 3), dtype=np.uint8), attrs(1), "2 masks but 1 attribute"),
        (np.ones((1, 3, 3), dtype=np.float32), attrs(1), "boolean or integer"),
        (np.ones((3, 3), dtype=np.uint8), attrs(1), "masks, height, width"),
        (np.ones((2, 3, 3), dtype=np.uint8), attrs(4, 4), "duplicate instance id 4"),
    ],
)
def test_bad_mask_inputs_are_rejected(
    masks: np.ndarray, attributes: list[MaskAttributes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        polygonize_masks(masks, TRANSFORM, UTM, attributes)


def test_bad_crs_is_a_value_error(scene_labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="not a CRS"):
        polygonize_labels(scene_labels, TRANSFORM, "EPSG:999999", attrs(1, 2, 3))
