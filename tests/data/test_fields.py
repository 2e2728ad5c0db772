"""The synthetic field scenes and the SAM fixture trained on them."""

import dataclasses
import hashlib
import importlib.util

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from components.core.chips import chip_grid
from components.core.radiometry import scene_rgb_scaling, to_rgb
from tests.data.fields.data import (
    BANDS,
    MARGIN_REFLECTANCE,
    PROCESSING_BASELINE,
    make_scene,
    make_two_dates,
    write_labels_geotiff,
    write_s2_geotiff,
)

HELD_OUT_SEED = 100_000  # tests.data.fields.model.HELD_OUT_SEEDS[0]; training never saw it
CHECKPOINT_SHA256 = "1c0669cda831bde859ace81ee21f16ffa27a2b2b4679e9ebcb1992b6e7794d86"
# Floors measured on the committed checkpoint (README.md), with some margin.
POINT_MIOU_FLOOR = 0.40  # measured 0.444 (41 parcels of the held-out scene)
POINT_RIGHT_PARCEL_FLOOR = 0.9  # measured 0.976: the mask covers most of the clicked parcel
BOX_MIOU_FLOOR = 0.40  # measured 0.440
NEGATIVE_FRACTION_FLOOR = 0.9  # measured 0.948 of 77 pairs
MAKE_SCENE_SHA256 = {
    (
        "31aaf2809d980265ae711afa50a940eff95d782df3ad0e2be8121a9049ed522f",
        "0f9617deeaa4823a5ba0d5c2e907d8fb3a05ef5a150c963723362b8e487d13ec",
    ),
    (
        "b0e47855e80f8803ee22661b57d3dc3a6d458796d6b3fe43af5276d7fa96baac",
        "ea13a6e84eb2bcb4fa2104d7d4e28f974da0162ea70bd3ad2758d1a31f187b10",
    ),
}
"""sha256 of make_scene's labels and parcels (seed 7; seed 3 at 300 x 517), from the code
before make_two_dates was added (issue 18; at that point the DNs and RGB matched too):
the committed model and its measured floors depend on these scenes. The DNs are left
out: they pass through float32 ``np.sin``, whose last bit numpy's SIMD code paths may
round differently on another CPU.

Two machines give two layouts from the same code, so both pairs are pinned: the first
from the machine the model was trained on, the second from an AMD EPYC without AVX-512
(2026-11-30). On that machine the hash is the same with numpy 2.1 to 2.4
and scipy 1.14 to 1.17. It is also the same with numpy's AVX2/FMA paths and glibc's
FMA/AVX2 variants switched off, and when the scalar ``sin``/``cos`` of the layout are
moved by one ulp. The cause is not established. Any change to the generator's code
changes both hashes, and that is what this pin is for."""


@pytest.fixture(scope="module")
def scene():
    return make_scene(7)


@pytest.fixture(scope="module")
def seam_scene():
    """Larger than a chip in both directions, as the seam tests need."""
    return make_scene(11, 1800, 2300)


# --- generator ---------------------------------------------------------------------------


def test_same_seed_same_scene_other_seed_other_scene(scene):
    again = make_scene(7)
    np.testing.assert_array_equal(again.dn, scene.dn)
    np.testing.assert_array_equal(again.rgb, scene.rgb)
    np.testing.assert_array_equal(again.labels, scene.labels)
    assert again.parcels == scene.parcels
    other = make_scene(8)
    assert not np.array_equal(other.labels, scene.labels)


def test_arrays_have_the_documented_shapes_and_types(scene):
    assert scene.rgb.shape == (1024, 1024, 3) and scene.rgb.dtype == np.uint8
    assert scene.labels.shape == (1024, 1024) and scene.labels.dtype == np.uint32
    assert scene.dn.shape == (4, 1024, 1024) and scene.dn.dtype == np.uint16
    assert (scene.dn > 0).all(), "no nodata inside a generated scene"
    small = make_scene(3, 300, 517)
    assert small.rgb.shape == (300, 517, 3) and small.labels.shape == (300, 517)


def test_parcels_describe_the_label_map(scene):
    labels = scene.labels
    n = len(scene.parcels)
    assert 25 <= n <= 80
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    area = np.bincount(labels.ravel())
    for parcel, box in zip(scene.parcels, ndimage.find_objects(labels), strict=True):
        assert parcel.area == area[parcel.label]
        assert parcel.bbox == (box[1].start, box[0].start, box[1].stop, box[0].stop)
        x, y = parcel.interior
        assert scene.parcel_at(x, y) == parcel.label
        assert parcel.inradius >= 1
    # Field margins and roads (label 0) make up a small part of the scene.
    assert 0.03 < (labels == 0).mean() < 0.2


def test_different_parcels_never_touch(scene):
    """Every boundary between two parcels runs through label 0 (margins, roads)."""
    labels = scene.labels
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touching = (a != b) & (a > 0) & (b > 0)
        assert not touching.any()


def test_labels_match_colours(scene):
    """Each parcel is one colour (plus rows and noise), distinct from its neighbours'."""
    rgb = scene.rgb.astype(np.float64)
    labels = scene.labels
    index = np.arange(1, len(scene.parcels) + 1)
    means = np.stack([ndimage.mean(rgb[..., c], labels, index) for c in range(3)], axis=1)
    inside = labels > 0
    residual = rgb[inside] - means[labels[inside] - 1]
    explained = 1 - residual.var(axis=0) / rgb[inside].var(axis=0)
    assert (explained > 0.6).all(), explained
    # Adjacent parcels (a few pixels apart across a margin) differ in colour.
    grown = ndimage.grey_dilation(labels, size=(9, 9))
    pairs = {(int(a), int(b)) for a, b in zip(labels[inside], grown[inside], strict=True) if a != b}
    pairs = {p for p in pairs if p[1] > 0}
    assert len(pairs) > len(scene.parcels)
    gaps = [np.linalg.norm(means[a - 1] - means[b - 1]) for a, b in pairs]
    assert np.median(gaps) > 20
    assert np.mean(np.asarray(gaps) > 5) > 0.9


def test_rgb_is_what_the_pipeline_makes_of_the_dns(scene):
    scaling = scene_rgb_scaling(scene.dn[:3], scene.processing_baseline)
    rgb, valid = to_rgb(scene.dn[:3], scaling)
    np.testing.assert_array_equal(rgb, scene.rgb)
    assert valid.all()


def test_dns_are_plausible_l2a(scene):
    red, green, blue, nir = (scene.dn[i].astype(np.int64) for i in range(4))
    visible = np.stack([red, green, blue])
    assert 1000 < np.median(visible) < 3500  # reflectance 0-0.25 plus the 04.00 offset
    assert np.median(nir) > np.median(red) + 1000  # vegetation: NIR well above red
    green_parcels = [p.label for p in scene.parcels if p.crop == "green"]
    veg = np.isin(scene.labels, green_parcels)
    assert np.median(nir[veg] - red[veg]) > 2000


def test_geotiff_is_georeferenced_uint16_with_nodata(tmp_path):
    scene = make_scene(5, 333, 458)
    path = write_s2_geotiff(scene, tmp_path / "scene.tif")
    with rasterio.open(path) as src:
        assert src.count == 4 and src.dtypes == ("uint16",) * 4
        assert src.descriptions == BANDS
        assert src.nodata == 0
        assert src.crs.to_epsg() == 32633 and src.crs.is_projected
        assert src.transform == scene.transform
        assert src.transform.a == 10.0 and src.transform.e == -10.0
        assert src.transform.c > 100_000 and src.transform.f > 1_000_000  # not at 0, 0
        assert src.tags()["PROCESSING_BASELINE"] == PROCESSING_BASELINE
        np.testing.assert_array_equal(src.read(), scene.dn)
    path = write_labels_geotiff(scene, tmp_path / "labels.tif")
    with rasterio.open(path) as src:
        assert src.dtypes == ("uint32",) and src.transform == scene.transform
        assert src.crs.to_epsg() == 32633
        np.testing.assert_array_equal(src.read(1), scene.labels)


def test_seam_scene_has_parcels_across_chip_seams(seam_scene, tmp_path):
    assert seam_scene.labels.shape == (1800, 2300)
    grid = chip_grid(1800, 2300, size=1024, spatial_overlap=0.25)
    assert min(grid.shape) >= 2
    seams_x = grid.col_boundaries[1:-1]
    seams_y = grid.row_boundaries[1:-1]
    crossing = [
        p
        for p in seam_scene.parcels
        if any(p.bbox[0] < s < p.bbox[2] for s in seams_x)
        or any(p.bbox[1] < s < p.bbox[3] for s in seams_y)
    ]
    assert len(crossing) >= 10
    path = write_s2_geotiff(seam_scene, tmp_path / "seam.tif")
    with rasterio.open(path) as src:
        assert (src.height, src.width) == (1800, 2300)
        assert src.transform == seam_scene.transform


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="difficulty"):
        make_scene(0, difficulty=1.5)
    with pytest.raises(ValueError, match="at least 16"):
        make_scene(0, 8, 100)


def scene_sha256(scene):
    digest = hashlib.sha256()
    digest.update(scene.labels.tobytes())
    digest.update(repr(scene.parcels).encode())
    return digest.hexdigest()


def test_make_scene_lays_out_the_same_parcels_as_before_two_dates(scene):
    """numpy's generators are reproducible across platforms, and the layout is integer
    work on them (the DNs' equality with the two-date path is tested below)."""
    hashes = (scene_sha256(scene), scene_sha256(make_scene(3, 300, 517)))
    assert hashes in MAKE_SCENE_SHA256


# --- two dates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_dates():
    return make_two_dates(7)


def local_colours(date, a, b):
    """Mean reflectance (RGB) of the margin between parcels a and b, of a and b within
    8 px of it, and of both together there: local, so the low-frequency noise cancels."""
    labels = date.labels
    in_a, in_b = labels == a, labels == b
    between = (
        (labels == 0)
        & ndimage.binary_dilation(in_a, iterations=4)
        & ndimage.binary_dilation(in_b, iterations=4)
    )
    zone = ndimage.binary_dilation(between, iterations=8)
    refl = (date.dn[:3].astype(np.float64) - 1000) / 10000
    return (
        refl[:, between].mean(axis=1),
        refl[:, zone & in_a].mean(axis=1),
        refl[:, zone & in_b].mean(axis=1),
        refl[:, zone & (in_a | in_b)].mean(axis=1),
    )


def test_two_dates_share_the_layout_of_make_scene(two_dates, scene):
    first, second = two_dates
    np.testing.assert_array_equal(first.labels, scene.labels)
    np.testing.assert_array_equal(second.labels, scene.labels)
    assert first.transform == second.transform == scene.transform
    assert first.crs == second.crs == scene.crs
    assert (first.date, second.date) == (0, 1)
    geometry = [dataclasses.replace(p, crop="") for p in scene.parcels]
    assert [dataclasses.replace(p, crop="") for p in first.parcels] == geometry
    assert [dataclasses.replace(p, crop="") for p in second.parcels] == geometry
    pairs = zip(first.parcels, second.parcels, strict=True)
    changed = np.mean([a.crop != b.crop for a, b in pairs])
    assert changed > 0.3  # crops change between the dates
    assert np.abs(first.dn.astype(np.int64) - second.dn).mean() > 200


def test_each_date_joins_its_own_adjacent_pairs(two_dates):
    first, second = two_dates
    assert len(first.joined) >= 4 and len(second.joined) >= 4
    on_first = {p for pair in first.joined for p in pair}
    assert not on_first & {p for pair in second.joined for p in pair}
    for a, b in first.joined + second.joined:
        assert a < b
        near_a = ndimage.binary_dilation(first.labels == a, iterations=5)
        assert (near_a & (first.labels == b)).any(), (a, b)  # neighbours across a margin
    assert first.parcels[first.joined[0][0] - 1].crop == first.parcels[first.joined[0][1] - 1].crop


def test_a_joined_pair_looks_like_one_field_on_its_date_and_two_on_the_other(two_dates):
    """On its date the pair has one colour and the margin between is sown like it; on the
    other date the two differ and the margin is margin. Measured on this scene: joined
    colour gap at most 0.012, sown margin at most 0.016 from the fields; the other date's
    gaps 0.021 to 0.24 (median 0.064), its margin within 0.017 of MARGIN_REFLECTANCE."""
    margin = np.asarray(MARGIN_REFLECTANCE[:3])
    other_gaps = []
    for joined_date, other_date in (two_dates, two_dates[::-1]):
        for a, b in joined_date.joined:
            between, in_a, in_b, both = local_colours(joined_date, a, b)
            assert np.linalg.norm(in_a - in_b) < 0.02, (a, b)
            assert np.linalg.norm(between - both) < 0.025, (a, b)
            between, in_a, in_b, _ = local_colours(other_date, a, b)
            assert np.linalg.norm(between - margin) < 0.03, (a, b)
            other_gaps.append(np.linalg.norm(in_a - in_b))
    assert min(other_gaps) > 0.015 and np.median(other_gaps) > 0.04


def test_two_dates_are_deterministic_and_seeded(two_dates):
    again = make_two_dates(7)
    for a, b in zip(two_dates, again, strict=True):
        np.testing.assert_array_equal(a.dn, b.dn)
        np.testing.assert_array_equal(a.rgb, b.rgb)
        assert a.joined == b.joined and a.parcels == b.parcels
    other = make_two_dates(8, 256, 256)
    assert not np.array_equal(other[1].labels, two_dates[1].labels[:256, :256])


def test_pair_fraction_sets_how_many_fields_are_joined():
    plain, second = make_two_dates(5, 512, 640, pair_fraction=0.0)
    scene = make_scene(5, 512, 640)
    np.testing.assert_array_equal(plain.dn, scene.dn)  # no pairs: date 0 is make_scene
    assert plain.parcels == scene.parcels
    assert plain.joined == () and second.joined == ()
    few = sum(len(d.joined) for d in make_two_dates(5, 512, 640, pair_fraction=0.2))
    many = sum(len(d.joined) for d in make_two_dates(5, 512, 640, pair_fraction=1.0))
    assert 0 < few < many
    with pytest.raises(ValueError, match="pair_fraction"):
        make_two_dates(7, pair_fraction=1.5)


# --- the trained SAM ---------------------------------------------------------------------

needs_sam = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("segment_anything") is None,
    reason="torch and segment_anything (the [export] extra) are not installed",
)


@pytest.fixture(scope="module")
def held_out():
    return make_scene(HELD_OUT_SEED)


@pytest.fixture(scope="module")
def predictor(held_out):
    from segment_anything import SamPredictor

    from tests.data.fields.model import load_model

    predictor = SamPredictor(load_model())
    predictor.set_image(held_out.rgb)
    return predictor


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def big_parcels(scene, min_inradius=8.0):
    return [p for p in scene.parcels if p.inradius >= min_inradius]


@needs_sam
def test_checkpoint_is_a_strict_state_dict_of_vit_tiny():
    import torch

    from model_export.architectures import ARCHITECTURES, build_sam
    from tests.data.fields.model import CHECKPOINT

    state = torch.load(CHECKPOINT, weights_only=True)
    model = build_sam(ARCHITECTURES["vit_tiny"])
    assert model.load_state_dict(state, strict=True)
    assert CHECKPOINT.stat().st_size < 8 * 2**20
    if CHECKPOINT_SHA256 is not None:
        assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest() == CHECKPOINT_SHA256


def predict(predictor, points=None, labels=None, box=None, multimask=False):
    masks, scores, _ = predictor.predict(
        point_coords=None if points is None else np.asarray(points, dtype=np.float64),
        point_labels=None if labels is None else np.asarray(labels),
        box=None if box is None else np.asarray(box, dtype=np.float64),
        multimask_output=multimask,
    )
    return masks, scores


def adjacent_pairs(scene, min_inradius=12.0):
    """(a, b) parcels a few pixels apart across a margin, both with room for a point."""
    big = {p.label for p in big_parcels(scene, min_inradius)}
    grown = ndimage.grey_dilation(scene.labels, size=(9, 9))
    inside = scene.labels > 0
    pairs = set(zip(scene.labels[inside].tolist(), grown[inside].tolist(), strict=True))
    return sorted((a, b) for a, b in pairs if a < b and a in big and b in big)


def inclusive_box(*parcels):
    return [
        min(p.bbox[0] for p in parcels),
        min(p.bbox[1] for p in parcels),
        max(p.bbox[2] for p in parcels) - 1,
        max(p.bbox[3] for p in parcels) - 1,
    ]


@needs_sam
def test_a_point_inside_a_parcel_returns_that_parcel(held_out, predictor):
    ious, right = [], []
    areas = np.bincount(held_out.labels.ravel())
    for parcel in big_parcels(held_out):
        masks, scores = predict(predictor, [parcel.interior], [1], multimask=True)
        mask = masks[int(np.argmax(scores))]
        ious.append(iou(mask, held_out.mask(parcel.label)))
        share = np.bincount(held_out.labels[mask], minlength=len(areas)) / np.maximum(areas, 1)
        share[0] = 0  # margins and roads
        right.append(int(np.argmax(share)) == parcel.label)
    assert len(ious) >= 25
    assert np.mean(ious) >= POINT_MIOU_FLOOR, np.round(np.sort(ious), 2)
    assert np.mean(right) >= POINT_RIGHT_PARCEL_FLOOR


@needs_sam
def test_masks_follow_the_prompt(held_out, predictor):
    parcels = big_parcels(held_out)[:6]
    masks = [predict(predictor, [p.interior], [1])[0][0] for p in parcels]
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            assert iou(a, b) < 0.7  # measured at most 0.49: neighbours bleed, never equal


@needs_sam
def test_a_box_returns_the_parcel_it_frames(held_out, predictor):
    ious = []
    for parcel in big_parcels(held_out):
        masks, _ = predict(predictor, box=inclusive_box(parcel))
        ious.append(iou(masks[0], held_out.mask(parcel.label)))
    assert np.mean(ious) >= BOX_MIOU_FLOOR, np.round(np.sort(ious), 2)


@needs_sam
def test_a_negative_point_removes_the_neighbour(held_out, predictor):
    """A box framing two adjacent parcels bleeds into the second; a negative point there
    takes it out again and leaves the first."""
    pairs = adjacent_pairs(held_out)
    assert len(pairs) >= 20
    removed, befores, afters = [], [], []
    for a, b in pairs:
        first, second = held_out.parcels[a - 1], held_out.parcels[b - 1]
        box = inclusive_box(first, second)
        bled, _ = predict(predictor, box=box)
        cut, _ = predict(predictor, [second.interior], [0], box=box)
        in_second = held_out.mask(b)
        before = (bled[0] & in_second).sum() / second.area
        after = (cut[0] & in_second).sum() / second.area
        removed.append(after < before)
        befores.append(before)
        afters.append(after)
    assert np.mean(removed) >= NEGATIVE_FRACTION_FLOOR, removed
    assert np.mean(afters) <= 0.6 * np.mean(befores)  # measured 0.36 vs 0.80


@needs_sam
def test_predicted_iou_tracks_the_true_iou(held_out, predictor):
    """The IoU head was trained on the true IoU; it is weak (README), but not noise."""
    predicted, true = [], []
    for parcel in big_parcels(held_out):
        truth = held_out.mask(parcel.label)
        masks, scores = predict(predictor, [parcel.interior], [1], multimask=True)
        predicted.extend(scores.tolist())
        true.extend(iou(m, truth) for m in masks)
    assert np.corrcoef(predicted, true)[0, 1] > 0.1  # measured 0.21
