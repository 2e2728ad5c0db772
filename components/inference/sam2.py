"""SAM 2's own rules on top of its exported graphs: prompt layout and the single mask.

Two things SAM2ImagePredictor does outside the networks, which the SAM 2 family's
runtime does on the exported graphs' outputs (and the export's parity gate checks
against the reference):

* a prompt set is laid out box first (corners labelled 2 and 3), then the points, then
  always one padding point (label -1), whether or not there is a box;
* an image (or a crop of one) is squashed to the encoder's square input, not
  letterboxed, and its low-res logits are stretched straight back;
* low-res logits handed back for refinement are clamped to ``±MASK_INPUT_LIMIT``;
* ``max_hole_area`` / ``max_sprinkle_area`` (its automatic generator's
  ``min_mask_region_area``) flip small background / foreground components of each
  mask's low-res logits before anything else reads them;
* a single-mask request takes output 0 only when it is *stable* (the share of its
  pixels above ``+delta`` among those above ``-delta`` is at least ``thresh``),
  else the multimask output with the highest predicted IoU
  (``dynamic_multimask_via_stability``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MASK_INPUT_LIMIT = 32.0
"""SAM2ImagePredictor clamps the low-res logits it returns (the next ``mask_input``)."""
AMG_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.8,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "mask_threshold": 0.0,
    "chip_nms_thr": 0.7,
    "n_crop_layers": 0,
    "crop_nms_thr": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
    "use_m2m": False,
    "multimask_output": True,
}
"""``SAM2AutomaticMaskGenerator``'s defaults under our parameter names (``chip_nms_thr``
is its ``box_nms_thresh``, ``n_crop_layers`` its ``crop_n_layers``): the CLI's
``--amg-defaults sam2``. The pipelines keep FarmVibes' defaults."""

STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98
"""SAM 2's ``dynamic_multimask_stability_delta`` and ``_thresh`` (``build_sam2``)."""


def sam2_prompt_arrays(
    points: NDArray[np.floating],
    labels: NDArray[np.integer],
    box: tuple[float, float, float, float] | None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """One prompt set as SAM 2's decoder reads it: ``(N, 2)`` pixel indices, ``(N,)`` labels.

    ``points`` and ``box`` are in the decoder's pixel-index coordinates already (the
    numbers SAM2ImagePredictor receives for a 1024 px image); a box's corners come
    first, the padding point last.
    """
    coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels, dtype=np.float64).reshape(-1)
    if box is not None:
        x0, y0, x1, y1 = box
        coords = np.vstack([[[x0, y0], [x1, y1]], coords])
        lab = np.concatenate([[2.0, 3.0], lab])
    coords = np.vstack([coords, [[0.0, 0.0]]])
    lab = np.concatenate([lab, [-1.0]])
    return coords.astype(np.float32), lab.astype(np.float32)


def stability_scores(
    logits: NDArray[np.floating], delta: float = STABILITY_DELTA
) -> NDArray[np.float64]:
    """Per mask of ``(..., H, W)`` logits: ``|> +delta| / |> -delta|`` (1 when both are empty)."""
    flat = np.asarray(logits).reshape(*np.shape(logits)[:-2], -1)
    inner = np.count_nonzero(flat > delta, axis=-1).astype(np.float64)
    outer = np.count_nonzero(flat > -delta, axis=-1).astype(np.float64)
    return np.where(outer > 0, inner / np.maximum(outer, 1.0), 1.0)


def select_single_mask(
    low_res: NDArray[np.float32],
    iou: NDArray[np.float32],
    delta: float = STABILITY_DELTA,
    thresh: float = STABILITY_THRESH,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """SAM 2's single mask of each prompt set, from all four outputs.

    Args:
        low_res: ``(P, 4, L, L)`` logits: output 0 the single-mask one, 1-3 multimask.
        iou: ``(P, 4)`` predicted IoUs.
        delta: Logit margin of the stability score.
        thresh: Smallest stability score of a single mask that is taken as it is.

    Returns:
        ``(P, L, L)`` logits, ``(P,)`` IoUs, and ``(P,)`` the output index chosen.
    """
    best = 1 + np.argmax(iou[:, 1:], axis=1)
    stable = stability_scores(low_res[:, 0]) >= thresh
    chosen = np.where(stable, 0, best).astype(np.int64)
    rows = np.arange(len(chosen))
    return low_res[rows, chosen], iou[rows, chosen], chosen


def squash_input(
    image: NDArray[np.uint8], crop_box: NDArray[np.int64] | list[int], size: int
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """SAM 2's encoder input for one crop: resized to ``size`` x ``size``, aspect ignored.

    SAM2Transforms resizes the image as floats in [0, 1] (bilinear); here each channel
    is resized as float32 too and only then rounded to the uint8 the encoder graph
    takes, so a crop's input is within half a grey level of the reference's. A crop
    that already has the input's size is passed through exactly.
    """
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    if crop.shape[:2] != (size, size):
        channels = [
            np.asarray(
                Image.fromarray(crop[..., c].astype(np.float32), mode="F").resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for c in range(3)
        ]
        crop = np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)), (size, size)
