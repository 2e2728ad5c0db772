"""Merge per-chip SAM masks into one scene, in ONE frame: scene pixel coordinates.

FarmVibes.AI compares mask boxes translated by the chip's *read* offset with chip
windows in the *write* frame; the two differ by the ROI's offset in the source
raster, so masks at seams are lost or duplicated whenever the scene does not start
at pixel (0, 0). Here every mask is moved to scene pixels once, when it leaves its
chip (:func:`masks_from_chip`), and never compared in any other frame.

Automatic mode (:func:`merge_automatic`):

1. A mask is *cut* when its box lies within ``edge_tolerance`` px of an *inner*
   edge of its chip (an edge inside the scene, where a neighbour chip continues).
   Masks touching the scene border are complete: nothing lies beyond.
2. A cut mask is dropped when a complete mask from another chip explains it: their
   IoU inside the cut mask's chip is at least ``seam_iou``. That chip saw the whole
   object; the cut copy is the same object seen through a smaller window.
3. Cut masks left over belong to objects no single chip saw whole (larger than the
   overlap). Fragments from overlapping chips that agree inside their common area
   (IoU >= ``seam_iou`` there) are stitched into one mask (their union).
4. Cross-chip duplicates: two complete masks from two chips that both saw the whole
   of both (their union lies in the chips' common area) are one object when the
   smaller lies mostly inside the larger (intersection over the smaller mask at least
   ``duplicate_ios``), unless either chip drew both shapes itself (a field and its
   group of fields: two granularities it told apart, kept as within one chip). SAM draws one
   parcel a little differently through two windows, so the copies' IoU can fall to
   0.35 and mask NMS alone keeps both (:func:`cross_chip_duplicates`).
5. Global NMS on *mask* IoU (not box IoU, which merges nested or L-shaped fields):
   a mask is suppressed when its IoU with a better-ranked kept mask exceeds
   ``mask_nms_thr``, or when it is a cross-chip duplicate of it. Ranking (the
   documented preference rule): higher ``predicted_iou`` first, then higher
   ``stability_score``, then smaller area (SAM's own crop NMS prefers the finer
   mask), then lower chip index and position, so the result is deterministic.

Prompted mode merges by prompt instead (:mod:`components.core.prompt_merge`).

Output rasters are rendered from the merged masks by :mod:`components.core.rendering`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from components.core.chips import Chip, ChipGrid, inner_edges
from components.core.geometry import Box, intersect_boxes, mask_box, overlapping_pairs, union_box

PromptId = int | str

DEFAULT_MASK_NMS_THR = 0.5
"""FarmVibes' default mask NMS threshold across chips."""
DEFAULT_DUPLICATE_IOS = 0.8
"""Intersection over the smaller mask above which two chips' complete masks of the same
area are one object (step 4 of the module docstring)."""


@dataclass(frozen=True, eq=False)
class SceneMask:
    """One mask in scene pixel coordinates, stored cropped to its bounding box."""

    box: Box
    mask: NDArray[np.bool_]
    """Boolean array of shape ``(y1 - y0, x1 - x0)``."""
    predicted_iou: float
    stability_score: float
    chips: tuple[int, ...]
    """Chips the mask came from: one, or several for a mask stitched across seams."""
    prompt_id: PromptId | None = None
    area: int = field(init=False)

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if self.mask.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"mask shape {self.mask.shape} does not match box {self.box}")
        object.__setattr__(self, "area", int(np.count_nonzero(self.mask)))

    @property
    def chip_index(self) -> int:
        """The chip the mask came from (the lowest, for a stitched mask)."""
        return min(self.chips)


def masks_from_chip(
    chip: Chip,
    masks: NDArray[np.bool_],
    predicted_iou: Sequence[float] | NDArray[np.floating],
    stability_score: Sequence[float] | NDArray[np.floating],
    prompt_ids: Sequence[PromptId | None] | None = None,
) -> list[SceneMask]:
    """Move a chip's masks ``(N, size, size)`` into scene coordinates.

    Pixels in the chip's padding (beyond a short scene's end) are discarded, and
    masks left empty are dropped: an empty chip yields an empty list.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != (chip.size, chip.size):
        raise ValueError(
            f"chip {chip.index}: expected masks of shape (N, {chip.size}, {chip.size}), "
            f"got {masks.shape}"
        )
    n = masks.shape[0]
    if len(predicted_iou) != n or len(stability_score) != n:
        raise ValueError(f"chip {chip.index}: {n} masks but scores for a different count")
    if prompt_ids is not None and len(prompt_ids) != n:
        raise ValueError(f"chip {chip.index}: {n} masks but {len(prompt_ids)} prompt ids")
    out = []
    for k in range(n):
        valid = masks[k, : chip.valid_height, : chip.valid_width]
        box = mask_box(valid)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        out.append(
            SceneMask(
                box=(x0 + chip.col, y0 + chip.row, x1 + chip.col, y1 + chip.row),
                mask=np.ascontiguousarray(valid[y0:y1, x0:x1]),
                predicted_iou=float(predicted_iou[k]),
                stability_score=float(stability_score[k]),
                chips=(chip.index,),
                prompt_id=None if prompt_ids is None else prompt_ids[k],
            )
        )
    return out


# ---------------------------------------------------------------------------
# Mask geometry (pure, small)


def crop(m: SceneMask, region: Box) -> NDArray[np.bool_]:
    """The mask's pixels inside ``region``, as an array the size of ``region``."""
    if intersect_boxes(region, m.box) == region:  # a read-only view: the merge compares
        x0, y0, x1, y1 = region  # up to a million pairs, and copies were most of its time
        view = m.mask[y0 - m.box[1] : y1 - m.box[1], x0 - m.box[0] : x1 - m.box[0]]
        view.flags.writeable = False
        return view
    out = np.zeros((region[3] - region[1], region[2] - region[0]), dtype=bool)
    inter = intersect_boxes(m.box, region)
    if inter is not None:
        x0, y0, x1, y1 = inter
        out[y0 - region[1] : y1 - region[1], x0 - region[0] : x1 - region[0]] = m.mask[
            y0 - m.box[1] : y1 - m.box[1], x0 - m.box[0] : x1 - m.box[0]
        ]
    return out


def mask_iou(a: SceneMask, b: SceneMask, region: Box | None = None) -> float:
    """IoU of two masks, optionally counting only pixels inside ``region``."""
    box_a, box_b = a.box, b.box
    if region is not None:
        ra, rb = intersect_boxes(box_a, region), intersect_boxes(box_b, region)
        if ra is None or rb is None:
            return 0.0
        box_a, box_b = ra, rb
    common = intersect_boxes(box_a, box_b)
    inter = 0 if common is None else int(np.count_nonzero(crop(a, common) & crop(b, common)))
    if inter == 0:
        return 0.0
    area_a = a.area if box_a == a.box else int(np.count_nonzero(crop(a, box_a)))
    area_b = b.area if box_b == b.box else int(np.count_nonzero(crop(b, box_b)))
    return inter / (area_a + area_b - inter)


def area_ratio(a: SceneMask, b: SceneMask) -> float:
    """The smaller area over the larger: the highest IoU two masks can have."""
    return min(a.area, b.area) / max(1, a.area, b.area)


def touches_inner_edge(box: Box, chip: Chip, grid: ChipGrid, tolerance: int) -> bool:
    """Whether a mask box lies within ``tolerance`` px of an inner edge of its chip."""
    left, top, right, bottom = inner_edges(chip, grid)
    vx0, vy0, vx1, vy1 = chip.valid_bounds
    x0, y0, x1, y1 = box
    return (
        (left and x0 < vx0 + tolerance)
        or (top and y0 < vy0 + tolerance)
        or (right and x1 > vx1 - tolerance)
        or (bottom and y1 > vy1 - tolerance)
    )


def rank_order(masks: Sequence[SceneMask]) -> list[int]:
    """Indices of ``masks`` best first, by the preference rule in the module docstring."""
    return sorted(
        range(len(masks)),
        key=lambda k: (
            -masks[k].predicted_iou,
            -masks[k].stability_score,
            masks[k].area,
            masks[k].chip_index,
            masks[k].box[1],
            masks[k].box[0],
        ),
    )


def intersection_over_smaller(a: SceneMask, b: SceneMask) -> float:
    """Shared pixels over the smaller mask's area: 1 when one lies inside the other."""
    common = intersect_boxes(a.box, b.box)
    if common is None:
        return 0.0
    inter = int(np.count_nonzero(crop(a, common) & crop(b, common)))
    return inter / max(1, min(a.area, b.area))


def mask_nms(
    masks: Sequence[SceneMask],
    iou_threshold: float,
    duplicates: frozenset[frozenset[int]] = frozenset(),
) -> list[int]:
    """Greedy NMS on mask IoU; returns kept indices, best first.

    A pair in ``duplicates`` (index pairs) is one object whatever its IoU: the
    better-ranked mask suppresses the other.
    """
    order = rank_order(masks)
    neighbours: dict[int, list[int]] = {}
    for i, j in overlapping_pairs([m.box for m in masks]).tolist():
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    suppressed = np.zeros(len(masks), dtype=bool)
    kept = []
    for k in order:
        if suppressed[k]:
            continue
        kept.append(k)
        for other in neighbours.get(k, []):
            if suppressed[other]:
                continue
            if frozenset((k, other)) in duplicates or (
                mask_iou(masks[k], masks[other]) > iou_threshold
            ):
                suppressed[other] = True
    return kept


def stitch(parts: Sequence[SceneMask]) -> SceneMask:
    """Union of mask fragments of one object; scores are area-weighted means."""
    box = parts[0].box
    for p in parts[1:]:
        box = union_box(box, p.box)
    out = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
    for p in parts:
        out |= crop(p, box)
    weights = np.array([p.area for p in parts], dtype=np.float64)
    chips = tuple(sorted({c for p in parts for c in p.chips}))
    return SceneMask(
        box=box,
        mask=out,
        predicted_iou=float(np.average([p.predicted_iou for p in parts], weights=weights)),
        stability_score=float(np.average([p.stability_score for p in parts], weights=weights)),
        chips=chips,
        prompt_id=parts[0].prompt_id,
    )


# ---------------------------------------------------------------------------
# Automatic mode


def _validate_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def merge_automatic(
    masks: Sequence[SceneMask],
    grid: ChipGrid,
    mask_nms_thr: float = DEFAULT_MASK_NMS_THR,
    edge_tolerance: int = 4,
    seam_iou: float = 0.5,
    duplicate_ios: float | None = DEFAULT_DUPLICATE_IOS,
) -> list[SceneMask]:
    """Merge automatic-mode masks from all chips into one list, best first.

    ``edge_tolerance`` defaults to 4 px: SAM upsamples 256 px low-res logits to
    1024 px, so a mask cut by the chip edge may stop up to 4 px short of it.
    ``duplicate_ios`` ``None`` leaves cross-chip duplicates to mask NMS alone.
    """
    _validate_threshold("mask_nms_thr", mask_nms_thr)
    _validate_threshold("seam_iou", seam_iou)
    if duplicate_ios is not None:
        _validate_threshold("duplicate_ios", duplicate_ios)
    if edge_tolerance < 1:
        raise ValueError(f"edge_tolerance must be >= 1 px, got {edge_tolerance}")
    if not masks:
        return []
    # 1. which masks a chip edge cut
    cut = [touches_inner_edge(m.box, grid[m.chip_index], grid, edge_tolerance) for m in masks]
    pairs = overlapping_pairs([m.box for m in masks]).tolist()
    # 2. and 3. cut copies of objects another chip saw whole go; fragments are stitched
    explained = explained_cut_masks(masks, cut, pairs, grid, seam_iou)
    groups = seam_groups(masks, cut, explained, pairs, grid, seam_iou)
    candidates = [g[0] if len(g) == 1 else stitch(g) for g in groups]
    # 4. the same object drawn twice by two chips that both saw it whole
    duplicates: frozenset[frozenset[int]] = frozenset()
    if duplicate_ios is not None:
        complete = [
            len(m.chips) == 1
            and not touches_inner_edge(m.box, grid[m.chip_index], grid, edge_tolerance)
            for m in candidates
        ]
        duplicates = cross_chip_duplicates(candidates, complete, grid, duplicate_ios, mask_nms_thr)
    # 5. global NMS in the scene frame
    return [candidates[k] for k in mask_nms(candidates, mask_nms_thr, duplicates)]


def explained_cut_masks(
    masks: Sequence[SceneMask],
    cut: Sequence[bool],
    pairs: Sequence[Sequence[int]],
    grid: ChipGrid,
    seam_iou: float,
) -> NDArray[np.bool_]:
    """Cut masks that a complete mask from another chip explains: the same object.

    A complete mask explains a cut one when their IoU inside the cut mask's chip is at
    least ``seam_iou``: that chip saw the object through a smaller window.
    """
    explained = np.zeros(len(masks), dtype=bool)
    for i, j in pairs:
        for c, w in ((i, j), (j, i)):  # c: cut candidate, w: whole candidate
            if not cut[c] or cut[w] or explained[c] or masks[c].chips == masks[w].chips:
                continue
            region = grid[masks[c].chip_index].valid_bounds
            if mask_iou(masks[c], masks[w], region) >= seam_iou:
                explained[c] = True
    return explained


def seam_groups(
    masks: Sequence[SceneMask],
    cut: Sequence[bool],
    explained: NDArray[np.bool_],
    pairs: Sequence[Sequence[int]],
    grid: ChipGrid,
    seam_iou: float,
) -> list[list[SceneMask]]:
    """The masks left, grouped: fragments of one object seen by different chips.

    Cut fragments from different chips that agree on the area their chips share (IoU
    there at least ``seam_iou``) form one group; every other mask is a group alone.
    """
    parent = list(range(len(masks)))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in pairs:
        both_cut = cut[i] and cut[j] and not (explained[i] or explained[j])
        if not both_cut or masks[i].chips == masks[j].chips:
            continue
        common = intersect_boxes(
            grid[masks[i].chip_index].valid_bounds, grid[masks[j].chip_index].valid_bounds
        )
        if common is not None and mask_iou(masks[i], masks[j], common) >= seam_iou:
            parent[find(i)] = find(j)
    groups: dict[int, list[SceneMask]] = {}
    for k, m in enumerate(masks):
        if not explained[k]:
            groups.setdefault(find(k), []).append(m)
    return list(groups.values())


def cross_chip_duplicates(
    masks: Sequence[SceneMask],
    complete: Sequence[bool],
    grid: ChipGrid,
    ios_threshold: float,
    iou_threshold: float,
) -> frozenset[frozenset[int]]:
    """Pairs of complete masks from two chips that are one object (module docstring, 4).

    ``complete[k]``: mask ``k`` comes from one chip and no inner edge of it cut the
    mask. A pair qualifies when both chips saw the whole of both masks, the smaller
    lies mostly inside the larger (``ios_threshold``), and neither chip drew the other
    chip's shape too (a mask with IoU above ``iou_threshold`` with it): a chip that
    drew both a field and its group of fields, or a field and its larger outline,
    told two granularities apart, and they stay two objects as within one chip.
    """
    pairs = overlapping_pairs([m.box for m in masks]).tolist()
    same_chip: dict[int, set[int]] = {}
    touching: dict[int, set[int]] = {}
    for i, j in pairs:
        touching.setdefault(i, set()).add(j)
        touching.setdefault(j, set()).add(i)
        if masks[i].chips == masks[j].chips:
            same_chip.setdefault(i, set()).add(j)
            same_chip.setdefault(j, set()).add(i)

    def drew_also(k: int, other: int) -> bool:
        """Whether ``k``'s chip drew another mask like ``other`` (so one overlapping it)."""
        o = masks[other]  # no IoU exceeds the smaller area over the larger: skip those
        near = same_chip.get(k, set()) & touching.get(other, set())
        near = {n for n in near if area_ratio(masks[n], o) > iou_threshold}
        return any(mask_iou(masks[n], o) > iou_threshold for n in near)

    out = set()
    for i, j in pairs:
        a, b = masks[i], masks[j]
        if not (complete[i] and complete[j]) or a.chips == b.chips:
            continue
        common = intersect_boxes(grid[a.chip_index].valid_bounds, grid[b.chip_index].valid_bounds)
        both = union_box(a.box, b.box)
        if common is None or intersect_boxes(both, common) != both:
            continue  # one of the chips did not see all of both masks
        if intersection_over_smaller(a, b) < ios_threshold:
            continue
        if not (drew_also(i, j) or drew_also(j, i)):
            out.add(frozenset((i, j)))
    return frozenset(out)
