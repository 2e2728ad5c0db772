"""Fuse the instance masks of several acquisitions of one scene into one field layer.

A field edge shows in some seasons and not others: two neighbouring fields of one crop
look alike in June and differ once one of them is harvested. Each acquisition (one per
date window) is segmented and merged on its own (:mod:`components.core.merge`); this
module combines the per-date results, all on the same pixel grid:

1. **Split.** A mask of one date is *coarse* when another date draws it as several
   parts: confident masks (``predicted_iou >= part_min_score``) that each lie in it
   (``area(part & coarse) / area(part) >= part_inside``), are not the same field
   (IoU with it below ``match_iou``), do not nest in each other (the larger counts),
   and together cover ``split_cover`` of it. The coarse mask goes, its parts stay: an
   edge that one date shows is a real edge that another date did not see.
2. **Match.** Masks of different dates with IoU >= ``match_iou`` are one field; pairs
   are joined best IoU first, and a field has at most one mask per date.
3. **Rank and suppress.** Fields found on more dates come first, then higher predicted
   IoU, higher stability score, smaller area (as SAM's own NMS prefers the finer mask),
   then chip and position, then input order, so the result is deterministic. A field
   whose mask has IoU above ``nms_iou`` with a better-ranked field's is dropped (greedy
   mask NMS).

One acquisition in gives its masks back in :func:`components.core.merge.rank_order`:
splitting needs a second date and merge's own NMS (IoU above ``mask_nms_thr``, 0.5 by
default) already left no pair that step 3 at ``nms_iou >= mask_nms_thr`` would drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.core.geometry import intersect_boxes, overlapping_pairs
from components.core.merge import SceneMask, crop, intersection_over_smaller, mask_iou

Member = tuple[int, int]
"""``(date, index)`` of one input mask: ``per_date[date][index]``."""


@dataclass(frozen=True)
class FusionParams:
    """Thresholds of :func:`fuse_acquisitions` (module docstring), all in ``[0, 1]``.

    Defaults from the trained field fixture on two-date synthetic scenes (training seeds
    20-23, tests/components/core/test_fusion_two_dates.py). Looser splitting
    (``part_inside`` 0.7, ``split_cover`` 0.6, no score gate) took about 125 masks per
    scene for coarse, 10-18 of them masks that matched a parcel, and cost up to 0.13
    recall; with these values 0 or 1 mask per scene is split and none that matched.
    That model never draws a pair of fields as one on one date only, so no split there
    was right: the values are a safe floor, not a tuned optimum. ``match_iou`` 0.6 did
    best of 0.5-0.9 by a parcel or so. ``part_min_score`` 0.35 is about the median
    predicted IoU of the weak model's masks; SAM's confident masks score 0.85 and up.
    ``nms_iou`` 0.5 equals merge's ``mask_nms_thr`` default: one date comes out unchanged.
    """

    match_iou: float = 0.6
    """Masks of two dates with IoU >= this are one field."""
    part_inside: float = 0.8
    """A part lies in the coarse mask: ``area(part & coarse) / area(part) >= this``."""
    split_cover: float = 0.8
    """The parts together cover at least this share of the coarse mask."""
    part_min_score: float = 0.35
    """Both parts confident: each part's ``predicted_iou >= this``."""
    nms_iou: float = 0.5
    """What is left after matching and splitting: mask NMS across dates above this IoU."""

    def __post_init__(self) -> None:
        for name in ("match_iou", "part_inside", "split_cover", "part_min_score", "nms_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.match_iou == 0.0:
            raise ValueError("match_iou must be > 0: masks that do not overlap are not one field")


@dataclass(frozen=True, eq=False)
class FusedField:
    """One field of the fused layer."""

    mask: SceneMask
    """The field's mask: that of its best-ranked member."""
    dates: tuple[int, ...]
    """Indexes of the acquisitions where this field was found, ascending."""
    scores: tuple[float | None, ...]
    """Per acquisition (one entry per date): the predicted IoU of the member from that
    date, ``None`` where the field was not found."""


def fuse_acquisitions(
    per_date: Sequence[Sequence[SceneMask]], params: FusionParams = FusionParams()
) -> list[FusedField]:
    """Fuse per-date merged masks (all on one pixel grid) into fields, best first.

    Raises:
        ValueError: ``per_date`` is empty.
    """
    if len(per_date) == 0:
        raise ValueError("per_date is empty: fusion needs at least one acquisition")
    masks = [m for date in per_date for m in date]
    members = [(d, k) for d, date in enumerate(per_date) for k in range(len(date))]
    neighbours = _neighbours(masks)
    coarse = coarse_masks(masks, members, neighbours, params)
    groups = match_across_dates(masks, members, neighbours, coarse, params.match_iou)
    fields = [_field(masks, members, group, len(per_date)) for group in groups]
    return suppress(sorted(fields, key=field_rank), params.nms_iou)


def _neighbours(masks: Sequence[SceneMask]) -> list[list[int]]:
    """For each mask, the masks whose boxes share a pixel with its box (any date)."""
    out: list[list[int]] = [[] for _ in masks]
    for i, j in overlapping_pairs([m.box for m in masks]).tolist():
        out[i].append(j)
        out[j].append(i)
    return out


def mask_rank(m: SceneMask, member: Member) -> tuple[float, ...]:
    """Sort key of one mask, best first: merge's preference rule, then date and index."""
    return (-m.predicted_iou, -m.stability_score, m.area, m.chip_index, *member)


def field_rank(f: FusedField) -> tuple[float, ...]:
    """Sort key of a field, best first: found on more dates, then merge's ``rank_order``.

    Fields that tie on every key keep their input order (``sorted`` is stable): for
    one date, exactly ``rank_order``.
    """
    m = f.mask
    return (-len(f.dates), -m.predicted_iou, -m.stability_score, m.area, m.chip_index,
            m.box[1], m.box[0])  # fmt: skip


def share_inside(part: SceneMask, whole: SceneMask) -> float:
    """Share of ``part``'s pixels that lie in ``whole``."""
    common = intersect_boxes(part.box, whole.box)
    if common is None:
        return 0.0
    inter = int(np.count_nonzero(crop(part, common) & crop(whole, common)))
    return inter / max(part.area, 1)


def covered_share(whole: SceneMask, parts: Sequence[SceneMask]) -> float:
    """Share of ``whole``'s pixels that lie in any of ``parts``."""
    union = np.zeros(whole.mask.shape, dtype=bool)
    for p in parts:
        union |= crop(p, whole.box)
    return int(np.count_nonzero(union & whole.mask)) / max(whole.area, 1)


def split_parts(
    whole: SceneMask, candidates: Sequence[SceneMask], params: FusionParams
) -> list[SceneMask]:
    """The parts, from ``candidates`` (one date, best first), that ``whole`` splits into.

    A candidate is a part when it is confident, lies in ``whole`` and is not ``whole``
    itself (IoU below ``match_iou``). Taken largest first, a part that shares more than
    ``1 - part_inside`` of the smaller of the two with a part taken before it is left
    out: a mask inside a part is another granularity of that part, not another field.
    Empty unless two parts or more cover ``split_cover`` of ``whole``.
    """
    eligible = [
        c
        for c in candidates
        if c.predicted_iou >= params.part_min_score
        and share_inside(c, whole) >= params.part_inside
        and mask_iou(c, whole) < params.match_iou
    ]
    parts: list[SceneMask] = []
    for c in sorted(eligible, key=lambda c: -c.area):  # stable: best first among equals
        if all(intersection_over_smaller(c, p) <= 1.0 - params.part_inside for p in parts):
            parts.append(c)
    if len(parts) < 2 or covered_share(whole, parts) < params.split_cover:
        return []
    return parts


def coarse_masks(
    masks: Sequence[SceneMask],
    members: Sequence[Member],
    neighbours: Sequence[Sequence[int]],
    params: FusionParams,
) -> set[int]:
    """Indexes of masks that another date splits into parts (module docstring, step 1)."""
    out = set()
    for k, whole in enumerate(masks):
        by_date: dict[int, list[int]] = {}
        for n in neighbours[k]:
            if members[n][0] != members[k][0]:
                by_date.setdefault(members[n][0], []).append(n)
        for near in by_date.values():
            near.sort(key=lambda n: mask_rank(masks[n], members[n]))
            if split_parts(whole, [masks[n] for n in near], params):
                out.add(k)
                break
    return out


def match_across_dates(
    masks: Sequence[SceneMask],
    members: Sequence[Member],
    neighbours: Sequence[Sequence[int]],
    excluded: set[int],
    match_iou: float,
) -> list[list[int]]:
    """Groups of mask indexes that are one field (step 2); ``excluded`` masks are left out.

    Cross-date pairs with IoU >= ``match_iou`` join their groups best IoU first (ties:
    by date and index) unless the two groups have a date in common. Groups come out in
    the order of their first mask in ``masks``.
    """
    pairs = []
    for i in range(len(masks)):
        for j in neighbours[i]:
            if i < j and members[i][0] != members[j][0] and not {i, j} & excluded:
                iou = mask_iou(masks[i], masks[j])
                if iou >= match_iou:
                    pairs.append((-iou, min(members[i], members[j]), max(members[i], members[j])))
    group = {k: [k] for k in range(len(masks)) if k not in excluded}
    index = {member: k for k, member in enumerate(members)}
    for _, a, b in sorted(pairs):
        ga, gb = group[index[a]], group[index[b]]
        if ga is gb or {members[k][0] for k in ga} & {members[k][0] for k in gb}:
            continue
        ga.extend(gb)
        for k in gb:
            group[k] = ga
    unique = {id(g): g for g in group.values()}
    return list(unique.values())


def _field(
    masks: Sequence[SceneMask], members: Sequence[Member], group: Sequence[int], n_dates: int
) -> FusedField:
    """The field of one group: its best-ranked member's mask, dates and per-date scores."""
    best = min(group, key=lambda k: mask_rank(masks[k], members[k]))
    scores: list[float | None] = [None] * n_dates
    for k in group:
        scores[members[k][0]] = masks[k].predicted_iou
    dates = tuple(sorted(members[k][0] for k in group))
    return FusedField(mask=masks[best], dates=dates, scores=tuple(scores))


def suppress(ranked: Sequence[FusedField], nms_iou: float) -> list[FusedField]:
    """Greedy mask NMS over fields best first: drop those with IoU > ``nms_iou`` with a kept one.

    The same rule as :func:`components.core.merge.mask_nms`, with the fields' own order.
    """
    neighbours = _neighbours([f.mask for f in ranked])
    suppressed = np.zeros(len(ranked), dtype=bool)
    kept = []
    for k, f in enumerate(ranked):
        if suppressed[k]:
            continue
        kept.append(f)
        for other in neighbours[k]:
            if other > k and not suppressed[other]:
                suppressed[other] = mask_iou(f.mask, ranked[other].mask) > nms_iou
    return kept
