"""Fusion of several acquisitions' masks into one field layer (components/core/fusion.py).

Pure: hand-made masks on one small pixel grid, no rasters or models.
"""

import dataclasses
import random

import numpy as np
import pytest

from components.core.fusion import FusedField, FusionParams, fuse_acquisitions
from components.core.geometry import mask_box
from components.core.merge import SceneMask, mask_iou, mask_nms, rank_order

SHAPE = (200, 300)


def scene_mask(full, predicted_iou=0.9, stability=0.95, chip=0):
    """A SceneMask from a full-frame boolean array."""
    x0, y0, x1, y1 = mask_box(full)
    return SceneMask(
        box=(x0, y0, x1, y1),
        mask=np.ascontiguousarray(full[y0:y1, x0:x1]),
        predicted_iou=predicted_iou,
        stability_score=stability,
        chips=(chip,),
    )


def rect(x0, y0, x1, y1, **scores):
    full = np.zeros(SHAPE, dtype=bool)
    full[y0:y1, x0:x1] = True
    return scene_mask(full, **scores)


def boxes(fields):
    return [f.mask.box for f in fields]


def test_one_date_comes_out_unchanged_in_rank_order():
    """Merge leaves no pair above IoU 0.5; fusion of that one date is the identity."""
    rng = np.random.default_rng(0)
    candidates = []
    for _ in range(40):
        x, y = int(rng.integers(0, 260)), int(rng.integers(0, 160))
        w, h = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        candidates.append(
            rect(x, y, x + w, y + h, predicted_iou=float(rng.uniform(0.3, 1.0)),
                 stability=float(rng.uniform(0.5, 1.0)))
        )  # fmt: skip
    merged = [candidates[k] for k in mask_nms(candidates, 0.5)]
    assert 10 < len(merged) < len(candidates)  # NMS had something to do: pairs overlap
    random.Random(1).shuffle(merged)
    fields = fuse_acquisitions([merged])
    assert [f.mask for f in fields] == [merged[k] for k in rank_order(merged)]
    assert all(f.dates == (0,) for f in fields)
    assert [f.scores for f in fields] == [(f.mask.predicted_iou,) for f in fields]


def test_one_date_with_overlaps_above_nms_iou_is_suppressed():
    a = rect(10, 10, 60, 60, predicted_iou=0.9)
    b = rect(12, 10, 62, 60, predicted_iou=0.8)  # IoU 0.92 with a
    assert [f.mask for f in fuse_acquisitions([[b, a]])] == [a]
    # nms_iou 1 keeps even near-duplicates: the one-date case is then the identity
    kept = fuse_acquisitions([[b, a]], FusionParams(nms_iou=1.0))
    assert [f.mask for f in kept] == [a, b]


def test_masks_that_agree_across_dates_are_one_field():
    first = rect(20, 20, 120, 100, predicted_iou=0.8)
    second = rect(24, 22, 122, 104, predicted_iou=0.9)  # IoU about 0.88
    other = rect(200, 20, 260, 80, predicted_iou=0.95)
    (field, alone) = fuse_acquisitions([[first, other], [second]])
    assert field.dates == (0, 1) and field.scores == (0.8, 0.9)
    assert field.mask is second  # the better-ranked member
    assert alone.mask is other and alone.dates == (0,) and alone.scores == (0.95, None)


def test_found_on_more_dates_ranks_first_and_suppresses_a_better_scored_overlap():
    agreed = [rect(20, 20, 120, 100, predicted_iou=0.5), rect(22, 20, 122, 100, predicted_iou=0.5)]
    lone = rect(50, 20, 140, 100, predicted_iou=0.99)
    params = FusionParams()
    # not the same field as agreed[0] (agreed[1] is on its own date), but above nms_iou
    assert params.nms_iou < mask_iou(lone, agreed[0]) < params.match_iou
    fields = fuse_acquisitions([[agreed[0]], [agreed[1], lone]], params)
    assert [f.dates for f in fields] == [(0, 1)]
    # with agreed[0] alone on its date, lone ranks first and suppresses it
    assert [f.mask for f in fuse_acquisitions([[agreed[0]], [lone]], params)] == [lone]


def test_a_mask_that_another_date_splits_is_split():
    coarse = rect(20, 20, 220, 120, predicted_iou=0.95)
    left = rect(22, 20, 118, 120, predicted_iou=0.6)
    right = rect(122, 22, 220, 118, predicted_iou=0.5)
    fields = fuse_acquisitions([[coarse], [left, right]])
    assert sorted(boxes(fields)) == sorted([left.box, right.box])
    assert all(f.dates == (1,) and f.scores[0] is None for f in fields)
    # the order of the dates does not matter
    assert sorted(boxes(fuse_acquisitions([[right, left], [coarse]]))) == sorted(boxes(fields))


def test_three_parts_split_too_and_a_stray_mask_outside_does_not_count():
    coarse = rect(20, 20, 230, 120)
    parts = [rect(20 + 70 * k, 20, 88 + 70 * k, 120, predicted_iou=0.5) for k in range(3)]
    stray = rect(240, 20, 290, 120)
    fields = fuse_acquisitions([[coarse], [*parts, stray]])
    assert sorted(boxes(fields)) == sorted(m.box for m in [*parts, stray])


@pytest.mark.parametrize(
    ("left_score", "right_box", "why"),
    [
        (0.2, (122, 22, 220, 118), "a part is not confident"),
        (0.6, (122, 22, 160, 118), "the parts cover too little of the coarse mask"),
        (0.6, (122, 22, 260, 118), "a part lies partly outside"),
    ],
)
def test_a_split_is_refused(left_score, right_box, why):
    coarse = rect(20, 20, 220, 120, predicted_iou=0.95)
    left = rect(22, 20, 118, 120, predicted_iou=left_score)
    right = rect(*right_box, predicted_iou=0.6)
    fields = fuse_acquisitions([[coarse], [left, right]])
    assert coarse in [f.mask for f in fields], why
    # the same masks with a lenient setting do split: the refusal was the threshold's
    lenient = FusionParams(part_min_score=0.0, split_cover=0.3, part_inside=0.5)
    assert coarse not in [f.mask for f in fuse_acquisitions([[coarse], [left, right]], lenient)]


def test_nested_masks_of_one_date_are_granularities_not_parts():
    coarse = rect(20, 20, 220, 120)
    inner = rect(30, 30, 200, 110, predicted_iou=0.6)  # IoU 0.68 with coarse
    core = rect(60, 40, 150, 100, predicted_iou=0.7)  # inside inner
    # inner covers enough and is not coarse itself; core alone is no second part
    params = FusionParams(split_cover=0.5, match_iou=0.9)
    assert coarse in [f.mask for f in fuse_acquisitions([[coarse], [core, inner]], params)]
    # with the defaults inner is the same field as coarse (IoU >= match_iou)
    fields = fuse_acquisitions([[coarse], [core, inner]])
    assert next(f for f in fields if f.mask is coarse).dates == (0, 1)


def test_a_detail_inside_a_part_does_not_stop_the_split():
    coarse = rect(20, 20, 220, 120)
    left = rect(20, 20, 120, 120, predicted_iou=0.5)
    right = rect(120, 20, 220, 120, predicted_iou=0.5)
    detail = rect(30, 30, 60, 60, predicted_iou=0.99)  # inside left, best ranked
    fields = fuse_acquisitions([[coarse], [detail, right, left]])
    assert sorted(boxes(fields)) == sorted(m.box for m in (left, right, detail))


def test_the_same_field_is_no_part_even_with_a_sliver_beside_it():
    coarse = rect(20, 20, 220, 120)
    same = rect(20, 20, 200, 120, predicted_iou=0.8)  # IoU 0.9: the same field
    sliver = rect(200, 20, 220, 120, predicted_iou=0.8)
    fields = fuse_acquisitions([[coarse], [same, sliver]])
    assert [f.dates for f in fields if f.mask in (coarse, same)] == [(0, 1)]


def test_a_field_takes_one_mask_per_date():
    """Two masks of one date that both match a mask of the other are not both members."""
    a = rect(0, 0, 100, 100, predicted_iou=0.9)
    top = rect(0, 0, 100, 75, predicted_iou=0.8)  # IoU 0.75 with a
    bottom = rect(0, 30, 100, 100, predicted_iou=0.7)  # IoU 0.7 with a, 0.45 with top
    (field,) = fuse_acquisitions([[a], [bottom, top]])
    assert field.mask is a and field.dates == (0, 1) and field.scores == (0.9, 0.8)


def test_a_split_in_the_same_date_is_left_alone():
    """One date's field and its halves are two granularities SAM drew; no date disagrees."""
    coarse = rect(20, 20, 220, 120, predicted_iou=0.95)
    left = rect(20, 20, 120, 120, predicted_iou=0.6)
    right = rect(120, 20, 220, 120, predicted_iou=0.6)
    fields = fuse_acquisitions([[coarse, left, right], []])
    assert len(fields) == 3


def test_disjoint_masks_of_both_dates_are_all_kept():
    first = [rect(10 + 60 * k, 10, 60 + 60 * k, 60) for k in range(4)]
    second = [rect(10 + 60 * k, 100, 60 + 60 * k, 150) for k in range(4)]
    fields = fuse_acquisitions([first, second])
    assert len(fields) == 8
    assert sorted(f.dates for f in fields) == [(0,)] * 4 + [(1,)] * 4
    assert all(len(f.scores) == 2 for f in fields)


def test_empty_dates_are_fine():
    a = rect(10, 10, 60, 60)
    assert fuse_acquisitions([[]]) == []
    assert fuse_acquisitions([[], []]) == []
    (field,) = fuse_acquisitions([[], [a], []])
    assert field.mask is a and field.dates == (1,) and field.scores == (None, 0.9, None)


def test_three_dates_match_into_one_field():
    masks = [rect(20 + k, 20, 120 + k, 100, predicted_iou=0.5 + 0.1 * k) for k in range(3)]
    (field,) = fuse_acquisitions([[m] for m in masks])
    assert field.dates == (0, 1, 2) and field.scores == (0.5, 0.6, 0.7)
    assert field.mask is masks[2]


def random_dates(seed):
    rng = np.random.default_rng(seed)
    dates = []
    for _ in range(3):
        date = []
        for _ in range(25):
            x, y = int(rng.integers(0, 240)), int(rng.integers(0, 140))
            w, h = int(rng.integers(15, 60)), int(rng.integers(15, 60))
            date.append(rect(x, y, x + w, y + h, predicted_iou=float(rng.uniform(0.2, 1.0))))
        dates.append(date)
    return dates


def summary(fields: list[FusedField]):
    return [(f.mask.box, f.dates, f.scores) for f in fields]


def test_deterministic_and_independent_of_input_order():
    dates = random_dates(3)
    fields = fuse_acquisitions(dates)
    assert any(len(f.dates) > 1 for f in fields)  # matching had something to do
    assert summary(fuse_acquisitions(dates)) == summary(fields)
    shuffled = [random.Random(k).sample(d, len(d)) for k, d in enumerate(dates)]
    assert summary(fuse_acquisitions(shuffled)) == summary(fields)


def test_no_two_fields_overlap_above_nms_iou_and_each_date_is_used_once():
    dates = random_dates(4)
    params = FusionParams()
    fields = fuse_acquisitions(dates, params)
    for i, a in enumerate(fields):
        for b in fields[i + 1 :]:
            assert mask_iou(a.mask, b.mask) <= params.nms_iou
    for f in fields:
        assert f.dates == tuple(sorted(set(f.dates)))
        assert [d for d, s in enumerate(f.scores) if s is not None] == list(f.dates)
        assert f.scores[f.dates[0]] is not None
        assert any(f.mask in d for d in dates)


@pytest.mark.parametrize(
    "name", ["match_iou", "part_inside", "split_cover", "part_min_score", "nms_iou"]
)
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bad_params_name_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        FusionParams(**{name: value})


def test_match_iou_zero_and_no_dates_are_rejected():
    with pytest.raises(ValueError, match="match_iou"):
        FusionParams(match_iou=0.0)
    with pytest.raises(ValueError, match="per_date"):
        fuse_acquisitions([])
    assert dataclasses.is_dataclass(FusionParams()) and FusionParams().nms_iou == 0.5
