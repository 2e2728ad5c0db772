"""Automatic mask generation (AMG) math: SAM's ``utils/amg.py`` re-done in numpy.

The pipeline runs SAM with ONNX Runtime, so the grid, crop, scoring, box, NMS and
small-region steps of ``SamAutomaticMaskGenerator`` live here without torch (masks
stay boolean arrays: the merge encodes them once, with pycocotools, when shards hand
them over). Each function
returns what its segment_anything / torchvision counterpart returns on the same
inputs (``tests/components/test_amg.py`` checks this against the installed
reference), including the float32 arithmetic where results are compared against
thresholds. Deliberate differences:

* NMS breaks score ties by input order. torchvision sorts with an unstable sort, so
  its order among tied scores is an implementation detail (stable only up to 16
  boxes on CPU); with distinct scores, or after breaking ties the same way, the
  results are identical.
* Results are integer/boolean numpy arrays where the reference returns torch
  tensors, e.g. ``batched_mask_to_box`` is int64 even for empty input (the
  reference returns float zeros there).
* Bad arguments raise ``ValueError`` instead of asserting or returning garbage.

Boxes are XYXY pixel coordinates. Boxes from masks are *inclusive*
(``x1``/``y1`` are the last mask column/row), while crop boxes are half-open
slices; the reference mixes both conventions and so does this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

BoxLike = Sequence[int] | NDArray[np.integer[Any]]
"""One XYXY box with integer coordinates, e.g. a crop box."""

_STABILITY_CHUNK_PIXELS = 1 << 24
"""Logit pixels thresholded at once: bounds the boolean temporaries (16 MiB)."""


# --- point grids and crops ------------------------------------------------------------


def build_point_grid(n_per_side: int) -> NDArray[np.float64]:
    """Centres of an ``n_per_side`` square grid of cells over ``[0, 1]^2``, x fastest.

    Returns:
        ``(n_per_side**2, 2)`` ``(x, y)`` points.
    """
    if n_per_side < 1:
        raise ValueError(f"n_per_side must be >= 1, got {n_per_side}")
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[NDArray[np.float64]]:
    """Point grids for crop layers ``0..n_layers``, downscaled by ``scale_per_layer**i``."""
    # Float division then truncation, exactly as the reference, so layer sizes agree.
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Crop boxes of every layer: the whole image, then ``(2**i)**2`` crops in layer ``i``.

    Args:
        im_size: ``(height, width)`` of the image.
        n_layers: Crop layers below the whole-image layer 0.
        overlap_ratio: Overlap of neighbouring layer-1 crops as a fraction of the short
            side; deeper layers overlap proportionally less.

    Returns:
        ``(K, 4)`` half-open XYXY crop boxes, x0-major within a layer, and the
        ``(K,)`` layer of each.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[NDArray[np.int64]] = [np.array([[0, 0, im_w, im_h]], dtype=np.int64)]
    layers: list[NDArray[np.int64]] = [np.zeros(1, dtype=np.int64)]
    for i_layer in range(n_layers):
        n_crops = 2 ** (i_layer + 1)
        # Same float expressions (and evaluation order) as the reference: the
        # truncations make crop edges sensitive to rounding.
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = math.ceil((overlap * (n_crops - 1) + im_w) / n_crops)
        crop_h = math.ceil((overlap * (n_crops - 1) + im_h) / n_crops)
        x0s = np.array([int((crop_w - overlap) * i) for i in range(n_crops)], dtype=np.int64)
        y0s = np.array([int((crop_h - overlap) * i) for i in range(n_crops)], dtype=np.int64)
        x0, y0 = (a.ravel() for a in np.meshgrid(x0s, y0s, indexing="ij"))
        x1 = np.minimum(x0 + crop_w, im_w)
        y1 = np.minimum(y0 + crop_h, im_h)
        boxes.append(np.stack([x0, y0, x1, y1], axis=-1))
        layers.append(np.full(n_crops * n_crops, i_layer + 1, dtype=np.int64))
    return np.concatenate(boxes), np.concatenate(layers)


def batch_iterator(batch_size: int, *arrays: Sequence[Any] | NDArray[Any]) -> Iterator[list[Any]]:
    """Yield aligned ``batch_size`` slices of equally long sequences; the last may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not arrays or any(len(a) != len(arrays[0]) for a in arrays):
        raise ValueError("batched iteration needs one or more inputs of the same length")
    for start in range(0, len(arrays[0]), batch_size):
        yield [a[start : start + batch_size] for a in arrays]


# --- mask scores and boxes ------------------------------------------------------------


def calculate_stability_score(
    mask_logits: NDArray[np.floating[Any]], mask_threshold: float, threshold_offset: float
) -> NDArray[np.float32]:
    """IoU of a mask binarised at ``threshold ± offset``: how little it moves with the cutoff.

    The high-threshold mask lies inside the low-threshold one, so the IoU is a ratio
    of pixel counts. Counts are taken a bounded chunk of masks at a time, so the
    boolean temporaries stay small however many ``(..., H, W)`` logits come in.

    Returns:
        ``(...)`` float32 scores; NaN where neither threshold selects any pixel.
    """
    logits = np.asarray(mask_logits)
    if logits.ndim < 2:
        raise ValueError(f"mask logits must be (..., H, W), got shape {logits.shape}")
    *lead, h, w = logits.shape
    high: Any = mask_threshold + threshold_offset
    low: Any = mask_threshold - threshold_offset
    if np.issubdtype(logits.dtype, np.floating):
        # torch compares a float tensor with a Python scalar in the tensor's dtype.
        high, low = logits.dtype.type(high), logits.dtype.type(low)
    flat = logits.reshape(math.prod(lead), h, w)
    intersections = np.empty(len(flat), dtype=np.int64)
    unions = np.empty(len(flat), dtype=np.int64)
    step = max(1, _STABILITY_CHUNK_PIXELS // max(h * w, 1))
    for start in range(0, len(flat), step):
        chunk = flat[start : start + step]
        intersections[start : start + step] = np.count_nonzero(chunk > high, axis=(1, 2))
        unions[start : start + step] = np.count_nonzero(chunk > low, axis=(1, 2))
    # torch divides integer tensors in float32 (each operand rounded first), not float64.
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = intersections.astype(np.float32) / unions.astype(np.float32)
    return scores.reshape(lead)


def batched_mask_to_box(masks: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Tight XYXY boxes around ``(..., H, W)`` masks, ``x1``/``y1`` inclusive.

    Returns:
        ``(..., 4)`` int64 boxes; ``[0, 0, 0, 0]`` for an empty mask.
    """
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise ValueError(f"masks must be (..., H, W), got shape {masks.shape}")
    *lead, h, w = masks.shape
    boxes = np.zeros((*lead, 4), dtype=np.int64)
    if masks.size == 0:
        return boxes
    if masks.dtype != np.bool_:
        masks = masks != 0
    in_rows: NDArray[np.bool_] = np.any(masks, axis=-1)
    in_cols: NDArray[np.bool_] = np.any(masks, axis=-2)
    # argmax finds the first True; on the reversed axis, the last one.
    boxes[..., 0] = in_cols.argmax(axis=-1)
    boxes[..., 1] = in_rows.argmax(axis=-1)
    boxes[..., 2] = w - 1 - in_cols[..., ::-1].argmax(axis=-1)
    boxes[..., 3] = h - 1 - in_rows[..., ::-1].argmax(axis=-1)
    boxes[~in_rows.any(axis=-1)] = 0
    return boxes


def box_xyxy_to_xywh(boxes: NDArray[Any]) -> NDArray[Any]:
    """XYXY to XYWH along the last axis, as a new array.

    The reference indexes the first axis, so it is only right for a single ``(4,)``
    box; this works on ``(..., 4)`` and agrees on ``(4,)``.
    """
    out = np.array(boxes, copy=True)
    out[..., 2] -= out[..., 0]
    out[..., 3] -= out[..., 1]
    return out


# --- box geometry and NMS ---------------------------------------------------------------


def _upcast(values: NDArray[Any]) -> NDArray[Any]:
    """Mirror torchvision's ``_upcast``: products of box sides must not overflow small types."""
    if np.issubdtype(values.dtype, np.floating):
        return values if values.dtype in (np.float32, np.float64) else values.astype(np.float32)
    if values.dtype in (np.int32, np.int64):
        return values
    return values.astype(np.int32 if values.dtype.itemsize <= 2 else np.int64)


def box_area(boxes: NDArray[Any]) -> NDArray[Any]:
    """Areas ``(x1 - x0) * (y1 - y0)`` of ``(..., 4)`` XYXY boxes, in torchvision's dtypes.

    Inclusive mask boxes therefore get one row and column less than their pixel
    extent, exactly as in SAM.
    """
    b = _upcast(np.asarray(boxes))
    area: NDArray[Any] = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return area


def _true_divide(num: NDArray[Any], den: NDArray[Any]) -> NDArray[np.floating[Any]]:
    """Divide like torch: integers in float32 (default dtype), floats in their own dtype."""
    if not np.issubdtype(num.dtype, np.floating):
        num, den = num.astype(np.float32), den.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        quotient: NDArray[np.floating[Any]] = num / den
    return quotient


def box_iou(boxes1: NDArray[Any], boxes2: NDArray[Any]) -> NDArray[np.floating[Any]]:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` XYXY boxes, as ``torchvision.ops.box_iou``.

    Returns:
        ``(N, M)`` IoU: float64 for float64 boxes, else float32. Pairs of zero-area
        boxes give NaN (0 / 0), as in torchvision.
    """
    b1, b2 = np.asarray(boxes1), np.asarray(boxes2)
    area1, area2 = box_area(b1), box_area(b2)
    lt = np.maximum(b1[..., :, None, :2], b2[..., None, :, :2])
    rb = np.minimum(b1[..., :, None, 2:], b2[..., None, :, 2:])
    wh = np.maximum(_upcast(rb - lt), 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return _true_divide(inter, union)


def _descending_order(scores: NDArray[Any]) -> NDArray[np.intp]:
    """Indices by descending score, NaN first (as torch sorts), ties in input order."""
    scores = np.asarray(scores)
    nan = np.isnan(scores) if np.issubdtype(scores.dtype, np.floating) else np.zeros(0, bool)
    if nan.any():
        return np.lexsort((-np.where(nan, 0, scores), ~nan))
    return np.argsort(-scores, kind="stable")


def _as_nms_boxes(boxes: NDArray[Any], scores: NDArray[Any]) -> NDArray[np.floating[Any]]:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {boxes.shape}")
    if np.shape(scores) != (len(boxes),):
        raise ValueError(f"scores must be ({len(boxes)},), got shape {np.shape(scores)}")
    # SAM calls torchvision with float32 boxes (``boxes.float()``); float64 stays float64.
    return boxes if boxes.dtype == np.float64 else boxes.astype(np.float32)


def nms(boxes: NDArray[Any], scores: NDArray[Any], iou_threshold: float) -> NDArray[np.int64]:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms`` on CPU.

    A box is dropped when its IoU with a kept, higher-ranked box is strictly above
    ``iou_threshold``. IoU uses torchvision's float arithmetic (float32 unless the
    boxes are float64) and is compared in float64, as its kernel does: a threshold
    that float32 cannot represent must not be rounded first. Zero-area duplicates
    have a NaN IoU and never suppress each other.

    Returns:
        Indices of the kept boxes, by descending score; ties keep input order.
    """
    b = _as_nms_boxes(boxes, scores)
    order = _descending_order(scores)
    x0, y0, x1, y1 = (np.ascontiguousarray(c) for c in b[order].T)
    areas = (x1 - x0) * (y1 - y0)
    keep: list[int] = []
    candidates = np.arange(len(order))  # positions in score order, not yet suppressed
    with np.errstate(divide="ignore", invalid="ignore"):
        while candidates.size:
            i, rest = candidates[0], candidates[1:]
            keep.append(int(i))
            w = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
            h = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            candidates = rest[~(iou.astype(np.float64) > iou_threshold)]
    return order[np.asarray(keep, dtype=np.intp)].astype(np.int64)


def batched_nms(
    boxes: NDArray[Any],
    scores: NDArray[Any],
    categories: NDArray[Any],
    iou_threshold: float,
) -> NDArray[np.int64]:
    """NMS within each category independently, as ``torchvision.ops.batched_nms``.

    Up to 1000 boxes (on CPU) torchvision instead offsets each category's boxes far
    apart and runs one NMS; with non-integer coordinates that rounding can flip an
    IoU lying right at the threshold. SAM's pixel boxes are integers, for which
    both ways are exact.

    Returns:
        Indices of the kept boxes, by descending score; ties keep input order.
    """
    boxes, scores, cats = np.asarray(boxes), np.asarray(scores), np.asarray(categories)
    _as_nms_boxes(boxes, scores)
    if cats.shape != scores.shape:
        raise ValueError(f"categories must be {scores.shape}, got shape {cats.shape}")
    kept = [
        members[nms(boxes[members], scores[members], iou_threshold)]
        for members in (np.flatnonzero(cats == c) for c in np.unique(cats))
    ]
    keep = np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *kept]))
    return keep[_descending_order(scores[keep])]


# --- crops ----------------------------------------------------------------------------


def _crop_offset(crop_box: BoxLike) -> tuple[int, int]:
    x0, y0, _, _ = (int(v) for v in crop_box)
    return x0, y0


def _shift(values: NDArray[Any], offset: list[int]) -> NDArray[Any]:
    """Add an int64 offset with torch's promotion: floats keep their dtype, ints widen."""
    values = np.asarray(values)
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.dtype(np.int64)
    return values.astype(dtype, copy=False) + np.asarray(offset, dtype=dtype)


def uncrop_boxes_xyxy(boxes: NDArray[Any], crop_box: BoxLike) -> NDArray[Any]:
    """Move ``(..., 4)`` XYXY boxes from crop to image coordinates."""
    x0, y0 = _crop_offset(crop_box)
    return _shift(boxes, [x0, y0, x0, y0])


def uncrop_points(points: NDArray[Any], crop_box: BoxLike) -> NDArray[Any]:
    """Move ``(..., 2)`` XY points from crop to image coordinates."""
    return _shift(points, list(_crop_offset(crop_box)))


def uncrop_masks(masks: NDArray[Any], crop_box: BoxLike, orig_h: int, orig_w: int) -> NDArray[Any]:
    """Zero-pad ``(..., h, w)`` crop masks to ``(..., orig_h, orig_w)`` image masks.

    Returns:
        The input itself when the crop is the whole image, else a new array.
    """
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    masks = np.asarray(masks)
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    if not (0 <= x0 <= x1 <= orig_w and 0 <= y0 <= y1 <= orig_h):
        raise ValueError(f"crop box {crop_box} is not inside a {orig_h} x {orig_w} image")
    if masks.shape[-2:] != (y1 - y0, x1 - x0):
        raise ValueError(f"masks of shape {masks.shape} do not fit crop box {crop_box}")
    out = np.zeros((*masks.shape[:-2], orig_h, orig_w), dtype=masks.dtype)
    out[..., y0:y1, x0:x1] = masks
    return out


def is_box_near_crop_edge(
    boxes: NDArray[Any], crop_box: BoxLike, orig_box: BoxLike, atol: float = 20.0
) -> NDArray[np.bool_]:
    """Which crop-frame ``(N, 4)`` boxes touch a crop edge that is not an image edge.

    Such masks are probably cut by the crop; SAM drops them and relies on a larger
    crop to see the whole object. Closeness is ``|a - b| <= atol`` in float32, as
    ``torch.isclose`` computes it.
    """
    image_boxes = uncrop_boxes_xyxy(boxes, crop_box).astype(np.float32)
    tol = np.float32(atol)

    def near(edges: BoxLike) -> NDArray[np.bool_]:
        ref = np.asarray(edges, dtype=np.float32)
        close: NDArray[np.bool_] = (image_boxes == ref) | (np.abs(image_boxes - ref) <= tol)
        return close

    near_crop_only: NDArray[np.bool_] = np.any(near(crop_box) & ~near(orig_box), axis=-1)
    return near_crop_only
