"""Parity of components.core.amg with the installed segment_anything / torchvision reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core import amg, regions

torch = pytest.importorskip("torch")
tv_ops = pytest.importorskip("torchvision.ops")
ref = pytest.importorskip("segment_anything.utils.amg")
ref_generator = pytest.importorskip("segment_anything.automatic_mask_generator")

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SEEDS = [0, 1, 2]
IMAGE_SIZES = [(1024, 1024), (600, 1024), (1024, 600), (1500, 2000), (37, 11), (1, 1)]


def t(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def assert_same(ours, theirs):
    """Exact equality, dtype included (NaN equals NaN)."""
    theirs = theirs.numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs, strict=True)


def random_masks(rng, shape, density=None):
    density = rng.uniform(0.05, 0.95) if density is None else density
    return rng.random(shape) < density


def blob_masks(rng, n, h, w):
    """Rectangles with speckle holes and islands: what SAM masks look like, roughly."""
    masks = np.zeros((n, h, w), dtype=bool)
    for mask in masks:
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        y1, x1 = rng.integers(y0 + 2, min(y0 + h // 2, h) + 1), rng.integers(x0 + 2, w + 1)
        mask[y0:y1, x0:x1] = True
        if rng.random() < 0.6:  # else a clean mask that small-region clean-up keeps
            mask ^= rng.random((h, w)) < rng.uniform(0.0, 0.04)
    return masks


def edge_case_masks(h, w):
    masks = np.zeros((8, h, w), dtype=bool)
    masks[1] = True  # all true
    masks[2, h // 2, :] = True  # one row
    masks[3, :, w // 2] = True  # one column
    masks[4, 0, 0] = True  # first pixel
    masks[5, -1, -1] = True  # last pixel
    masks[6, 0, -1] = masks[6, -1, 0] = True  # opposite corners
    masks[7, 1:-1, 1:-1] = True  # frame of background
    return masks  # masks[0] is empty


def stable_ranks(scores):
    """Tie-free scores ordering like ``scores`` with ties broken by input order."""
    ranks = np.empty(len(scores), dtype=np.float32)
    ranks[np.argsort(-np.asarray(scores), kind="stable")] = np.arange(len(scores), 0, -1)
    return t(ranks)


def skip_unless_torch_sorts_stably(scores):
    """Ties in torchvision's NMS follow torch's unstable sort; skip where it reorders them."""
    theirs = torch.from_numpy(np.asarray(scores)).sort(0, descending=True)[1].numpy()
    ours = amg._descending_order(np.asarray(scores))
    if not np.array_equal(theirs, ours):
        pytest.skip("this torch build's sort reorders tied scores")


def random_boxes(rng, n, size=100, dtype=np.float32, integer=True):
    xy = rng.integers(0, size, (n, 2)) if integer else rng.uniform(0, size, (n, 2))
    wh = rng.integers(0, size // 3, (n, 2)) if integer else rng.uniform(0, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


# --- point grids and crops ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 32, 64])
def test_point_grid(n):
    assert_same(amg.build_point_grid(n), ref.build_point_grid(n))


@pytest.mark.parametrize(("n", "layers", "scale"), [(32, 0, 1), (32, 2, 2), (32, 3, 3), (10, 2, 1)])
def test_all_layer_point_grids(n, layers, scale):
    ours = amg.build_all_layer_point_grids(n, layers, scale)
    theirs = ref.build_all_layer_point_grids(n, layers, scale)
    assert len(ours) == len(theirs) == layers + 1
    for a, b in zip(ours, theirs, strict=True):
        assert_same(a, b)


def test_empty_point_grid_is_an_error():
    with pytest.raises(ZeroDivisionError):
        ref.build_all_layer_point_grids(4, 3, 2)  # layer 3 has int(4 / 8) = 0 points
    with pytest.raises(ValueError, match="n_per_side"):
        amg.build_all_layer_point_grids(4, 3, 2)


def assert_same_crops(im_size, n_layers, overlap):
    boxes, layers = amg.generate_crop_boxes(im_size, n_layers, overlap)
    ref_boxes, ref_layers = ref.generate_crop_boxes(im_size, n_layers, overlap)
    assert boxes.dtype == layers.dtype == np.int64
    assert boxes.tolist() == ref_boxes
    assert layers.tolist() == ref_layers


@pytest.mark.parametrize("im_size", IMAGE_SIZES)
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("overlap", [0.0, 0.34, 512 / 1500])
def test_crop_boxes(im_size, n_layers, overlap):
    assert_same_crops(im_size, n_layers, overlap)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 5000),
    w=st.integers(1, 5000),
    n_layers=st.integers(0, 3),
    overlap=st.floats(0.0, 0.9, allow_nan=False),
)
def test_crop_boxes_property(h, w, n_layers, overlap):
    assert_same_crops((h, w), n_layers, overlap)


@pytest.mark.parametrize("n", [0, 1, 5, 64, 65, 130])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_iterator(n, batch_size):
    a, b = np.arange(n), list(range(100, 100 + n))
    ours = list(amg.batch_iterator(batch_size, a, b))
    theirs = list(ref.batch_iterator(batch_size, a, b))
    assert len(ours) == len(theirs)
    for (oa, ob), (ta, tb) in zip(ours, theirs, strict=True):
        assert_same(oa, ta)
        assert ob == tb


def test_batch_iterator_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        list(amg.batch_iterator(2, np.arange(3), np.arange(4)))
    with pytest.raises(ValueError, match="same length"):
        list(amg.batch_iterator(2))
    with pytest.raises(ValueError, match="batch_size"):
        list(amg.batch_iterator(0, np.arange(3)))


# --- stability score and mask boxes --------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "shape", [(3, 64, 64), (2, 3, 17, 33), (64, 64), (0, 8, 8), (4, 0, 7), (2, 1, 256)]
)
@pytest.mark.parametrize(
    ("threshold", "offset"), [(0.0, 1.0), (0.0, 0.0), (0.05, 0.05), (1.0, -0.5)]
)
def test_stability_score(seed, shape, threshold, offset):
    rng = np.random.default_rng(seed)
    # Integer-valued logits and 0.1 put pixels exactly on the thresholds.
    logits = rng.normal(0, 3, shape).astype(np.float32)
    logits[..., ::3] = np.round(logits[..., ::3])
    logits[..., 1::5] = np.float32(0.1)
    ours = amg.calculate_stability_score(logits, threshold, offset)
    assert_same(ours, ref.calculate_stability_score(t(logits), threshold, offset))


def test_stability_score_in_small_chunks(monkeypatch):
    monkeypatch.setattr(amg, "_STABILITY_CHUNK_PIXELS", 1000)
    logits = np.random.default_rng(3).normal(0, 2, (5, 7, 32, 40)).astype(np.float32)
    ours = amg.calculate_stability_score(logits, 0.0, 1.0)
    assert_same(ours, ref.calculate_stability_score(t(logits), 0.0, 1.0))


def test_stability_score_float16():
    logits = np.random.default_rng(4).normal(0, 2, (6, 20, 30)).astype(np.float16)
    logits[:, ::4] = np.float16(0.1)
    ours = amg.calculate_stability_score(logits, 0.05, 0.05)
    assert_same(ours, ref.calculate_stability_score(t(logits), 0.05, 0.05))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(5, 16, 16), (3, 2, 600, 1024), (1, 1, 9), (4, 9, 1), (30, 30)])
def test_mask_to_box(seed, shape):
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.0, 0.002, (*shape[:-2], 1, 1))  # sparse: boxes vary in size
    masks = rng.random(shape) < density
    assert_same(amg.batched_mask_to_box(masks), ref.batched_mask_to_box(t(masks)))


@pytest.mark.parametrize("hw", [(16, 16), (600, 1024), (3, 5)])
def test_mask_to_box_edge_cases(hw):
    masks = edge_case_masks(*hw)
    boxes = amg.batched_mask_to_box(masks)
    assert_same(boxes, ref.batched_mask_to_box(t(masks)))
    h, w = hw
    assert boxes[0].tolist() == [0, 0, 0, 0]
    assert boxes[1].tolist() == [0, 0, w - 1, h - 1]  # inclusive max


def test_mask_to_box_without_masks_is_int64():
    for shape in [(0, 8, 8), (3, 0, 8), (2, 3, 8, 0)]:
        ours = amg.batched_mask_to_box(np.zeros(shape, dtype=bool))
        theirs = ref.batched_mask_to_box(torch.zeros(shape, dtype=torch.bool))
        assert theirs.dtype == torch.float32  # the reference's quirk
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, theirs.numpy(), strict=False)
        assert ours.shape == tuple(theirs.shape)


def test_box_xyxy_to_xywh():
    box = np.array([3, 4, 10, 20])
    assert_same(amg.box_xyxy_to_xywh(box), ref.box_xyxy_to_xywh(t(box)))
    boxes = random_boxes(np.random.default_rng(0), 20, dtype=np.int64)
    converted = amg.box_xyxy_to_xywh(boxes)
    for ours, original in zip(converted, boxes, strict=True):
        assert_same(ours, ref.box_xyxy_to_xywh(t(original)))
    assert (boxes[:, 2:] >= boxes[:, :2]).all()  # the input is untouched


# --- box geometry and NMS ------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.int64, np.int32, np.int16, np.float16]
)
def test_box_area_and_iou(seed, dtype):
    rng = np.random.default_rng(seed)
    integer = np.issubdtype(dtype, np.integer)
    a = random_boxes(rng, 30, size=3000 if integer else 100, dtype=dtype, integer=integer)
    b = random_boxes(rng, 20, size=3000 if integer else 100, dtype=dtype, integer=integer)
    b[:5] = a[:5]  # identical boxes, some of them zero-area (IoU 0 / 0)
    b[5:8, 2:] = b[5:8, :2]
    assert_same(amg.box_area(a), tv_ops.box_area(t(a)))
    assert_same(amg.box_iou(a, b), tv_ops.box_iou(t(a), t(b)))


def test_box_iou_divides_integers_in_float32():
    # float64 division rounded to float32 would differ from torch here.
    a = np.array([[0, 0, 16777217, 1]], dtype=np.int64)
    b = np.array([[0, 0, 16777219, 1]], dtype=np.int64)
    assert_same(amg.box_iou(a, b), tv_ops.box_iou(t(a), t(b)))


def assert_same_nms(boxes, scores, threshold):
    ours = amg.nms(boxes, scores, threshold)
    assert_same(ours, tv_ops.nms(t(boxes), t(scores), threshold))
    categories = torch.zeros(len(boxes))
    assert_same(ours, tv_ops.batched_nms(t(boxes), t(scores), categories, threshold))


def assert_same_nms_ties_by_index(boxes, scores, threshold):
    ours = amg.nms(boxes, scores, threshold)
    assert_same(ours, tv_ops.nms(t(boxes), stable_ranks(scores), threshold))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 1, 2, 50, 400])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("integer", [True, False])
def test_nms_distinct_scores(seed, n, threshold, integer):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, integer=integer)
    boxes[: n // 10, 2:] = boxes[: n // 10, :2]  # zero-area boxes
    scores = rng.permutation(n).astype(np.float32) / max(n, 1)
    assert_same_nms(boxes, scores, threshold)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_nms_ties_up_to_16_boxes_match_torchvision_directly(seed, n, threshold):
    # torch's CPU sort (an insertion sort up to 16 elements here) keeps ties in order.
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, size=30)
    boxes[n // 2] = boxes[0]
    scores = rng.integers(0, 2, n).astype(np.float32)
    skip_unless_torch_sorts_stably(scores)
    assert_same_nms(boxes, scores, threshold)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [17, 300, 1500])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 1.0])
def test_nms_ties_keep_input_order(seed, n, threshold):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n)
    boxes[n // 2 :] = boxes[: n - n // 2]  # duplicated boxes
    scores = rng.integers(0, 3, n).astype(np.float32)
    assert_same_nms_ties_by_index(boxes, scores, threshold)


def test_nms_ties_without_overlap_come_in_input_order():
    # torchvision returns these 40 in its unstable sort's order; ours is input order.
    boxes = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(40)], dtype=np.float32)
    scores = np.random.default_rng(0).integers(0, 2, 40).astype(np.float32)
    expected = [*np.flatnonzero(scores == 1), *np.flatnonzero(scores == 0)]
    assert amg.nms(boxes, scores, 0.5).tolist() == expected
    theirs = tv_ops.nms(t(boxes), t(scores), 0.5).numpy()
    assert sorted(theirs.tolist()) == list(range(40))
    assert (np.diff(scores[theirs]) <= 0).all()


def test_nms_compares_iou_in_float64():
    # IoU is float32(0.1) > 0.1: torchvision suppresses, a float32 comparison would not.
    boxes = np.array([[0, 0, 10, 1], [0, 0, 1, 1]], dtype=np.float32)
    scores = np.array([1.0, 0.5], dtype=np.float32)
    assert amg.nms(boxes, scores, 0.1).tolist() == [0]
    assert_same_nms(boxes, scores, 0.1)


def test_nms_nan_scores_come_first():
    boxes = random_boxes(np.random.default_rng(1), 8, size=20)
    scores = np.array([0.3, np.nan, 0.9, np.inf, np.nan, -np.inf, 0.9, 0.1], dtype=np.float32)
    skip_unless_torch_sorts_stably(scores)
    for threshold in [0.0, 0.3, 1.0]:
        assert_same_nms(boxes, scores, threshold)


def test_nms_float64():
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 200, dtype=np.float64, integer=False)
    scores = rng.random(200)
    assert_same_nms(boxes, scores, 0.3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 10, 900, 1200])  # torchvision switches algorithm above 1000
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_batched_nms(seed, n, threshold):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, size=200)
    scores = rng.permutation(n).astype(np.float32)
    categories = rng.integers(0, 4, n)
    ours = amg.batched_nms(boxes, scores, categories, threshold)
    assert_same(ours, tv_ops.batched_nms(t(boxes), t(scores), t(categories), threshold))


def test_batched_nms_ties_keep_input_order():
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 300, size=100)
    scores = rng.integers(0, 3, 300).astype(np.float32)
    categories = rng.integers(0, 3, 300)
    ours = amg.batched_nms(boxes, scores, categories, 0.4)
    theirs = tv_ops.batched_nms(t(boxes), stable_ranks(scores), t(categories), 0.4)
    assert_same(ours, theirs)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    n_scores=st.integers(1, 5),
    threshold=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_nms_property(n, n_scores, threshold, seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, size=40)
    scores = rng.integers(0, n_scores, n).astype(np.float32)
    assert_same_nms_ties_by_index(boxes, scores, threshold)


# --- crops -----------------------------------------------------------------------------------


@pytest.mark.parametrize("im_size", [(600, 1024), (1024, 1024), (300, 200)])
@pytest.mark.parametrize("atol", [20.0, 0.1, 7.5])
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_is_box_near_crop_edge(im_size, atol, dtype):
    rng = np.random.default_rng(0)
    h, w = im_size
    crop_boxes, _ = amg.generate_crop_boxes(im_size, 2, 512 / 1500)
    for crop_box in crop_boxes.tolist():
        x0, y0, x1, y1 = crop_box
        boxes = random_boxes(rng, 200, size=min(x1 - x0, y1 - y0), dtype=dtype)
        boxes[:20] = [0, 0, x1 - x0 - 1, y1 - y0 - 1]  # touches every crop edge
        if dtype == np.float32:
            boxes[20:40] += rng.choice([0.0, 0.1, np.float32(0.1), atol, -atol], (20, 4))
        ours = amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, w, h], atol)
        theirs = ref.is_box_near_crop_edge(t(boxes), crop_box, [0, 0, w, h], atol)
        assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64, np.float16])
def test_uncrop_boxes_and_points(dtype):
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 10, dtype=dtype)
    points = rng.uniform(0, 100, (10, 2)).astype(dtype)
    for crop_box in ([0, 0, 100, 100], [37, 512, 600, 1024]):
        assert_same(
            amg.uncrop_boxes_xyxy(boxes, crop_box), ref.uncrop_boxes_xyxy(t(boxes), crop_box)
        )
        assert_same(amg.uncrop_points(points, crop_box), ref.uncrop_points(t(points), crop_box))
        batched = boxes.reshape(2, 5, 4)
        ours = amg.uncrop_boxes_xyxy(batched, np.array(crop_box))
        assert_same(ours, ref.uncrop_boxes_xyxy(t(batched), crop_box))
        batched = points.reshape(5, 2, 2)
        ours = amg.uncrop_points(batched, np.array(crop_box))
        assert_same(ours, ref.uncrop_points(t(batched), crop_box))


@pytest.mark.parametrize("im_size", [(60, 100), (100, 60), (64, 64)])
def test_uncrop_masks(im_size):
    rng = np.random.default_rng(2)
    h, w = im_size
    crop_boxes, _ = amg.generate_crop_boxes(im_size, 2, 0.34)
    for crop_box in crop_boxes.tolist():
        x0, y0, x1, y1 = crop_box
        masks = random_masks(rng, (3, y1 - y0, x1 - x0))
        ours = amg.uncrop_masks(masks, crop_box, h, w)
        assert_same(ours, ref.uncrop_masks(t(masks), crop_box, h, w))
        if crop_box == [0, 0, w, h]:
            assert ours is masks


def test_uncrop_masks_rejects_mismatched_crops():
    with pytest.raises(ValueError, match="do not fit"):
        amg.uncrop_masks(np.zeros((1, 5, 5), bool), [0, 0, 4, 5], 10, 10)
    with pytest.raises(ValueError, match="not inside"):
        amg.uncrop_masks(np.zeros((1, 5, 5), bool), [8, 0, 13, 5], 10, 10)


# --- mask boxes, property-tested -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    density=st.sampled_from([0.0, 0.01, 0.3, 0.9, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_boxes_property(n, h, w, density, seed):
    masks = random_masks(np.random.default_rng(seed), (n, h, w), density)
    assert_same(amg.batched_mask_to_box(masks), ref.batched_mask_to_box(t(masks)))


# --- small regions ------------------------------------------------------------------------------


@pytest.fixture
def cv2():
    return pytest.importorskip("cv2")


def assert_same_small_regions(mask, area, mode):
    ours, changed = regions.remove_small_regions(mask, area, mode)
    theirs, ref_changed = ref.remove_small_regions(mask, area, mode)
    assert changed == ref_changed
    assert_same(ours, theirs)
    if not changed:
        assert ours is mask


@pytest.mark.usefixtures("cv2")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("area", [0, 1, 3, 30, 1000, 10**6])
@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions(seed, area, mode):
    rng = np.random.default_rng(seed)
    for mask in [*blob_masks(rng, 4, 60, 90), *edge_case_masks(20, 30)]:
        assert_same_small_regions(mask, area, mode)


@pytest.mark.usefixtures("cv2")
def test_remove_small_islands_keeps_the_largest_opencv_numbers_first():
    # OpenCV labels by 2 x 2 blocks: (1, 9) is in block column 4, before (0, 16).
    mask = np.zeros((2, 17), dtype=bool)
    mask[0, 16] = mask[1, 9] = True
    ours, changed = regions.remove_small_regions(mask, 2, "islands")
    assert changed
    assert np.argwhere(ours).tolist() == [[1, 9]]
    assert_same_small_regions(mask, 2, "islands")


@pytest.mark.usefixtures("cv2")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(7, 9), (64, 64), (301, 517)])
def test_remove_small_islands_ties(seed, shape):
    # Equal-sized specks only: which one survives depends on label order alone.
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    mask[::3, ::3] = rng.random(mask[::3, ::3].shape) < 0.3
    for area in [2, 1000]:
        assert_same_small_regions(mask, area, "islands")


def test_remove_small_regions_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        regions.remove_small_regions(np.zeros((3, 3), bool), 1, "specks")


@pytest.mark.usefixtures("cv2")
@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    density=st.floats(0.0, 1.0),
    area=st.integers(0, 40),
    mode=st.sampled_from(["holes", "islands"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_remove_small_regions_property(h, w, density, area, mode, seed):
    mask = random_masks(np.random.default_rng(seed), (h, w), density)
    assert_same_small_regions(mask, area, mode)


def reference_postprocess(masks, min_area, nms_thresh):
    data = ref.MaskData(
        rles=ref.mask_to_rle_pytorch(t(masks)),
        boxes=amg.batched_mask_to_box(masks),
        idx=np.arange(len(masks)),
    )
    data = ref_generator.SamAutomaticMaskGenerator.postprocess_small_regions(
        data, min_area, nms_thresh
    )
    return data["idx"], [ref.rle_to_mask(rle) for rle in data["rles"]], data["boxes"]


def reference_changed(masks, min_area):
    """The reference's per-mask flag (its NMS score is the negation)."""
    flags = []
    for mask in masks:
        filled, holes_changed = ref.remove_small_regions(mask, min_area, "holes")
        flags.append(holes_changed or ref.remove_small_regions(filled, min_area, "islands")[1])
    return np.array(flags)


def assert_same_postprocess(masks, min_area, nms_thresh):
    result = regions.postprocess_small_regions(masks, min_area, nms_thresh)
    keep, ref_masks, ref_boxes = reference_postprocess(masks, min_area, nms_thresh)
    assert_same(result.keep, keep)
    assert_same(result.boxes, ref_boxes)
    np.testing.assert_array_equal(result.masks, np.array(ref_masks).reshape(result.masks.shape))
    # The flag is not a mask comparison: a mask that is one small island counts as
    # changed though the island survives (as the largest).
    assert_same(result.changed, reference_changed(masks, min_area)[result.keep])
    listed = regions.postprocess_small_regions(list(masks), min_area, nms_thresh)
    assert_same(listed.keep, result.keep)
    assert_same(listed.masks, result.masks)


@pytest.mark.usefixtures("cv2")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("min_area", [0, 5, 50])
@pytest.mark.parametrize("nms_thresh", [0.0, 0.5, 0.7, 1.0])
def test_postprocess_small_regions(seed, min_area, nms_thresh):
    # Scores are all 0 or 1: a direct comparison needs torch to keep ties in order.
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 12, 40, 56)
    masks[10:] = masks[:2]  # exact duplicates
    masks[8] ^= rng.random(masks[8].shape) < 0.01  # near duplicates
    skip_unless_torch_sorts_stably((~reference_changed(masks, min_area)).astype(np.float32))
    assert_same_postprocess(masks, min_area, nms_thresh)


@pytest.mark.usefixtures("cv2")
@pytest.mark.parametrize("nms_thresh", [0.3, 0.7])
def test_postprocess_small_regions_many_masks(monkeypatch, nms_thresh):
    # Beyond 16 masks, compare with the reference fed tie-free scores in input order.
    def batched_nms_ties_by_index(boxes, scores, categories, iou_threshold):
        ranks = stable_ranks(scores.numpy())
        return tv_ops.batched_nms(boxes, ranks, categories, iou_threshold)

    monkeypatch.setattr(ref_generator, "batched_nms", batched_nms_ties_by_index)
    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 60, 32, 32)
    masks[40:] = masks[:20]
    assert_same_postprocess(masks, 8, nms_thresh)


def test_postprocess_without_masks():
    result = regions.postprocess_small_regions(np.zeros((0, 6, 7), bool), 10, 0.7)
    assert result.keep.shape == (0,) and result.masks.shape == (0, 6, 7)
    assert result.boxes.shape == (0, 4) and result.changed.shape == (0,)
    assert regions.postprocess_small_regions([], 10, 0.7).masks.shape == (0, 0, 0)
