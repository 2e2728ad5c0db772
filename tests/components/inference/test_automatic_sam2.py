"""Automatic mode with a SAM 2.1 model vs sam2's SAM2AutomaticMaskGenerator, same weights.

Random weights make masks low-scored blobs, so the score filters (and NMS) are relaxed
to keep every mask; each one's pixels, predicted IoU, stability score and box are
compared (``assert_same_masks``). SAM 2's own options are exercised: ``use_m2m``,
``multimask_output``, ``mask_threshold``, its hole/sprinkle filling, and crop layers
(crops squashed to the encoder's input as SAM2Transforms does).
"""

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference needs the [export] extra")
pytest.importorskip("sam2", reason="the reference is the sam2 package ([export] extra)")
pytest.importorskip("cv2", reason="stands in for SAM 2's CUDA connected components")

from components.core import regions
from components.core.params import AmgParams
from components.inference.automatic import generate_chip_masks
from tests.fixtures.sam_reference import (
    _opencv_components,
    assert_same_masks,
    reference_sam2_amg,
)

RELAXED = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "chip_nms_thr": 1.0}


def _chip(runtime):
    from model_export.parity import parity_images

    return parity_images(1024, 7)[1].transpose(1, 2, 0).copy()  # the runtime's chip


@pytest.mark.parametrize(
    "options",
    [
        {"use_m2m": True, "points_per_side": 3},  # the reference's m2m pass is slow
        # single masks (SAM 2's stability rule), another threshold, and hole/sprinkle filling
        {
            "points_per_side": 5,
            "multimask_output": False,
            "mask_threshold": -0.3,
            "min_mask_region_area": 16 * 40,
        },
    ],
    ids=["m2m", "single-threshold-regions"],
)
def test_every_mask_of_a_chip_equals_sam2s_generator(sam2_runtime, options):
    model, embedding, predictor = sam2_runtime
    params = AmgParams(**RELAXED, **options)
    image = _chip(sam2_runtime)
    calls = model.encoder_calls
    ours = generate_chip_masks(model, image, params, embedding=embedding)
    assert model.encoder_calls == calls  # the chip's cached embedding: no encoder work
    ref = reference_sam2_amg(predictor.model, image, params)
    per_point = 3 if params.multimask_output else 1
    assert len(ours) == params.points_per_side**2 * per_point  # nothing filtered out
    assert sum(m.any() for m in ours.masks) > len(ours) // 2  # real masks, not empty ones
    assert_same_masks(ours, ref)


def test_crop_layers_equal_sam2s_generator(sam2_runtime):
    model, embedding, predictor = sam2_runtime
    params = AmgParams(
        points_per_side=2,
        n_crop_layers=1,
        crop_overlap_ratio=512 / 1500,
        crop_nms_thr=1.0,
        **RELAXED,
    )
    image = _chip(sam2_runtime)
    images = model.encoded_images
    ours = generate_chip_masks(model, image, params, embedding=embedding)
    assert model.encoded_images - images == 4  # the 4 crops; the chip was cached
    assert_same_masks(ours, reference_sam2_amg(predictor.model, image, params))


def test_small_region_filling_equals_sam2s_rule_on_logits():
    """Holes and sprinkles up to the area flip sign (±10 around the threshold); larger
    components, and the logits elsewhere, stay; components are 8-connected."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    low = rng.normal(0.0, 1.0, (3, 64, 64)).astype(np.float32)
    low[0, 20:40, 20:40] = 5.0  # a solid square with a 2 x 2 hole and a diagonal pair
    low[0, 29:31, 29:31] = -2.0
    low[0, 2:10, 2:10] = -1.0
    low[0, 5, 5] = low[0, 6, 6] = 3.0
    for area in (0, 4, 30):
        ours = regions.fill_small_regions(low, area, 0.0)
        ref = low.copy()
        if area:
            lab, sizes = _opencv_components(torch.as_tensor(low[:, None] <= 0))
            hole = ((lab > 0) & (sizes <= area)).numpy()[:, 0]
            lab, sizes = _opencv_components(torch.as_tensor(low[:, None] > 0))
            sprinkle = ((lab > 0) & (sizes <= area)).numpy()[:, 0]
            ref = np.where(hole, 10.0, np.where(sprinkle, -10.0, low)).astype(np.float32)
        np.testing.assert_array_equal(ours, ref)
    filled = regions.fill_small_regions(low, 4, 0.0)[0]
    assert (filled[29:31, 29:31] == 10.0).all()  # the hole
    assert filled[5, 5] == filled[6, 6] == -10.0  # diagonal neighbours: one sprinkle of 2
