"""Two dates of one scene through the trained field fixture, fused (issue 18, two seasons).

``make_two_dates`` joins pairs of neighbouring fields on one date (one crop, colour
and row pattern, the margin between them sown across) and not on the other, so a
segmenter that follows the image sees a boundary on one date only. Each date is
segmented as the pipeline does (``segment_raster``, automatic mode, filters off as the
field-model tests run it) and scored against the parcels at IoU 0.5: recall is the
share of parcels of at least ``MIN_PARCEL_PX`` that a mask matches, precision the
share of masks that match a parcel.

Measured (held-out seed 100001, 1024 x 1024, 36 parcels, ``FusionParams()``; 2 shared
CPU cores, 24-36 s for both dates after the fixture's export):

===========  ======  =========  ======
             recall  precision  masks
===========  ======  =========  ======
date 0       0.556   0.106      274
date 1       0.611   0.127      283
fused        0.611   0.125      288
===========  ======  =========  ======

Training seeds 20-23 (used to choose the defaults) gave fused recall -0.019, +0.021,
+0.053 and -0.025 from the better single date, precision -0.009 to +0.009: one or two
parcels either way. Fusion does not beat the better date with this model, because the
model draws nearly the same masks on both dates whatever the colours: 81 % of the
fused fields were found on both dates, and with ``SamPredictor`` a click's mask on a
uniform grey image has the same mIoU with the parcel (0.446) as on the scene (0.444;
held-out seed 100000, 41 parcels): the fixture learned where parcels of its training
size lie around a prompt, not what the image shows, so a hidden or visible margin
changes nothing. What this test can hold
is that fusion loses nothing either date found; the gain the issue asks for is written
down as a strict xfail, to turn into floors when a model that sees margins arrives.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from components.core.fusion import FusionParams, fuse_acquisitions
from components.core.merge import SceneMask
from components.core.params import AmgParams, SegmentationSettings
from components.steps.segment_raster import segment_raster
from tests.data.fields.data import make_two_dates, write_s2_geotiff
from tests.data.fields.model import HELD_OUT_SEEDS

AMG = AmgParams(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
SEED = HELD_OUT_SEEDS[1]
MIN_PARCEL_PX = 2000
RECALL_LOSS_CEILING = 0.06
"""Fused recall may fall this far below the better date's: two parcels of 36 (measured
0.0 here, one parcel on two of four training seeds), room for another CPU's rounding."""
PRECISION_LOSS_CEILING = 0.015
"""Measured -0.002 here, -0.009 at worst on the training seeds."""
EXPECTED_GAIN = 0.1
"""What fusion should add to the better date's recall once the model sees margins:
about four of the 20 parcels that are joined on one of the dates."""


def recall_precision(
    masks: list[SceneMask], labels: np.ndarray, parcels: list[int]
) -> tuple[float, float]:
    """Share of ``parcels`` matched at IoU >= 0.5, share of ``masks`` that match a parcel."""
    areas = np.bincount(labels.ravel())
    found, matched = set(), 0
    for m in masks:
        x0, y0, x1, y1 = m.box
        under = labels[y0:y1, x0:x1][m.mask]
        hit = False
        for label in np.unique(under[under > 0]):
            inter = int(np.count_nonzero(under == label))
            if inter / (m.area + areas[label] - inter) >= 0.5:
                found.add(int(label))
                hit = True
        matched += hit
    return len(found & set(parcels)) / len(parcels), matched / max(len(masks), 1)


@pytest.fixture(scope="module")
def scores(fields_export, tmp_path_factory):
    """Recall and precision of date 0, date 1 and their fusion, with the fused fields."""
    tmp = tmp_path_factory.mktemp("two_dates")
    dates = make_two_dates(SEED)
    labels = dates[0].labels
    parcels = [p.label for p in dates[0].parcels if p.area >= MIN_PARCEL_PX]
    assert len(parcels) >= 30 and all(len(d.joined) >= 4 for d in dates)
    settings, model = SegmentationSettings("automatic", amg=AMG), str(fields_export)
    per_date = []
    for d in dates:
        raster = write_s2_geotiff(d, tmp / f"date{d.date}.tif")
        result = segment_raster(raster, tmp / f"out{d.date}", settings, model_uri=model)
        per_date.append(result.masks)
    fused = fuse_acquisitions(per_date, FusionParams())
    out = {d: recall_precision(per_date[d], labels, parcels) for d in (0, 1)}
    out["fused"] = recall_precision([f.mask for f in fused], labels, parcels)
    print({k: (round(r, 3), round(p, 3)) for k, (r, p) in out.items()}, len(fused), "fields")
    return out, fused, per_date


def test_fused_fields_record_their_dates(scores):
    _, fused, per_date = scores
    assert fused and all(len(f.scores) == 2 for f in fused)
    for f in fused:
        assert [d for d, s in enumerate(f.scores) if s is not None] == list(f.dates)
        assert any(f.mask is m for m in per_date[f.dates[0]] + per_date[f.dates[-1]])
    assert {f.dates for f in fused} == {(0,), (1,), (0, 1)}


def test_fusion_loses_nothing_either_date_found(scores):
    out, _, _ = scores
    best_recall = max(out[0][0], out[1][0])
    best_precision = max(out[0][1], out[1][1])
    assert out["fused"][0] >= best_recall - RECALL_LOSS_CEILING, out
    assert out["fused"][1] >= best_precision - PRECISION_LOSS_CEILING, out


@pytest.mark.xfail(
    strict=True,
    reason="the fixture model draws the same masks whatever the image (module docstring): "
    "no date sees a boundary the other misses, so fusion has nothing to add",
)
def test_fusion_beats_each_single_date(scores):
    out, _, _ = scores
    assert out["fused"][0] >= max(out[0][0], out[1][0]) + EXPECTED_GAIN, out
    assert out["fused"][1] >= max(out[0][1], out[1][1]), out


def visible_fields(scene) -> list[SceneMask]:
    """What a segmenter that follows the image draws on ``scene``'s date: each parcel,
    except that a pair joined on this date is one mask (the two parcels together)."""
    from components.core.geometry import mask_box

    joined = {label: pair for pair in scene.joined for label in pair}
    masks, done = [], set()
    for parcel in scene.parcels:
        if parcel.label in done:
            continue
        pair = joined.get(parcel.label, (parcel.label,))
        done.update(pair)
        inside = np.isin(scene.labels, pair)
        x0, y0, x1, y1 = mask_box(inside)
        masks.append(SceneMask((x0, y0, x1, y1), inside[y0:y1, x0:x1], 0.9, 0.95, (0,)))
    return masks


def test_fusion_recovers_fields_that_one_date_joins():
    """Without the weak model in the way: each date drawn as it looks, fused.

    Every parcel joined on one date is separate on the other, so fusion finds what
    neither date finds alone; nothing is lost and no mask is added.
    """
    dates = make_two_dates(HELD_OUT_SEEDS[2], 512, 512)
    labels = dates[0].labels
    parcels = [p.label for p in dates[0].parcels if p.area >= MIN_PARCEL_PX // 4]
    per_date = [visible_fields(d) for d in dates]
    fused = fuse_acquisitions(per_date, FusionParams())
    single = [recall_precision(masks, labels, parcels) for masks in per_date]
    recall, precision = recall_precision([f.mask for f in fused], labels, parcels)
    print(f"recall date 0 {single[0][0]:.3f}, date 1 {single[1][0]:.3f}, fused {recall:.3f}")
    joined_parcels = {label for d in dates for pair in d.joined for label in pair}
    assert joined_parcels & set(parcels), "no joined pair among the scored parcels"
    assert recall == 1.0 > max(r for r, _ in single)
    assert precision == 1.0
    assert len(fused) == len(dates[0].parcels)
