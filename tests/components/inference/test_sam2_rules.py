"""SAM 2's prompt layout and single-mask choice, against the sam2 package's own code."""

import numpy as np
import pytest

from components.inference.sam2 import (
    STABILITY_DELTA,
    STABILITY_THRESH,
    sam2_prompt_arrays,
    select_single_mask,
    stability_scores,
)


def test_stability_is_the_share_above_plus_delta_among_those_above_minus_delta():
    logits = np.full((1, 4, 4), -1.0, np.float32)
    logits[0, :2] = 1.0  # 8 pixels clearly in
    logits[0, 2, :2] = 0.0  # 2 pixels within the margin: above -delta, not above +delta
    assert stability_scores(logits)[0] == pytest.approx(8 / 10)
    assert stability_scores(np.full((2, 3, 3), -5.0))[1] == 1.0  # both areas empty: 1


def test_prompt_layout_box_first_then_points_then_one_padding_point():
    coords, labels = sam2_prompt_arrays(np.array([[5.0, 6.0]]), np.array([0]), (1, 2, 30, 40))
    assert coords.tolist() == [[1, 2], [30, 40], [5, 6], [0, 0]]
    assert labels.tolist() == [2, 3, 0, -1]
    coords, labels = sam2_prompt_arrays(np.array([[5.0, 6.0]]), np.array([1]), None)
    assert labels.tolist() == [1, -1] and coords.dtype == np.float32


@pytest.mark.parametrize("seed", range(6))
def test_single_mask_equals_sam2s_dynamic_multimask_via_stability(seed):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2", reason="the reference is the sam2 package ([export] extra)")
    from sam2.modeling.sam.mask_decoder import MaskDecoder

    rng = np.random.default_rng(seed)
    p, size = 5, 32
    low = rng.normal(0, 2, (p, 4, size, size)).astype(np.float32)
    low[:2, 0] = np.where(rng.random((2, size, size)) < 0.5, 8.0, -8.0)  # stable single masks
    low[2, 0] = rng.choice([0.03, -0.03, 5.0], (size, size))  # within the margin: unstable
    iou = rng.random((p, 4)).astype(np.float32)
    iou[3, 1:] = 0.5  # a tie among the multimask outputs: the first one, as torch.argmax
    decoder = MaskDecoder.__new__(MaskDecoder)  # only its two settings are read
    decoder.dynamic_multimask_stability_delta = STABILITY_DELTA
    decoder.dynamic_multimask_stability_thresh = STABILITY_THRESH
    ref_low, ref_iou = decoder._dynamic_multimask_via_stability(
        torch.from_numpy(low), torch.from_numpy(iou)
    )
    ours_low, ours_iou, chosen = select_single_mask(low, iou)
    np.testing.assert_array_equal(ours_low, ref_low[:, 0].numpy())
    np.testing.assert_array_equal(ours_iou, ref_iou[:, 0].numpy())
    assert chosen[0] == 0 and chosen[1] == 0 and chosen[2] != 0 and chosen[3] == 1
