"""Merge prompted-mode masks: one mask per ``prompt_id``, in scene pixel coordinates.

Where several chips segmented the same prompt, each scene pixel is taken from the chip
whose centre is nearest (Manhattan distance, ties to the lower chip index) among the
chips that returned a mask for that prompt and contain the pixel. On a full grid this
is exactly the write-interval partition of :mod:`components.core.chips`. Masks are
:class:`~components.core.merge.SceneMask` s, as in automatic mode.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from components.core.chips import Chip, ChipGrid
from components.core.geometry import mask_box, union_box
from components.core.merge import PromptId, SceneMask, crop, stitch


def pixel_owner(
    chips: Sequence[Chip], rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Position in ``chips`` of the chip that owns each pixel among those containing it.

    The owner is the chip whose centre is nearest in Manhattan distance, ties going
    to the lower chip index; on a full grid this equals :meth:`ChipGrid.owner`.
    Pixels no chip contains get -1.
    """
    best = np.full(rows.shape, -1, dtype=np.int64)
    best_dist = np.full(rows.shape, np.inf)
    for pos, chip in sorted(enumerate(chips), key=lambda pc: pc[1].index):
        x0, y0, x1, y1 = chip.valid_bounds
        cx, cy = chip.center
        inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
        dist = np.abs(cols + 0.5 - cx) + np.abs(rows + 0.5 - cy)
        better = inside & (dist < best_dist)  # strict: ties stay with the lower index
        best[better] = pos
        best_dist[better] = dist[better]
    return best


def merge_prompted(
    masks: Sequence[SceneMask], grid: ChipGrid, prompt_order: Sequence[PromptId] | None = None
) -> list[SceneMask]:
    """One mask per prompt_id, assembled from the chips that segmented it.

    Returned in ``prompt_order`` (default: first appearance); prompts without a
    mask are absent from the result (their output band stays empty).
    """
    by_prompt: dict[Hashable, list[SceneMask]] = {}
    for m in masks:
        if m.prompt_id is None:
            raise ValueError("merge_prompted needs masks with a prompt_id")
        by_prompt.setdefault(m.prompt_id, []).append(m)
    order = list(by_prompt) if prompt_order is None else list(prompt_order)
    unknown = set(by_prompt) - set(order)
    if unknown:
        raise ValueError(f"masks for prompt ids not in prompt_order: {sorted(map(str, unknown))}")
    out = []
    for pid in order:
        parts = by_prompt.get(pid, [])
        if not parts:
            continue
        if len(parts) == 1:
            out.append(parts[0])
            continue
        chips = [grid[p.chip_index] for p in parts]
        box = parts[0].box
        for p in parts[1:]:
            box = union_box(box, p.box)
        rows, cols = np.mgrid[box[1] : box[3], box[0] : box[2]].astype(np.int64)
        owner = pixel_owner(chips, rows, cols)
        assembled = np.zeros(rows.shape, dtype=bool)
        for pos, p in enumerate(parts):
            assembled |= crop(p, box) & (owner == pos)
        tight = mask_box(assembled)
        if tight is None:
            continue
        x0, y0, x1, y1 = tight
        merged = stitch(parts)
        out.append(
            replace(
                merged,
                box=(box[0] + x0, box[1] + y0, box[0] + x1, box[1] + y1),
                mask=assembled[y0:y1, x0:x1],
            )
        )
    return out
