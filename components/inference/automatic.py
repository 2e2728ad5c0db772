"""Automatic mask generation on one chip: SAM's and SAM 2's automatic mask generators.

Same algorithm and parameters as segment_anything's ``SamAutomaticMaskGenerator`` and,
with a SAM 2 model, sam2's ``SAM2AutomaticMaskGenerator`` (FarmVibes' ``auto_segment_s2``
names and defaults), orchestrated like them (``chip -> crops -> point batches``) over
:mod:`components.core.amg`. What differs between the families is the model's
(:class:`~components.inference.model.SegmentationModel`): how a crop becomes the
encoder's input, the single mask, and where ``min_mask_region_area`` acts
(``small_regions``). SAM 2's options ``use_m2m``, ``mask_threshold`` and
``multimask_output`` run with either family. Two changes give identical results for
less work:

* the decoder stops at low-resolution logits, masks are filtered on predicted IoU
  there, and only survivors are upsampled (the reference upsamples every mask of
  every batch to full resolution before filtering);
* masks stay boolean arrays; no RLE round trip.

Crop layers are encoded as the family's predictor prepares an image
(:meth:`~components.inference.model.SegmentationModel.crop_input`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from components.core import amg, regions
from components.core.params import AmgParams
from components.inference.model import SegmentationModel


@dataclass
class ChipMasks:
    """Masks of one chip, SAM's record fields as arrays (``K`` masks)."""

    masks: NDArray[np.bool_]
    """``(K, H, W)`` in the chip's frame."""
    boxes: NDArray[np.int64]
    """``(K, 4)`` inclusive XYXY, chip frame (SAM's convention)."""
    predicted_iou: NDArray[np.float32]
    stability_score: NDArray[np.float32]
    points: NDArray[np.float64]
    """``(K, 2)`` the grid point that produced each mask, chip frame."""
    crop_boxes: NDArray[np.int64]
    """``(K, 4)`` XYXY crop each mask came from."""

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def subset(self, keep: NDArray[np.integer] | NDArray[np.bool_]) -> ChipMasks:
        """The masks selected by an index or boolean array, in that order."""
        return ChipMasks(
            self.masks[keep],
            self.boxes[keep],
            self.predicted_iou[keep],
            self.stability_score[keep],
            self.points[keep],
            self.crop_boxes[keep],
        )

    @staticmethod
    def empty(h: int, w: int) -> ChipMasks:
        """No masks (a chip where nothing survives is normal, not an error)."""
        return ChipMasks(
            np.zeros((0, h, w), bool),
            np.zeros((0, 4), np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 2), np.float64),
            np.zeros((0, 4), np.int64),
        )

    @staticmethod
    def concat(parts: list[ChipMasks], h: int, w: int) -> ChipMasks:
        """All masks of several parts, in order."""
        if not parts:
            return ChipMasks.empty(h, w)
        return ChipMasks(
            np.concatenate([p.masks for p in parts]),
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.predicted_iou for p in parts]),
            np.concatenate([p.stability_score for p in parts]),
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.crop_boxes for p in parts]),
        )


Encoder = Callable[[NDArray[np.uint8], list[tuple[int, int, int, int]]], NDArray[np.float32]]
"""Embeds ``(B, 3, S, S)`` uint8 crop inputs, given their crop boxes (cache keys)."""


def process_crop(
    model: SegmentationModel,
    embedding: NDArray[np.float32],
    crop_box: NDArray[np.int64],
    points_grid: NDArray[np.float64],
    orig_size: tuple[int, int],
    params: AmgParams,
) -> ChipMasks:
    """All masks of one crop that pass the filters, deduplicated, in the chip frame."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    crop_h, crop_w = y1 - y0, x1 - x0
    orig_h, orig_w = orig_size
    input_size = model.input_size(crop_h, crop_w)
    points = points_grid * np.array([crop_w, crop_h], dtype=np.float64)
    # the predictors' coordinate transform into the encoder's input, in pixel indices
    coords = points * np.array([input_size[1] / crop_w, input_size[0] / crop_h])
    parts: list[ChipMasks] = []
    for batch_coords, batch_points in amg.batch_iterator(params.points_per_batch, coords, points):
        part = _process_batch(
            model, embedding, batch_coords, batch_points, input_size, crop_box, orig_size, params
        )
        if part is not None:
            parts.append(part)
    if not parts:
        return ChipMasks.empty(orig_h, orig_w)
    data = _nms_parts(parts, params.chip_nms_thr)
    return ChipMasks(
        amg.uncrop_masks(data.masks, crop_box, orig_h, orig_w),
        amg.uncrop_boxes_xyxy(data.boxes, crop_box),
        data.predicted_iou,
        data.stability_score,
        amg.uncrop_points(data.points, crop_box),
        data.crop_boxes,
    )


def _grid_masks(
    model: SegmentationModel,
    embedding: NDArray[np.float32],
    batch_coords: NDArray[np.float64],
    params: AmgParams,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.intp]]:
    """Low-res logits and predicted IoUs of a batch of grid points, and each one's point.

    One click per prompt set (plus the padding point both families' predictors add):
    the three multimask outputs, or the family's single mask. With ``use_m2m`` every
    mask is decoded once more with its own logits as mask input (SAM 2's
    ``refine_with_m2m``: the single mask of that pass replaces it).
    """
    n = len(batch_coords)
    coords = np.zeros((n, 2, 2), np.float32)
    coords[:, 0] = batch_coords
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (n, 1))
    out = model.decode(embedding, coords, labels)
    if params.multimask_output:
        ious = out.iou_predictions[:, 1:].reshape(-1)
        low = out.low_res_logits[:, 1:].reshape(-1, *out.low_res_logits.shape[2:])
    else:
        single, iou = model.single_mask(out)
        ious, low = iou.reshape(-1), single[:, 0]
    point_of = np.repeat(np.arange(n), len(ious) // max(n, 1))
    if params.use_m2m and len(ious):
        out = model.decode(embedding, coords[point_of], labels[point_of], mask_input=low[:, None])
        single, iou = model.single_mask(out)
        ious, low = iou.reshape(-1), single[:, 0]
    return low, ious.astype(np.float32), point_of


def _process_batch(
    model: SegmentationModel,
    embedding: NDArray[np.float32],
    batch_coords: NDArray[np.float64],
    batch_points: NDArray[np.float64],
    input_size: tuple[int, int],
    crop_box: NDArray[np.int64],
    orig_size: tuple[int, int],
    params: AmgParams,
) -> ChipMasks | None:
    """One batch of grid points: decode, filter on low-res data, upsample survivors only."""
    crop_h, crop_w = int(crop_box[3] - crop_box[1]), int(crop_box[2] - crop_box[0])
    low, ious, point_of = _grid_masks(model, embedding, batch_coords, params)
    pts = batch_points[point_of]
    keep = ious > params.pred_iou_thresh if params.pred_iou_thresh > 0 else slice(None)
    ious, low, pts = ious[keep], low[keep], pts[keep]
    if len(ious) == 0:
        return None
    if model.small_regions == "logits" and params.min_mask_region_area > 0:
        # the area is in crop pixels, the logits' are coarser; SAM 2's generator fills at
        # its predictor's threshold (0), not at its own mask_threshold
        scale = low.shape[-2] * low.shape[-1] / (crop_h * crop_w)
        low = regions.fill_small_regions(low, params.min_mask_region_area * scale, 0.0)
    logits = model.upscale(low, input_size, (crop_h, crop_w))
    threshold = params.mask_threshold
    stability = amg.calculate_stability_score(logits, threshold, params.stability_score_offset)
    if params.stability_score_thresh > 0:
        keep = stability >= params.stability_score_thresh
        logits, ious, pts, stability = logits[keep], ious[keep], pts[keep], stability[keep]
    masks = logits > threshold
    boxes = amg.batched_mask_to_box(masks)
    keep = ~amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
    return ChipMasks(
        masks[keep],
        boxes[keep],
        ious[keep],
        stability[keep].astype(np.float32),
        pts[keep],
        np.tile(np.asarray(crop_box, np.int64), (int(keep.sum()), 1)),
    )


def _nms_parts(parts: list[ChipMasks], threshold: float) -> ChipMasks:
    """Box NMS over all parts' masks, copying only the masks it keeps.

    With relaxed filters a chip has 768 full-size masks (768 MB) of which NMS keeps a
    few; concatenating them all first would copy every one.
    """
    boxes = np.concatenate([p.boxes for p in parts])
    scores = np.concatenate([p.predicted_iou for p in parts])
    keep = amg.nms(boxes.astype(np.float32), scores, threshold)
    part_of = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    offsets = np.cumsum([0] + [len(p) for p in parts])
    h, w = parts[0].masks.shape[1:]
    masks = np.empty((len(keep), h, w), dtype=bool)
    for row, k in enumerate(keep.tolist()):
        masks[row] = parts[part_of[k]].masks[k - offsets[part_of[k]]]
    return ChipMasks(
        masks,
        boxes[keep],
        scores[keep],
        np.concatenate([p.stability_score for p in parts])[keep],
        np.concatenate([p.points for p in parts])[keep],
        np.concatenate([p.crop_boxes for p in parts])[keep],
    )


def generate_chip_masks(
    model: SegmentationModel,
    image: NDArray[np.uint8],
    params: AmgParams,
    encode: Encoder | None = None,
    embedding: NDArray[np.float32] | None = None,
) -> ChipMasks:
    """``SamAutomaticMaskGenerator.generate`` on one ``(H, W, 3)`` uint8 chip.

    ``embedding`` is the whole chip's embedding if the caller already has it (chips
    are encoded in batches, through the cache); crop layers are encoded with
    ``encode`` (default: the model) in one batch per chip.
    """
    if encode is None:

        def encode(
            inputs: NDArray[np.uint8], boxes: list[tuple[int, int, int, int]]
        ) -> NDArray[np.float32]:
            step = model.default_batch_size  # vit_b needs ~3.5 GB per chip on a CPU
            return np.concatenate(
                [model.encode(inputs[k : k + step]) for k in range(0, len(inputs), step)]
            )

    orig_h, orig_w = image.shape[:2]
    crop_boxes, layer_idxs = amg.generate_crop_boxes(
        (orig_h, orig_w), params.n_crop_layers, params.crop_overlap_ratio
    )
    grids = amg.build_all_layer_point_grids(
        params.points_per_side, params.n_crop_layers, params.crop_n_points_downscale_factor
    )
    inputs, boxes = [], []
    for k, box in enumerate(crop_boxes):
        xyxy = (int(box[0]), int(box[1]), int(box[2]), int(box[3]))
        if k == 0 and xyxy == (0, 0, orig_w, orig_h) and embedding is not None:
            continue
        inputs.append(model.crop_input(image, box)[0])
        boxes.append(xyxy)
    encoded = list(encode(np.stack(inputs), boxes)) if inputs else []
    embeddings = ([embedding] if embedding is not None else []) + encoded
    parts = [
        process_crop(model, emb[None], box, grids[layer], (orig_h, orig_w), params)
        for emb, box, layer in zip(embeddings, crop_boxes, layer_idxs, strict=True)
    ]
    data = ChipMasks.concat(parts, orig_h, orig_w)
    if len(crop_boxes) > 1 and len(data) > 0:
        # prefer masks from smaller crops, as SAM does
        scores = (1.0 / amg.box_area(data.crop_boxes.astype(np.float32))).astype(np.float32)
        data = data.subset(amg.nms(data.boxes.astype(np.float32), scores, params.crop_nms_thr))
    if model.small_regions == "masks" and params.min_mask_region_area > 0 and len(data) > 0:
        cleaned = regions.postprocess_small_regions(
            data.masks,
            params.min_mask_region_area,
            max(params.chip_nms_thr, params.crop_nms_thr),
        )
        data = data.subset(cleaned.keep)
        data.masks = cleaned.masks
        data.boxes = cleaned.boxes
    return data
