"""The SAM 2 runtime (Sam2Model) against sam2's SAM2ImagePredictor, through prompted mode."""

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference needs the [export] extra")
pytest.importorskip("sam2", reason="the reference is the sam2 package ([export] extra)")

import torch

from components.core.params import PromptParams
from components.core.prompts import PromptGroup
from components.errors import InputError
from components.inference.backends import choose_engine
from components.inference.onnx_sam2 import Sam2Model
from components.inference.prompted import segment_groups
from components.io.model_files import open_model_directory
from model_export.sam2_family import SAM2_ARCHITECTURES

TINY2 = SAM2_ARCHITECTURES["sam2.1_hiera_tiny"]


@pytest.fixture
def runtime(sam2_runtime):
    """The exported model on onnxruntime fp32, its chip's embedding, and the reference."""
    return sam2_runtime


def group(k, points=(), labels=(), box=None):
    return PromptGroup(k, np.array(points, float).reshape(-1, 2), np.array(labels), box, (k,))


def reference(predictor, g, refine):
    """The predictor's answer: best of 3 for a click, else its single mask; then refined."""
    pts = np.asarray(g.points) - 0.5 if len(g.points) else None  # continuous -> indices
    kwargs = {
        "point_coords": pts,
        "point_labels": np.asarray(g.labels) if len(g.points) else None,
        "box": None if g.box is None else np.array([*g.box[:2], g.box[2] - 1, g.box[3] - 1]),
        "return_logits": True,
    }
    single_click = g.box is None and len(g.points) == 1
    with torch.no_grad():
        masks, ious, low = predictor.predict(**kwargs, multimask_output=single_click)
        k = int(np.argmax(ious))
        mask, iou, low = masks[k], ious[k], low[k : k + 1]
        for _ in range(refine):
            masks, ious, low = predictor.predict(**kwargs, mask_input=low, multimask_output=False)
            mask, iou = masks[0], ious[0]
    return mask > 0, float(iou)


@pytest.mark.parametrize("refine", [0, 1])
def test_prompted_masks_equal_sam2_image_predictor(runtime, refine):
    model, embedding, predictor = runtime
    groups = [
        group(0, [[300.2, 410.7]], [1]),  # a single click: the best of three
        group(1, [[300.2, 410.7], [520.0, 300.5], [700.0, 640.0]], [1, 1, 0]),
        group(2, [[640.5, 200.5]], [1]),
        group(3, box=(100.0, 150.0, 420.0, 380.0)),
        group(4, [[250.0, 260.0]], [1], box=(100.0, 150.0, 420.0, 380.0)),
    ]
    params = PromptParams(refine_iterations=refine, limit_to_box=False)
    answers = segment_groups(model, embedding, groups, params)
    for g, got in zip(groups, answers, strict=True):
        mask, iou = reference(predictor, g, refine)
        union = np.count_nonzero(mask | got.mask)
        agreement = 1 - np.count_nonzero(mask ^ got.mask) / max(union, 64)
        assert agreement >= 0.999, (g.prompt_id, agreement)
        assert got.predicted_iou == pytest.approx(iou, abs=1e-4), g.prompt_id


def test_three_feature_maps_travel_as_one_flat_embedding(runtime):
    model, embedding, _ = runtime
    assert isinstance(model, Sam2Model)
    assert embedding.shape == model.embedding_shape == (256 * 64 * 64 + 32 * 256**2 + 64 * 128**2,)
    features = model.features(embedding)
    assert [f.shape for f in features.values()] == [
        (1, 256, 64, 64), (1, 32, 256, 256), (1, 64, 128, 128)
    ]  # fmt: skip
    again = np.concatenate([f.reshape(-1) for f in features.values()])
    np.testing.assert_array_equal(again, embedding)


def test_half_precisions_are_refused(sam2_export):
    resolved = open_model_directory(sam2_export)
    with pytest.raises(InputError, match="precision int8 needs an int8 encoder"):
        Sam2Model.from_resolved(resolved, choose_engine("onnxruntime", "int8"))
