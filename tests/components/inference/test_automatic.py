"""Automatic mode vs segment_anything's SamAutomaticMaskGenerator on the same weights.

Random weights make SAM's masks near-whole-chip blobs with low scores, so these
tests relax the score filters (and NMS) to keep every mask and compare each one's
predicted IoU, stability score, box and pixels. The trained fixture model
(tests/data/fields) covers the default thresholds on real-looking masks.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
pytest.importorskip("cv2", reason="the reference's small-region removal needs OpenCV")

from components.core.params import AmgParams  # noqa: E402
from components.inference.automatic import generate_chip_masks  # noqa: E402
from components.inference.onnx_sam import SamModel  # noqa: E402
from components.io.model_files import read_manifest  # noqa: E402
from model_export.architectures import ARCHITECTURES  # noqa: E402
from model_export.export import parity_images  # noqa: E402
from model_export.weights import random_sam  # noqa: E402
from tests.fixtures.sam_reference import assert_same_masks  # noqa: E402
from tests.fixtures.sam_reference import reference_amg as reference  # noqa: E402


@pytest.fixture(scope="module")
def models(tiny_export):
    return SamModel(tiny_export, read_manifest(tiny_export)), random_sam(
        ARCHITECTURES["vit_tiny"], 0
    )


def image(seed):
    return parity_images(1024, seed)[1].transpose(1, 2, 0).copy()


def test_every_mask_of_a_chip_equals_the_reference(models):
    model, sam = models
    params = AmgParams(
        points_per_side=5, pred_iou_thresh=0.0, stability_score_thresh=0.0, chip_nms_thr=1.0
    )
    img = image(7)
    ours = generate_chip_masks(model, img, params)
    ref = reference(sam, img, params)
    assert len(ours) == 5 * 5 * 3  # nothing filtered: every point's three masks
    assert_same_masks(ours, ref)


def test_crop_layers_and_small_region_removal_equal_the_reference(models):
    model, sam = models
    params = AmgParams(
        points_per_side=4,
        n_crop_layers=1,
        crop_overlap_ratio=512 / 1500,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        chip_nms_thr=1.0,
        crop_nms_thr=1.0,
        min_mask_region_area=300,
    )
    img = image(8)
    calls, images = model.encoder_calls, model.encoded_images
    ours = generate_chip_masks(model, img, params)
    assert model.encoded_images - images == 5  # the chip and its 4 crops
    assert model.encoder_calls - calls == 5 // model.default_batch_size  # 1 per call on a CPU
    ref = reference(sam, img, params)
    assert_same_masks(ours, ref)


def test_default_thresholds_and_nms_keep_the_reference_count(models):
    model, sam = models
    params = AmgParams(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    img = image(9)
    ours = generate_chip_masks(model, img, params)
    ref = reference(sam, img, params)
    assert_same_masks(ours, ref)


def test_a_chip_where_nothing_survives_is_empty_not_an_error(models):
    model, _ = models
    flat = np.full((1024, 1024, 3), 90, np.uint8)
    out = generate_chip_masks(model, flat, AmgParams(points_per_side=4, n_crop_layers=1))
    assert len(out) == 0 and out.masks.shape == (0, 1024, 1024)


def test_the_embedding_can_come_from_the_caller(models):
    model, _ = models
    img = image(10)
    emb = model.encode(img.transpose(2, 0, 1)[None])
    calls = model.encoder_calls
    params = AmgParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    a = generate_chip_masks(model, img, params, embedding=emb[0])
    assert model.encoder_calls == calls  # no encoder work for layer 0
    b = generate_chip_masks(model, img, params)
    np.testing.assert_array_equal(a.masks, b.masks)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"pred_iou_thresh": 1.0}, "pred_iou_thresh"),
        ({"stability_score_thresh": 1.5}, "stability_score_thresh"),
        ({"crop_overlap_ratio": -0.1}, "crop_overlap_ratio"),
        ({"n_crop_layers": -1}, "n_crop_layers"),
        (
            {"points_per_side": 2, "n_crop_layers": 2, "crop_n_points_downscale_factor": 2},
            "leaves no point",
        ),
        ({"stability_score_offset": 0}, "stability_score_offset"),
        ({"points_per_batch": 1.5}, "points_per_batch"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AmgParams(**kwargs)


def test_farmvibes_defaults():
    p = AmgParams()
    assert (p.points_per_side, p.n_crop_layers, p.crop_overlap_ratio) == (16, 0, 0.0)
    assert (p.crop_n_points_downscale_factor, p.pred_iou_thresh) == (1, 0.88)
    assert (p.stability_score_thresh, p.stability_score_offset) == (0.95, 1.0)
    assert (p.points_per_batch, p.chip_nms_thr) == (16, 0.7)
