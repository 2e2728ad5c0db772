import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="model export needs the [export] extra")
pytest.importorskip("segment_anything")

import onnx
import torch
from segment_anything import SamPredictor

from components.inference.backends import open_session
from components.io.files import file_sha256
from components.io.model_files import MANIFEST_NAME, read_manifest
from model_export.architectures import ARCHITECTURES
from model_export.export import ExportOptions, run_export
from model_export.graphs import ExportError, export_encoder
from model_export.parity import ParityTolerances
from model_export.weights import WeightsSource, random_sam

TINY = ARCHITECTURES["vit_tiny"]


def test_exported_directory_and_manifest(tiny_export):
    names = sorted(p.name for p in tiny_export.iterdir())
    assert names == [
        "decoder.onnx", "decoder_lowres.onnx", "decoder_points.onnx", "encoder.onnx",
        MANIFEST_NAME, "upscale.onnx",
    ]  # fmt: skip
    manifest = read_manifest(tiny_export)
    assert manifest["model_type"] == "vit_tiny"
    assert manifest["weights"] == {"kind": "random", "source": "seed=0", "sha256": None, "seed": 0}
    assert manifest["opset"] == 18
    for name, info in manifest["files"].items():
        assert info["sha256"] == file_sha256(tiny_export / name)
        assert info["bytes"] == (tiny_export / name).stat().st_size
    (parity,) = manifest["parity"]
    assert parity["passed"] and parity["masks_compared"] == 40
    assert parity["mask_agreement_min"] >= 0.99
    assert parity["embedding_max_abs_error"] < 1e-3
    # the contract reads its dimensions from the architecture, not SAM's 256 x 64 x 64
    enc = manifest["graphs"]["encoder"]
    assert enc["outputs"]["image_embeddings"]["shape"] == ["batch", 64, 64, 64]
    assert enc["inputs"]["images"]["dtype"] == "uint8"
    assert set(manifest["graphs"]["decoder"]["outputs"]) == {
        "masks",
        "iou_predictions",
        "low_res_masks",
    }
    assert set(manifest["graphs"]["decoder_lowres"]["outputs"]) == {
        "iou_predictions",
        "low_res_masks",
    }
    points = manifest["graphs"]["decoder_points"]
    assert list(points["inputs"]) == ["image_embeddings", "point_coords", "point_labels"]
    assert points["outputs"] == manifest["graphs"]["decoder_lowres"]["outputs"]
    assert "torch" in manifest["versions"] and "onnxruntime" in manifest["versions"]


def test_graph_io_matches_the_contract(tiny_export):
    manifest = read_manifest(tiny_export)
    for info in manifest["graphs"].values():
        model = onnx.load(str(tiny_export / info["file"]))
        assert [i.name for i in model.graph.input] == list(info["inputs"])
        assert [o.name for o in model.graph.output] == list(info["outputs"])


def test_the_lowres_decoder_is_cut_from_the_decoder(tiny_export):
    """decoder_lowres.onnx is the full decoder's low-res part: its nodes are the decoder's
    own, only the chip-resolution resampling is left out, and its outputs are the decoder's
    to the bit."""
    full, low = (onnx.load(str(tiny_export / f)) for f in ("decoder.onnx", "decoder_lowres.onnx"))

    def nodes(model):
        return {(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node}

    assert nodes(low) < nodes(full)
    assert "Resize" in {op for _, op, _, _ in nodes(full) - nodes(low)}
    rng = np.random.default_rng(1)
    p = 3
    feeds = {
        "image_embeddings": rng.normal(size=(1, 64, 64, 64)).astype(np.float32),
        "point_coords": rng.uniform(0, 1024, (p, 2, 2)).astype(np.float32),
        "point_labels": np.array([[1, 0]] * p, np.float32),
        "mask_input": rng.normal(size=(p, 1, 256, 256)).astype(np.float32),
        "has_mask_input": np.array([1, 0, 1], np.float32),
    }
    _, ious, low_res = open_session(tiny_export / "decoder.onnx").run(None, feeds)
    ious2, low_res2 = open_session(tiny_export / "decoder_lowres.onnx").run(None, feeds)
    np.testing.assert_array_equal(ious2, ious)
    np.testing.assert_array_equal(low_res2, low_res)


def test_encoder_batches_and_decoder_takes_many_prompts(tiny_export):
    enc = open_session(tiny_export / "encoder.onnx")
    dec = open_session(tiny_export / "decoder.onnx")
    low = open_session(tiny_export / "decoder_lowres.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 1024, 1024), dtype=np.uint8)
    emb = enc.run(None, {"images": images})[0]
    assert emb.shape == (3, 64, 64, 64)
    single = enc.run(None, {"images": images[1:2]})[0]
    np.testing.assert_allclose(single[0], emb[1], atol=1e-5)  # batch-independent
    p, n = 7, 5
    feeds = {
        "image_embeddings": emb[:1],
        "point_coords": rng.uniform(0, 1024, (p, n, 2)).astype(np.float32),
        "point_labels": rng.integers(-1, 2, (p, n)).astype(np.float32),
        "mask_input": np.zeros((p, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(p, np.float32),
    }
    masks, ious, low_res = dec.run(None, feeds)
    assert masks.shape == (p, 4, 1024, 1024) and ious.shape == (p, 4)
    assert low_res.shape == (p, 4, 256, 256)
    ious2, low2 = low.run(None, feeds)
    np.testing.assert_allclose(low2, low_res, atol=1e-5)
    np.testing.assert_allclose(ious2, ious, atol=1e-6)
    # the points decoder: the same outputs without mask inputs, the embedding shared
    points = open_session(tiny_export / "decoder_points.onnx")
    names = ("image_embeddings", "point_coords", "point_labels")
    ious3, low3 = points.run(None, {k: feeds[k] for k in names})
    np.testing.assert_allclose(low3, low_res, atol=1e-5)
    np.testing.assert_allclose(ious3, ious, atol=1e-6)


@pytest.mark.parametrize("shape", [(1024, 1024), (512, 512), (700, 513)])
def test_upscale_graph_is_torch_bilinear(tiny_export, shape):
    from components.inference.onnx_sam import SamModel

    model = SamModel(tiny_export, read_manifest(tiny_export))
    x = np.random.default_rng(0).normal(0, 5, (6, 256, 256)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x[:, None]), shape, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(model.resize(x, *shape), ref, atol=1e-3)
    assert model.resize(x[:0], *shape).shape == (0, *shape)


def test_batched_prompts_equal_the_reference_one_by_one(tiny_export):
    """A batch of single-point prompts (automatic mode's call) equals SamPredictor's."""
    sam = random_sam(TINY, 0)
    predictor = SamPredictor(sam)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    with torch.no_grad():
        predictor.set_image(image)
    enc = open_session(tiny_export / "encoder.onnx")
    dec = open_session(tiny_export / "decoder.onnx")
    emb = enc.run(None, {"images": image.transpose(2, 0, 1)[None]})[0]
    pts = rng.uniform(0, 1024, (6, 2)).astype(np.float32)
    coords = np.stack([pts, np.zeros_like(pts)], axis=1)  # each point + SAM's pad point
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (6, 1))
    masks, ious, _ = dec.run(
        None,
        {
            "image_embeddings": emb,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((6, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(6, np.float32),
        },
    )
    with torch.no_grad():
        ref, ref_iou, _ = predictor.predict_torch(
            torch.from_numpy(pts[:, None, :]),
            torch.ones((6, 1)),
            multimask_output=True,
            return_logits=True,
        )
    np.testing.assert_allclose(ious[:, 1:], ref_iou.numpy(), atol=1e-4)
    agree = (masks[:, 1:] > 0) == (ref.numpy() > 0)
    assert agree.mean() > 0.9999


def test_fp16_encoder_variant(variants_export):
    manifest = read_manifest(variants_export)
    assert "encoder_fp16" in manifest["graphs"]
    reports = {p["graph"]: p for p in manifest["parity"]}
    assert set(reports) == {"encoder.onnx", "encoder_fp16.onnx"}
    assert reports["encoder_fp16.onnx"]["passed"]
    model = onnx.load(str(variants_export / "encoder_fp16.onnx"))
    dtypes = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes  # weights really are half
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_external_data_encoder_loads_and_matches(tiny_export, tmp_path):
    sam = random_sam(TINY, 0)
    path = tmp_path / "encoder.onnx"
    export_encoder(sam, TINY, path, force_external_data=True)
    data = tmp_path / "encoder.onnx.data"
    assert data.stat().st_size > path.stat().st_size  # the weights live outside the graph
    x = np.random.default_rng(2).integers(0, 256, (1, 3, 1024, 1024), dtype=np.uint8)
    a = open_session(path).run(None, {"images": x})[0]
    b = open_session(tiny_export / "encoder.onnx").run(None, {"images": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_failed_parity_leaves_nothing_behind(tmp_path):
    impossible = ParityTolerances(embedding_rel_error=0.0, mask_agreement=1.01)
    with pytest.raises(ExportError, match="parity check failed"):
        run_export(
            "vit_tiny",
            tmp_path / "m",
            WeightsSource(random_weights=True, seed=0),
            ExportOptions(parity_tolerances=impossible),
        )
    assert list(tmp_path.iterdir()) == []  # no output dir, no temporary left


def test_bad_requests_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown model type 'vit_q'"):
        run_export("vit_q", tmp_path / "m", WeightsSource(random_weights=True, seed=0))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        run_export("vit_tiny", tmp_path / "busy", WeightsSource(random_weights=True, seed=0))
    with pytest.raises(ValueError, match="needs --seed"):
        run_export("vit_tiny", tmp_path / "m", WeightsSource(random_weights=True))
    with pytest.raises(ValueError, match="no published checkpoint"):
        run_export("vit_tiny", tmp_path / "m", WeightsSource())


def test_manifest_is_json_with_sorted_files(tiny_export):
    manifest = json.loads((tiny_export / MANIFEST_NAME).read_text())
    assert list(manifest["files"]) == sorted(manifest["files"])
