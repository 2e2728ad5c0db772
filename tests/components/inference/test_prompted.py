"""Prompted mode vs segment_anything's SamPredictor on the same weights."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from segment_anything import SamPredictor  # noqa: E402

from components.core.params import PromptParams  # noqa: E402
from components.core.prompts import PromptGroup  # noqa: E402
from components.inference.model import pad_chip  # noqa: E402
from components.inference.onnx_sam import SamModel  # noqa: E402
from components.inference.prompted import box_pixels, segment_groups  # noqa: E402
from components.io.model_files import read_manifest  # noqa: E402
from model_export.architectures import ARCHITECTURES  # noqa: E402
from model_export.export import parity_images  # noqa: E402
from model_export.weights import random_sam  # noqa: E402


def s2_chip(shared_data):
    import rasterio

    from components.core.radiometry import scene_rgb_scaling, to_rgb

    with rasterio.open(shared_data / "s2" / "ftw_t33uup_2021_b4b3b2b8x2.tif") as src:
        dn = src.read([1, 2, 3])
    rgb, _ = to_rgb(dn, scene_rgb_scaling(dn, "03.00"))
    return pad_chip(rgb, 1024).transpose(1, 2, 0).copy()


@pytest.fixture(scope="module")
def models(tiny_export):
    return SamModel(tiny_export, read_manifest(tiny_export)), random_sam(
        ARCHITECTURES["vit_tiny"], 0
    )


def group(pid, points=(), labels=(), box=None):
    return PromptGroup(pid, np.array(points, float).reshape(-1, 2), np.array(labels), box, (0,))


def reference(predictor, g):
    """What SamPredictor returns for a group (its coordinates are pixel indices)."""
    pts = g.points - 0.5 if len(g.points) else None
    box = None if g.box is None else np.array([g.box[0], g.box[1], g.box[2] - 1, g.box[3] - 1])
    single = g.box is None and len(g.points) == 1
    masks, scores, _ = predictor.predict(
        point_coords=pts,
        point_labels=g.labels.copy() if len(g.points) else None,
        box=box,
        multimask_output=single,
    )
    best = int(np.argmax(scores)) if single else 0
    return masks[best], float(scores[best])


GROUPS = [
    group("click", [(300.5, 400.5)], [1]),
    group("fg+bg", [(200.2, 210.7), (260.0, 250.0), (520.3, 100.1)], [1, 0, 1]),
    group("box", box=(100.0, 120.0, 420.0, 380.0)),
    group("box+pt", [(150.5, 200.5)], [1], box=(100.0, 120.0, 420.0, 380.0)),
    group("click2", [(800.0, 650.0)], [1]),
]


@pytest.mark.parametrize("source", ["synthetic", "sentinel2"])
def test_groups_equal_sam_predictor(models, source, request):
    model, sam = models
    if source == "sentinel2":
        image = s2_chip(request.getfixturevalue("shared_data"))
    else:
        image = parity_images(1024, 5)[1].transpose(1, 2, 0).copy()
    predictor = SamPredictor(sam)
    with torch.no_grad():
        predictor.set_image(image)
    emb = model.encode(image.transpose(2, 0, 1)[None])
    # all groups in one call list: groups of equal size share a decoder call
    calls = model.decoder_calls
    ours = segment_groups(model, emb, GROUPS, PromptParams(limit_to_box=False))
    assert model.decoder_calls - calls == 4  # 5 groups, the 2 single clicks share one call
    for g, result in zip(GROUPS, ours, strict=True):
        ref_mask, ref_score = reference(predictor, g)
        assert result.prompt_id == g.prompt_id
        inter = np.count_nonzero(result.mask & ref_mask)
        union = np.count_nonzero(result.mask | ref_mask)
        assert union == 0 or inter / union >= 0.99, g.prompt_id
        assert result.predicted_iou == pytest.approx(ref_score, abs=1e-3)


def test_masks_are_limited_to_the_box(models):
    model, _ = models
    emb = model.encode(np.full((1, 3, 1024, 1024), 120, np.uint8))
    g = group("b", box=(100.0, 200.0, 300.0, 260.0))
    (free,) = segment_groups(model, emb, [g], PromptParams(limit_to_box=False))
    (boxed,) = segment_groups(model, emb, [g])
    allowed = box_pixels(g.box, 1024, 1024)
    assert not (boxed.mask & ~allowed).any()
    np.testing.assert_array_equal(boxed.mask, free.mask & allowed)
    assert allowed.sum() == 200 * 60


def test_refinement_feeds_low_res_logits_back(models):
    model, sam = models
    image = parity_images(1024, 6)[1].transpose(1, 2, 0).copy()
    emb = model.encode(image.transpose(2, 0, 1)[None])
    g = group("p", [(400.0, 400.0), (450.0, 420.0)], [1, 1])
    (refined,) = segment_groups(
        model, emb, [g], PromptParams(refine_iterations=1, limit_to_box=False)
    )
    predictor = SamPredictor(sam)
    with torch.no_grad():
        predictor.set_image(image)
    labels = g.labels.copy()
    _, _, low = predictor.predict(g.points - 0.5, labels, multimask_output=False)
    masks, scores, _ = predictor.predict(
        g.points - 0.5, labels, mask_input=low, multimask_output=False
    )
    inter = np.count_nonzero(refined.mask & masks[0])
    union = np.count_nonzero(refined.mask | masks[0])
    assert union == 0 or inter / union >= 0.99
    assert refined.predicted_iou == pytest.approx(float(scores[0]), abs=1e-3)


def test_no_groups_no_work(models):
    model, _ = models
    calls = model.decoder_calls
    assert segment_groups(model, np.zeros((1, 64, 64, 64), np.float32), []) == []
    assert model.decoder_calls == calls


def test_bad_params():
    with pytest.raises(ValueError, match="refine_iterations"):
        PromptParams(refine_iterations=-1)


def test_many_groups_are_decoded_in_bounded_batches_with_the_same_masks(models, monkeypatch):
    from components.inference import prompted

    model, _ = models
    rng = np.random.default_rng(5)
    clicks = [group(f"c{k}", [rng.uniform(10, 1000, 2)], [1]) for k in range(11)]
    boxes = [group(f"b{k}", box=(float(10 * k), 20.0, 300.0 + k, 400.0)) for k in range(6)]
    embedding = model.encode(parity_images(1024, 3)[:1])
    one_call = segment_groups(model, embedding, clicks + boxes)
    monkeypatch.setattr(prompted, "PROMPT_SETS_PER_CALL", 4)
    before = model.decoder_calls
    batched = segment_groups(model, embedding, clicks + boxes)
    assert model.decoder_calls - before == 3 + 2  # ceil(11 / 4) clicks, ceil(6 / 4) boxes
    for a, b in zip(one_call, batched, strict=True):
        assert a.prompt_id == b.prompt_id and np.array_equal(a.mask, b.mask)
        assert a.predicted_iou == pytest.approx(b.predicted_iou, abs=1e-6)
