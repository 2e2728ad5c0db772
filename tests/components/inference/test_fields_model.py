"""The trained field model (tests/data/fields) through our export, ONNX runtime and merge.

Random weights give whole-chip masks that no prompt changes; this model's masks depend
on the prompt and the image, so these tests can tell a right prompted mask, score
filter, NMS or seam merge from a wrong one. Floors are set from measured figures
(tests/data/fields/README.md) with some margin; parity is exact.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
pytest.importorskip("cv2", reason="the reference's small-region removal needs OpenCV")
gpd = pytest.importorskip("geopandas")

from segment_anything import SamPredictor  # noqa: E402

from components.core.geometry import overlapping_pairs  # noqa: E402
from components.core.merge import mask_iou, touches_inner_edge  # noqa: E402
from components.core.params import (  # noqa: E402
    AmgParams,
    PromptParams,
    SegmentationSettings,
)
from components.core.prompts import PromptGroup  # noqa: E402
from components.inference.automatic import ChipMasks, generate_chip_masks  # noqa: E402
from components.inference.onnx_sam import SamModel  # noqa: E402
from components.inference.prompted import segment_groups  # noqa: E402
from components.io.model_files import read_manifest  # noqa: E402
from components.steps.segment_raster import segment_raster  # noqa: E402
from tests.data.fields.data import ORIGIN, Scene, make_scene, write_s2_geotiff  # noqa: E402
from tests.data.fields.model import HELD_OUT_SEEDS, load_model  # noqa: E402
from tests.fixtures.sam_reference import assert_same_masks, reference_amg  # noqa: E402

MIN_INRADIUS = 8.0
"""Parcels with room for a click (the held-out evaluation's choice)."""
RECALL_MIN_AREA = 2000
"""Automatic recall counts parcels of at least this many pixels (20 ha at 10 m)."""
# Measured on the committed checkpoint (README), floors a little below.
POINT_MIOU_FLOOR = 0.40  # measured 0.444 on 41 parcels
POINT_RIGHT_PARCEL_FLOOR = 0.9  # measured 0.976
AMG_RECALL_FLOOR = 0.6  # measured 0.692 of 39 parcels
SEAM_CROSSINGS_FLOOR = 5
PROMPTED_RIGHT_PARCEL_FLOOR = 0.5
AMG = AmgParams(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.fixture(scope="module")
def held_out() -> Scene:
    return make_scene(HELD_OUT_SEEDS[0])


@pytest.fixture(scope="module")
def runtime(fields_export, held_out):
    model = SamModel(fields_export, read_manifest(fields_export))
    embedding = model.encode(held_out.rgb.transpose(2, 0, 1)[None])
    return model, embedding


@pytest.fixture(scope="module")
def predictor(held_out):
    predictor = SamPredictor(load_model())
    with torch.no_grad():
        predictor.set_image(held_out.rgb)
    return predictor


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def clickable(scene: Scene) -> list:
    return [p for p in scene.parcels if p.inradius >= MIN_INRADIUS]


def click(parcel, pid: str = "p") -> PromptGroup:
    """A foreground click at the parcel's interior pixel (its centre, as users click)."""
    x, y = parcel.interior
    return PromptGroup(pid, np.array([[x + 0.5, y + 0.5]]), np.array([1]), None, (0,))


def neighbour_pairs(scene: Scene) -> list[tuple]:
    """(parcel, neighbour) pairs across a margin, both clickable."""
    from scipy import ndimage

    big = {p.label: p for p in clickable(scene)}
    grown = ndimage.grey_dilation(scene.labels, size=(9, 9))
    inside = scene.labels > 0
    pairs = set(zip(scene.labels[inside].tolist(), grown[inside].tolist(), strict=True))
    return [(big[a], big[b]) for a, b in sorted(pairs) if a != b and a in big and b in big]


def reference_mask(predictor: SamPredictor, g: PromptGroup) -> tuple[np.ndarray, float]:
    """SamPredictor on the same group (its coordinates are pixel indices)."""
    box = None if g.box is None else np.array([g.box[0], g.box[1], g.box[2] - 1, g.box[3] - 1])
    single = g.box is None and len(g.points) == 1
    with torch.no_grad():
        masks, scores, _ = predictor.predict(
            point_coords=g.points - 0.5 if len(g.points) else None,
            point_labels=g.labels.copy() if len(g.points) else None,
            box=box,
            multimask_output=single,
        )
    best = int(np.argmax(scores)) if single else 0
    return masks[best], float(scores[best])


# --- prompted ----------------------------------------------------------------------------


def test_prompted_masks_equal_sam_predictor(runtime, predictor, held_out):
    model, embedding = runtime
    groups: list[PromptGroup] = []
    one_per_parcel = {a.label: (a, b) for a, b in neighbour_pairs(held_out)}
    for k, (a, b) in enumerate(list(one_per_parcel.values())[:8]):
        groups.append(click(a, f"click{k}"))
        ax, ay = a.interior
        bx, by = b.interior
        pts = np.array([[ax + 0.5, ay + 0.5], [bx + 0.5, by + 0.5]])
        groups.append(PromptGroup(f"neg{k}", pts, np.array([1, 0]), None, (0,)))
        x0, y0, x1, y1 = a.bbox
        box = (float(x0), float(y0), float(x1), float(y1))
        groups.append(PromptGroup(f"box{k}", np.zeros((0, 2)), np.zeros(0, int), box, (0,)))
    ours = segment_groups(model, embedding, groups, PromptParams(limit_to_box=False))
    distinct = []
    for g, result in zip(groups, ours, strict=True):
        ref, score = reference_mask(predictor, g)
        assert iou(result.mask, ref) >= 0.99, g.prompt_id
        assert result.predicted_iou == pytest.approx(score, abs=1e-3), g.prompt_id
        distinct.append(result.mask)
    # and the masks depend on the prompt: clicks on different parcels, different masks
    clicks = [m for g, m in zip(groups, distinct, strict=True) if str(g.prompt_id)[:5] == "click"]
    assert max(iou(a, b) for i, a in enumerate(clicks) for b in clicks[i + 1 :]) < 0.9


def test_a_click_returns_the_parcel_under_it(runtime, held_out):
    model, embedding = runtime
    parcels = clickable(held_out)
    results = segment_groups(model, embedding, [click(p, str(p.label)) for p in parcels])
    ious, right = [], []
    for p, r in zip(parcels, results, strict=True):
        ious.append(iou(r.mask, held_out.mask(p.label)))
        covered = np.bincount(held_out.labels[r.mask], minlength=len(held_out.parcels) + 1)
        covered[0] = 0  # margins and roads
        share = covered / np.maximum(np.bincount(held_out.labels.ravel()), 1)
        right.append(int(np.argmax(share)) == p.label)  # the parcel it covers most of
        assert r.mask[int(p.interior[1]), int(p.interior[0])] or ious[-1] < 0.5
    print(f"click mIoU {np.mean(ious):.3f}, right parcel {np.mean(right):.3f} of {len(ious)}")
    assert len(ious) >= 25
    assert np.mean(ious) >= POINT_MIOU_FLOOR
    assert np.mean(right) >= POINT_RIGHT_PARCEL_FLOOR


def test_a_negative_point_takes_the_neighbour_out(runtime, held_out):
    """Clicking two neighbours marks both; turning the second click negative removes it."""
    model, embedding = runtime
    both, without = [], []
    for k, (a, b) in enumerate(neighbour_pairs(held_out)):
        ax, ay = a.interior
        bx, by = b.interior
        pts = np.array([[ax + 0.5, ay + 0.5], [bx + 0.5, by + 0.5]])
        both.append(PromptGroup(f"both{k}", pts, np.array([1, 1]), None, (0,)))
        without.append(PromptGroup(f"neg{k}", pts, np.array([1, 0]), None, (0,)))
    pairs = neighbour_pairs(held_out)
    with_b = segment_groups(model, embedding, both)
    without_b = segment_groups(model, embedding, without)
    removed = []
    for (_a, b), m1, m0 in zip(pairs, with_b, without_b, strict=True):
        in_b = held_out.mask(b.label)
        before = np.count_nonzero(m1.mask & in_b) / b.area
        after = np.count_nonzero(m0.mask & in_b) / b.area
        removed.append(after < before)
        assert after <= 0.5 or before >= after  # never more of the excluded parcel
    assert len(removed) >= 20
    assert np.mean(removed) >= 0.8, removed


# --- automatic ---------------------------------------------------------------------------


def matched(masks: ChipMasks, scene: Scene, min_area: int = RECALL_MIN_AREA) -> np.ndarray:
    """Per parcel of at least ``min_area`` pixels: is some mask's IoU with it >= 0.5?"""
    parcels = [p for p in scene.parcels if p.area >= min_area]
    if not len(masks):
        return np.zeros(len(parcels), bool)
    flat = masks.masks.reshape(len(masks), -1)
    hits = []
    for p in parcels:
        truth = (scene.labels == p.label).ravel()
        inter = flat[:, truth].sum(1)
        union = flat.sum(1) + truth.sum() - inter
        hits.append((inter / union).max() >= 0.5)
    return np.asarray(hits)


def precision(masks: ChipMasks, scene: Scene) -> float:
    """Share of masks that match a parcel (IoU >= 0.5)."""
    good = 0
    for m in masks.masks:
        labels = scene.labels[m]
        best = int(np.bincount(labels).argmax()) if labels.size else 0
        good += best > 0 and iou(m, scene.labels == best) >= 0.5
    return good / max(len(masks), 1)


@pytest.fixture(scope="module")
def automatic(runtime, held_out):
    model, embedding = runtime
    return generate_chip_masks(model, held_out.rgb, AMG, embedding=embedding[0])


def test_automatic_masks_equal_the_reference(fields_export, runtime, held_out):
    model, _ = runtime
    sam = load_model()
    params = AmgParams(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.3)
    ours = generate_chip_masks(model, held_out.rgb, params)
    ref = reference_amg(sam, held_out.rgb, params)
    assert len(ref) >= 5, "too few masks to compare: pick lower thresholds"
    assert_same_masks(ours, ref)


def test_automatic_finds_the_parcels(automatic, held_out):
    hits = matched(automatic, held_out)
    print(f"AMG recall {hits.mean():.3f} of {len(hits)} parcels, {len(automatic)} masks")
    assert len(hits) >= 20
    assert hits.mean() >= AMG_RECALL_FLOOR


@pytest.mark.parametrize("field", ["pred_iou_thresh", "stability_score_thresh"])
def test_score_filters_keep_the_better_masks(runtime, automatic, held_out, field):
    """Raising pred_iou_thresh / stability_score_thresh (to the median, then the 90th
    percentile of the unfiltered masks' scores) keeps fewer masks, all above it, and
    a larger share of them are parcels."""
    model, embedding = runtime
    score = "predicted_iou" if field == "pred_iou_thresh" else "stability_score"
    counts, precisions = [len(automatic)], [precision(automatic, held_out)]
    for q in (0.5, 0.9):
        threshold = min(float(np.quantile(getattr(automatic, score), q)), 0.99)
        params = dataclasses.replace(AMG, **{field: threshold})
        kept = generate_chip_masks(model, held_out.rgb, params, embedding=embedding[0])
        assert (getattr(kept, score) >= threshold).all()
        counts.append(len(kept))
        precisions.append(precision(kept, held_out))
    print(f"{field}: masks {counts}, precision {np.round(precisions, 3)}")
    assert counts[0] > counts[1] > counts[2] >= 10
    assert precisions[2] > precisions[1] > precisions[0], precisions


# --- seams -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seam_run(fields_export, tmp_path_factory):
    """A 1800 x 2300 scene (2 x 3 chips) away from the default origin, segmented whole."""
    scene = make_scene(HELD_OUT_SEEDS[1], 1800, 2300, origin=(ORIGIN[0] + 7_770, ORIGIN[1] - 3_230))
    tmp = tmp_path_factory.mktemp("seams")
    raster = write_s2_geotiff(scene, tmp / "s2.tif")
    settings = SegmentationSettings("automatic", spatial_overlap=0.25, amg=AMG)
    result = segment_raster(raster, tmp / "out", settings, model_uri=str(fields_export))
    return scene, result


def match_iou(m, truth: np.ndarray, area: int) -> float:
    """IoU of a merged (box-cropped) mask with a ground-truth parcel of ``area`` px."""
    mx0, my0, mx1, my1 = m.box
    inter = np.count_nonzero(m.mask & truth[my0:my1, mx0:mx1])
    return inter / (m.area + area - inter)


def best_match(masks: list, truth: np.ndarray, area: int) -> tuple[float, object]:
    """The merged mask with the highest IoU with a ground-truth parcel."""
    best = (0.0, None)
    for m in masks:
        score = match_iou(m, truth, area)
        if score > best[0]:
            best = (score, m)
    return best


def covers_both_halves(mask, truth: np.ndarray, axis: str, at: int) -> bool:
    """Whether ``mask`` covers at least half of ``truth`` on each side of a line."""
    full = np.zeros_like(truth)
    mx0, my0, mx1, my1 = mask.box
    full[my0:my1, mx0:mx1] = mask.mask
    side = np.zeros_like(truth)
    if axis == "col":
        side[:, at:] = True
    else:
        side[at:, :] = True
    halves = (truth & ~side, truth & side)
    return all(np.count_nonzero(full & h) >= 0.5 * np.count_nonzero(h) for h in halves)


def test_parcels_across_seams_come_out_whole_and_once(seam_run):
    """A parcel that crosses a chip seam is found by a mask the seam did not cut (one
    chip's complete mask, or fragments stitched across the seam), and the masks that
    match it overlap no more than the NMS threshold allows: it is not found twice."""
    scene, result = seam_run
    masks = result.masks
    grid = result.grid
    assert grid.shape == (3, 3)  # 1800 x 2300 px at overlap >= 0.25: 3 x 3 chips
    seams = [("col", s) for s in grid.col_boundaries[1:-1]]
    seams += [("row", s) for s in grid.row_boundaries[1:-1]]
    across: list[bool] = []
    inside: list[bool] = []
    for p in scene.parcels:
        x0, y0, x1, y1 = p.bbox
        lines = [
            (axis, s)
            for axis, s in seams
            if (x0 + 8 <= s <= x1 - 8 if axis == "col" else y0 + 8 <= s <= y1 - 8)
        ]
        truth = scene.mask(p.label)
        score, m = best_match(masks, truth, p.area)
        if m is None or score < 0.5:
            continue  # not found: recall is measured above
        if not lines:
            inside.append(covers_both_halves(m, truth, "col", (x0 + x1) // 2))
            continue
        across += [covers_both_halves(m, truth, axis, s) for axis, s in lines]
        cut = touches_inner_edge(m.box, grid[m.chip_index], grid, 4)
        assert len(m.chips) > 1 or not cut, (p.label, m.box, m.chips)
        matches = [k for k in masks if match_iou(k, truth, p.area) >= 0.5]
        for i, a in enumerate(matches):
            for b in matches[i + 1 :]:
                assert mask_iou(a, b) <= 0.5, (p.label, a.chips, b.chips)
    # reported, not asserted: how often the found mask covers the parcel on both sides
    # of the seam vs of a line through a parcel inside one chip (the model is sloppy)
    print(f"whole across seams {np.mean(across):.2f} of {len(across)}, "
          f"inside one chip {np.mean(inside):.2f} of {len(inside)}")  # fmt: skip
    assert len(across) >= SEAM_CROSSINGS_FLOOR


def test_no_cut_copy_survives_beside_a_whole_mask(seam_run):
    """A mask cut by an inner chip edge is dropped when another chip's complete mask
    explains it; only pieces of objects no chip saw whole may remain (stitched or not).
    Checked in the scene frame of a scene that is not at the default origin."""
    scene, result = seam_run
    masks, grid = result.masks, result.grid
    cut = [touches_inner_edge(m.box, grid[m.chip_index], grid, 4) for m in masks]
    assert any(cut) and not all(cut)
    for i, j in overlapping_pairs([m.box for m in masks]).tolist():
        for c, w in ((i, j), (j, i)):
            if cut[c] and not cut[w] and masks[c].chips != masks[w].chips:
                region = grid[masks[c].chip_index].valid_bounds
                assert mask_iou(masks[c], masks[w], region) < 0.5
    with rasterio.open(result.files.segmentation) as src:
        assert src.transform == scene.transform and src.crs == scene.crs
        instances = src.read(1)
    polygons = gpd.read_parquet(result.files.polygons)
    assert polygons.crs == scene.crs
    assert len(polygons) == len(np.unique(instances[instances > 0]))  # one per visible instance
    summary = json.loads(result.files.summary.read_text())
    assert summary["masks"] == len(masks) >= len(polygons) > 0
    # the polygons sit on the parcels in map coordinates
    px, py = polygons.geometry.representative_point().x, polygons.geometry.representative_point().y
    rows, cols = rasterio.transform.rowcol(scene.transform, px.to_numpy(), py.to_numpy())
    assert (instances[np.asarray(rows), np.asarray(cols)] > 0).all()


def test_prompted_run_marks_the_clicked_parcels(fields_export, tmp_path):
    """Prompts as GeoJSON in map coordinates, a scene across chip seams: each prompt's
    band is 1 under its click and covers the clicked parcel, not its neighbours."""
    scene = make_scene(HELD_OUT_SEEDS[2], 1300, 1500, origin=(ORIGIN[0] - 2_410, ORIGIN[1] + 980))
    raster = write_s2_geotiff(scene, tmp_path / "s2.tif")
    chosen = [p for p in clickable(scene) if p.inradius >= 15][:6]
    features = []
    for p in chosen:
        x, y = rasterio.transform.xy(scene.transform, p.interior[1], p.interior[0])
        features.append(
            {
                "type": "Feature",
                "properties": {"label": 1, "prompt_id": int(p.label)},
                "geometry": {"type": "Point", "coordinates": [x, y]},
            }
        )
    prompts = {
        "type": "FeatureCollection",
        "features": features,
        "crs": {"type": "name", "properties": {"name": scene.crs}},
    }
    result = segment_raster(
        raster, tmp_path / "out", SegmentationSettings("prompted"), prompts=json.dumps(prompts),
        model_uri=str(fields_export),
    )  # fmt: skip
    with rasterio.open(result.files.segmentation) as src:
        assert src.descriptions == tuple(f"mask_prompt_{p.label}" for p in chosen)
        bands = src.read().astype(bool)
    areas = np.array([q.area for q in scene.parcels])
    mostly_this = []
    for p, band in zip(chosen, bands, strict=True):
        col, row = p.interior
        assert band[int(row), int(col)], p.label
        share = np.bincount(scene.labels[band], minlength=len(scene.parcels) + 1)[1:] / areas
        assert share[p.label - 1] >= 0.5, p.label
        mostly_this.append(int(np.argmax(share)) + 1 == p.label)
    assert np.mean(mostly_this) >= PROMPTED_RIGHT_PARCEL_FLOOR, mostly_this
