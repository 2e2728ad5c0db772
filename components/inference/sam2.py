"""SAM 2's own rules on top of its exported graphs: prompt layout and the single mask.

Two things SAM2ImagePredictor does outside the networks, which the SAM 2 family's
runtime does on the exported graphs' outputs (and the export's parity gate checks
against the reference):

* a prompt set is laid out box first (corners labelled 2 and 3), then the points, then
  always one padding point (label -1), whether or not there is a box;
* a single-mask request takes output 0 only when it is *stable* (the share of its
  pixels above ``+delta`` among those above ``-delta`` is at least ``thresh``),
  else the multimask output with the highest predicted IoU
  (``dynamic_multimask_via_stability``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

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
