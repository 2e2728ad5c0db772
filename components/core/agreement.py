"""How closely two runs of a model agree: embeddings, and the masks users get.

A faster backend or a lower precision is worth nothing unless its masks are the masks
fp32 gives. These are the figures the backend tests and benchmarks report (and
assert): the embedding error relative to the embedding's scale, the IoU of the masks
two runs give for the same prompt, and, per mask of an automatic run, the IoU of the
other run's mask that matches it best.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pycocotools import mask as mask_utils


def relative_max_error(reference: NDArray[np.floating], other: NDArray[np.floating]) -> float:
    """Largest absolute difference, relative to the reference's largest magnitude."""
    scale = float(np.abs(reference).max())
    return float(np.abs(other.astype(np.float64) - reference).max()) / (scale or 1.0)


def relative_rms_error(reference: NDArray[np.floating], other: NDArray[np.floating]) -> float:
    """``||other - reference|| / ||reference||``: the error rounding analysis bounds."""
    ref = reference.astype(np.float64)
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(other.astype(np.float64) - ref)) / (norm or 1.0)


def best_ious(reference: NDArray[np.bool_], other: NDArray[np.bool_]) -> NDArray[np.float64]:
    """For each of ``reference``'s ``(N, H, W)`` masks, its best IoU with one of ``other``'s.

    0 where ``other`` is empty or no mask overlaps. COCO RLE keeps this cheap for the
    hundreds of full-chip masks of an automatic run.
    """
    if len(reference) == 0:
        return np.zeros(0)
    if len(other) == 0:
        return np.zeros(len(reference))
    ref = mask_utils.encode(np.asfortranarray(reference.transpose(1, 2, 0).astype(np.uint8)))
    oth = mask_utils.encode(np.asfortranarray(other.transpose(1, 2, 0).astype(np.uint8)))
    ious = np.asarray(mask_utils.iou(ref, oth, [0] * len(oth)), dtype=np.float64)
    return np.asarray(ious.reshape(len(reference), len(other)).max(axis=1), dtype=np.float64)


def pairwise_ious(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> NDArray[np.float64]:
    """IoU of ``a[k]`` with ``b[k]`` for each k: the same prompt answered by two runs."""
    if a.shape != b.shape:
        raise ValueError(f"mask stacks differ in shape: {a.shape} vs {b.shape}")
    flat_a = a.reshape(len(a), -1)
    flat_b = b.reshape(len(b), -1)
    inter = np.count_nonzero(flat_a & flat_b, axis=1)
    union = np.count_nonzero(flat_a | flat_b, axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
