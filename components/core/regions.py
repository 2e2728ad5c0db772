"""Small-region clean-up: SAM's ``min_mask_region_area`` post-processing, and SAM 2's.

SAM's (:func:`postprocess_small_regions`) works on the final masks: holes smaller than
the area are filled and islands smaller than it dropped (8-connected, as OpenCV's
``connectedComponentsWithStats`` in the reference); masks that changed then lose to
unchanged ones in a box NMS, exactly as ``SamAutomaticMaskGenerator`` does.
``tests/components/core/test_amg.py`` checks both against the installed reference.

SAM 2's (:func:`fill_small_regions`) works earlier, on each mask's low-res logits, before
the mask is scored; its generator has no mask-level step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from components.core.amg import batched_mask_to_box, nms

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(
    mask: NDArray[np.bool_], area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[NDArray[np.bool_], bool]:
    """Fill 8-connected holes, or drop islands, smaller than ``area_thresh`` pixels.

    In ``"islands"`` mode a mask made only of small islands keeps its largest (on a
    tie, the one OpenCV would pick), so it never becomes empty. The background
    touching the border counts as a hole too, as in the reference.

    Returns:
        The mask (the input itself when nothing changed) and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    fill_holes = mode == "holes"
    labels, n_labels = ndimage.label(~mask if fill_holes else mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    # Lookup table over labels; label 0 is the complement of the regions examined.
    if fill_holes:
        keep = np.concatenate([[True], small])
    else:
        keep = np.concatenate([[False], ~small])
        if not keep.any():
            keep[_first_largest_label(labels, sizes)] = True
    return keep[labels], True


def _first_largest_label(labels: NDArray[np.int32], sizes: NDArray[np.intp]) -> int:
    """Label of the largest region, ties going to the one OpenCV numbers first.

    OpenCV's 8-connected labelling scans 2 x 2 pixel blocks, so it numbers regions by
    their first block in block-raster order, not by their first pixel as scipy does.
    """
    largest = np.flatnonzero(sizes == sizes.max()) + 1
    if len(largest) == 1:
        return int(largest[0])
    h, w = labels.shape
    block = (np.arange(h)[:, None] // 2) * ((w + 1) // 2) + np.arange(w)[None, :] // 2
    first_block = ndimage.minimum(block, labels, index=largest)
    return int(largest[int(np.argmin(first_block))])


@dataclass(frozen=True)
class SmallRegionsResult:
    """Masks kept after small-region clean-up, in NMS order."""

    keep: NDArray[np.int64]
    """Indices into the input masks, by descending score (unchanged masks first)."""
    masks: NDArray[np.bool_]
    """``(K, H, W)`` cleaned masks of the kept inputs."""
    boxes: NDArray[np.int64]
    """``(K, 4)`` inclusive XYXY boxes of the cleaned masks."""
    changed: NDArray[np.bool_]
    """``(K,)`` the reference's "changed" flag: holes or islands were found small.

    A mask that is a single island under ``min_area`` counts as changed though it
    survives untouched (as the largest island), exactly as in SAM.
    """


def postprocess_small_regions(
    masks: Sequence[NDArray[np.bool_]] | NDArray[np.bool_], min_area: float, nms_thresh: float
) -> SmallRegionsResult:
    """Fill small holes, drop small islands, then NMS away the duplicates this creates.

    As ``SamAutomaticMaskGenerator.postprocess_small_regions``: masks that needed
    changes score 0 and unchanged ones 1, so box NMS prefers masks that were clean
    already; among equal scores the earlier mask wins.
    """
    if len(masks) == 0:
        shape = np.shape(masks)[1:] if np.ndim(masks) == 3 else (0, 0)
        return SmallRegionsResult(
            keep=np.zeros(0, dtype=np.int64),
            masks=np.zeros((0, *shape), dtype=bool),
            boxes=np.zeros((0, 4), dtype=np.int64),
            changed=np.zeros(0, dtype=bool),
        )
    cleaned = []
    changed = []
    for mask in masks:
        mask, filled = remove_small_regions(mask, min_area, mode="holes")
        mask, dropped = remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(mask)
        changed.append(filled or dropped)
    stacked = np.stack(cleaned)
    was_changed = np.asarray(changed, dtype=bool)
    boxes = batched_mask_to_box(stacked)
    keep = nms(boxes.astype(np.float32), (~was_changed).astype(np.float32), nms_thresh)
    return SmallRegionsResult(
        keep=keep, masks=stacked[keep], boxes=boxes[keep], changed=was_changed[keep]
    )


REGION_FILL_LOGIT = 10.0
"""What SAM 2's hole and sprinkle filling writes: ``threshold ± 10``."""


def fill_small_regions(
    low_res: NDArray[np.float32], max_area: float, threshold: float
) -> NDArray[np.float32]:
    """SAM 2's hole and sprinkle filling of ``(N, L, L)`` low-res logits.

    8-connected components of the background (``<= threshold``) of at most
    ``max_area`` logit pixels become ``threshold + 10``; components of the foreground
    (``> threshold``, found on the input) of at most ``max_area`` become
    ``threshold - 10``, as ``SAM2Transforms.postprocess_masks`` does with SAM 2's
    optional CUDA extension (without it, SAM 2 skips this step with a warning).
    """
    out = np.array(low_res, dtype=np.float32, copy=True)
    if max_area <= 0:
        return out
    for k, logits in enumerate(np.asarray(low_res)):
        fore = logits > threshold
        out[k][_small_components(~fore, max_area)] = threshold + REGION_FILL_LOGIT
        out[k][_small_components(fore, max_area)] = threshold - REGION_FILL_LOGIT
    return out


def _small_components(mask: NDArray[np.bool_], max_area: float) -> NDArray[np.bool_]:
    """Pixels of the 8-connected components of ``mask`` with at most ``max_area`` pixels."""
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    small = areas <= max_area
    small[0] = False
    result: NDArray[np.bool_] = small[labels]
    return result
