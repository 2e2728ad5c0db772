import numpy as np
import pytest

from components.core.radiometry import PAD_RGB
from components.inference.backends import choose_providers
from components.inference.model import pad_chip, preprocess_shape, prompt_arrays
from components.inference.onnx_sam import SamModel
from components.io.model_files import read_manifest

torch = pytest.importorskip("torch")


def test_preprocess_shape_is_sams_rule():
    from segment_anything.utils.transforms import ResizeLongestSide

    for h, w in [(1024, 1024), (512, 512), (512, 511), (300, 700), (1, 5)]:
        assert preprocess_shape(h, w, 1024) == ResizeLongestSide.get_preprocess_shape(h, w, 1024)


def test_prompt_arrays_follow_sams_onnx_convention():
    coords, labels = prompt_arrays(np.array([[10.5, 20.5], [3.0, 4.0]]), np.array([1, 0]), None)
    np.testing.assert_allclose(coords, [[10.0, 20.0], [2.5, 3.5], [0.0, 0.0]])
    np.testing.assert_array_equal(labels, [1, 0, -1])  # SAM's padding point when no box
    coords, labels = prompt_arrays(np.zeros((0, 2)), np.zeros(0), (10.0, 20.0, 30.0, 50.0))
    # a box over pixels 10..29 x 20..49: corners are its extreme pixels' indices
    np.testing.assert_allclose(coords, [[10.0, 20.0], [29.0, 49.0]])
    np.testing.assert_array_equal(labels, [2, 3])
    assert coords.dtype == labels.dtype == np.float32


def test_pad_chip_uses_sams_mean_colour():
    rgb = np.full((3, 5, 3), 7, np.uint8)
    out = pad_chip(rgb, 8)
    assert out.shape == (3, 8, 8)
    assert (out[:, :3, :5] == 7).all()
    assert tuple(out[:, 7, 7]) == PAD_RGB and tuple(out[:, 0, 6]) == PAD_RGB
    with pytest.raises(ValueError, match="larger than"):
        pad_chip(np.zeros((9, 2, 3), np.uint8), 8)


def test_providers(monkeypatch):
    assert choose_providers() == ["CPUExecutionProvider"]  # never Azure's remote provider
    with pytest.raises(ValueError, match="not available here"):
        choose_providers(["TensorrtExecutionProvider"])
    monkeypatch.setenv("S2SAM_ORT_PROVIDERS", "CPUExecutionProvider")
    assert choose_providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("S2SAM_ORT_PROVIDERS", "CUDAExecutionProvider")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ValueError, match="CUDAExecutionProvider"):
            choose_providers()


def test_model_counts_calls_and_checks_inputs(tiny_export):
    model = SamModel(tiny_export, read_manifest(tiny_export))
    assert (model.image_size, model.embedding_size, model.embed_dim) == (1024, 64, 64)
    emb = model.encode(np.zeros((2, 3, 1024, 1024), np.uint8))
    assert emb.shape == (2, 64, 64, 64)
    assert (model.encoder_calls, model.encoded_images) == (1, 2)
    with pytest.raises(ValueError, match="encoder input must be"):
        model.encode(np.zeros((1, 3, 512, 512), np.uint8))
    coords, labels = prompt_arrays(np.array([[100.0, 100.0]]), np.array([1]), None)
    assert model._decoder is None  # the full-resolution decoder opens on first use only
    out = model.decode(emb[:1], coords[None], labels[None], full_resolution=True)
    assert model._decoder is not None
    assert out.masks is not None and out.masks.shape == (1, 4, 1024, 1024)
    up = model.upscale(out.low_res_logits, (1024, 1024), (1024, 1024))
    np.testing.assert_allclose(up, out.masks, atol=1e-4)  # our upsampling == the graph's
    assert model.decoder_calls == 1


def test_points_decoder_serves_prompts_without_a_mask_and_old_models_still_run(tiny_export):
    """Prompt sets without a mask input go to the points decoder, with the same outputs;
    a model exported before it existed (no ``decoder_points`` graph) decodes as before."""
    manifest = read_manifest(tiny_export)
    model = SamModel(tiny_export, manifest)
    old_manifest = dict(manifest, graphs=dict(manifest["graphs"]))
    del old_manifest["graphs"]["decoder_points"]
    old = SamModel(tiny_export, old_manifest)
    rng = np.random.default_rng(3)
    emb = model.encode(rng.integers(0, 256, (1, 3, 1024, 1024), dtype=np.uint8))
    coords = rng.uniform(0, 1024, (5, 2, 2)).astype(np.float32)
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (5, 1))
    calls: list[str] = []
    for name in ("_decoder_lowres", "_decoder_points"):
        session = getattr(model, name)

        class Spy:
            def run(self, out, feeds, _s=session, _n=name):
                calls.append(_n)
                return _s.run(out, feeds)

        setattr(model, name, Spy())
    new, before = model.decode(emb, coords, labels), old.decode(emb, coords, labels)
    assert calls == ["_decoder_points"]
    np.testing.assert_allclose(new.low_res_logits, before.low_res_logits, atol=1e-5)
    np.testing.assert_allclose(new.iou_predictions, before.iou_predictions, atol=1e-6)
    mask_input = rng.normal(0, 4, (5, 1, 256, 256)).astype(np.float32)
    refined = model.decode(emb, coords, labels, mask_input=mask_input)
    assert calls == ["_decoder_points", "_decoder_lowres"]  # a mask input: the full graph
    np.testing.assert_allclose(
        refined.low_res_logits,
        old.decode(emb, coords, labels, mask_input=mask_input).low_res_logits,
        atol=1e-5,
    )
