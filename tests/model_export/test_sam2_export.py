"""SAM 2.1 export: graphs, parity with sam2's SAM2ImagePredictor, weights, registry family."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch", reason="model export needs the [export] extra")
pytest.importorskip("sam2", reason="SAM 2 export needs the sam2 package ([export] extra)")

import onnx
import torch

from components.errors import InputError
from components.inference.backends import open_session
from components.inference.model import check_runnable, load_model
from components.inference.onnx_sam2 import Sam2Model
from components.inference.sam2 import sam2_prompt_arrays
from components.io.files import file_sha256
from components.io.model_files import MANIFEST_NAME, read_manifest
from components.io.registry import list_models, register_model, resolve_model
from components.steps.resolve_model import pin_model
from model_export.architectures import check_model_type
from model_export.export import ExportOptions, run_export
from model_export.parity import ParityTolerances
from model_export.sam2_family import (
    SAM2_ARCHITECTURES,
    load_sam2_checkpoint,
    random_sam2,
    resolve_sam2_weights,
)
from model_export.sam2_parity import check_sam2_parity
from model_export.weights import WeightsSource, random_sam

TINY2 = SAM2_ARCHITECTURES["sam2.1_hiera_tiny"]


def test_every_sam2_model_type_is_known_with_its_config_and_weights():
    sizes = ("tiny", "small", "base_plus", "large")
    assert sorted(SAM2_ARCHITECTURES) == sorted(
        f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in sizes
    )
    for name, arch in SAM2_ARCHITECTURES.items():
        check_model_type(name)
        version = "sam2.1" if name.startswith("sam2.1") else "sam2"
        assert arch.config.startswith(f"configs/{version}/{version}_hiera_")
        assert arch.checkpoint_url.endswith(f"/{name}.pt")
    with pytest.raises(InputError, match=r"sam2\.1_hiera_tiny"):  # the error lists them
        check_model_type("hiera_tiny")


def test_exported_directory_and_manifest(sam2_export):
    names = sorted(p.name for p in sam2_export.iterdir())
    assert names == [
        "decoder_lowres.onnx", "decoder_points.onnx", "encoder.onnx", MANIFEST_NAME,
        "upscale.onnx",
    ]  # fmt: skip
    manifest = read_manifest(sam2_export)
    assert manifest["family"] == "sam2" and manifest["model_type"] == "sam2.1_hiera_tiny"
    assert manifest["architecture"]["config"] == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert manifest["weights"] == {"kind": "random", "source": "seed=0", "sha256": None, "seed": 0}
    for name, info in manifest["files"].items():
        assert info["sha256"] == file_sha256(sam2_export / name)
    (parity,) = manifest["parity"]
    # 2 chips x 5 prompt sets: 3 multimask + raw single + chosen single masks each
    assert parity["passed"] and parity["masks_compared"] == 50
    assert parity["mask_agreement_min"] >= 0.99
    assert parity["embedding_max_abs_error"] <= 1e-3 * max(1.0, parity["embedding_scale"])
    outputs = manifest["graphs"]["encoder"]["outputs"]
    assert {k: v["shape"] for k, v in outputs.items()} == {
        "image_embed": ["batch", 256, 64, 64],
        "high_res_feats_0": ["batch", 32, 256, 256],
        "high_res_feats_1": ["batch", 64, 128, 128],
    }
    assert "sam2" in manifest["versions"] and "torch" in manifest["versions"]


def test_graph_io_matches_the_contract(sam2_export):
    manifest = read_manifest(sam2_export)
    for info in manifest["graphs"].values():
        model = onnx.load(str(sam2_export / info["file"]))
        assert [i.name for i in model.graph.input] == list(info["inputs"])
        assert [o.name for o in model.graph.output] == list(info["outputs"])


def test_the_encoder_resizes_no_constant(sam2_export):
    """Hiera's position embedding is exported as the constant it is: a resize of weights
    only is folded by OpenVINO at every compile with its reference kernel (3.5 min for
    Hiera tiny on one core). Only the feature pyramid's upsampling, of data, stays."""
    graph = onnx.load(str(sam2_export / "encoder.onnx")).graph
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # nodes are in topological order
        if all(name in constant for name in node.input if name):
            constant.update(node.output)
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes and not [n.name for n in resizes if n.input[0] in constant]


def test_batches_of_chips_and_of_prompt_sets_equal_one_by_one(sam2_export):
    rng = np.random.default_rng(3)
    chips = rng.integers(0, 256, (2, 3, 1024, 1024), dtype=np.uint8)
    encoder = open_session(sam2_export / "encoder.onnx")
    both = encoder.run(None, {"images": chips})
    second = encoder.run(None, {"images": chips[1:]})
    for a, b in zip(both, second, strict=True):
        np.testing.assert_allclose(a[1:], b, atol=1e-4 * max(1.0, float(np.abs(b).max())))
    names = ("image_embed", "high_res_feats_0", "high_res_feats_1")
    features = dict(zip(names, second, strict=True))
    sets = [sam2_prompt_arrays(rng.uniform(0, 1023, (2, 2)), np.array([1, 0]), None)]
    sets += [sam2_prompt_arrays(rng.uniform(0, 1023, (0, 2)), np.zeros(0), (90, 80, 400, 300))]
    sets += [sam2_prompt_arrays(rng.uniform(0, 1023, (2, 2)), np.array([1, 1]), None)]
    points = open_session(sam2_export / "decoder_points.onnx")
    coords = np.stack([c for c, _ in sets[::2]])  # two sets of the same length in one call
    labels = np.stack([lab for _, lab in sets[::2]])
    ious, low = points.run(None, {**features, "point_coords": coords, "point_labels": labels})
    for k, (c, lab) in enumerate(sets[::2]):
        one_iou, one_low = points.run(
            None, {**features, "point_coords": c[None], "point_labels": lab[None]}
        )
        np.testing.assert_allclose(low[k], one_low[0], atol=1e-4)
        np.testing.assert_allclose(ious[k], one_iou[0], atol=1e-5)
    box_coords, box_labels = sets[1]
    assert box_labels.tolist() == [2.0, 3.0, -1.0]  # box first, then SAM 2's padding point
    assert box_coords[:2].tolist() == [[90, 80], [400, 300]]


def test_the_points_decoder_equals_the_mask_decoder_without_a_mask(sam2_export):
    """decoder_points.onnx keeps the image embedding a batch of one (the "no mask" prompt
    is the same for every set); decoder_lowres.onnx copies it per set, as SAM 2's
    predict_masks does. Same arithmetic, summed in another order: float32 rounding only."""
    rng = np.random.default_rng(4)
    encoder = open_session(sam2_export / "encoder.onnx")
    chip = rng.integers(0, 256, (1, 3, 1024, 1024), dtype=np.uint8)
    names = ("image_embed", "high_res_feats_0", "high_res_feats_1")
    features = dict(zip(names, encoder.run(None, {"images": chip}), strict=True))
    p = 5
    prompts = {
        "point_coords": rng.uniform(0, 1023, (p, 3, 2)).astype(np.float32),
        "point_labels": np.tile(np.array([1, 0, -1], np.float32), (p, 1)),
    }
    no_mask = {
        "mask_input": rng.normal(size=(p, 1, 256, 256)).astype(np.float32),  # ignored
        "has_mask_input": np.zeros(p, np.float32),
    }
    ious, low = open_session(sam2_export / "decoder_points.onnx").run(None, {**features, **prompts})
    ref_ious, ref_low = open_session(sam2_export / "decoder_lowres.onnx").run(
        None, {**features, **prompts, **no_mask}
    )
    assert low.shape == ref_low.shape == (p, 4, 256, 256)
    np.testing.assert_allclose(low, ref_low, atol=1e-4 * max(1.0, float(np.abs(ref_low).max())))
    np.testing.assert_allclose(ious, ref_ious, atol=1e-5)


def test_random_weights_are_seeded_and_leave_no_parameter_at_zero():
    a, b, c = random_sam2(TINY2, 0), random_sam2(TINY2, 0), random_sam2(TINY2, 1)
    zero = [n for n, p in a.named_parameters() if not torch.count_nonzero(p)]
    assert zero == []  # SAM 2 zero-initialises position embeddings and biases
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.no_mem_embed, c.no_mem_embed)


def test_a_checkpoint_round_trip_and_a_sam_checkpoint_refused(tmp_path):
    model = random_sam2(TINY2, 5)
    path = tmp_path / "sam2.pt"
    torch.save({"model": model.state_dict()}, path)  # the official files' layout
    loaded, info = resolve_sam2_weights(TINY2, WeightsSource(checkpoint=path), tmp_path)
    assert info.kind == "checkpoint" and info.sha256 == file_sha256(path)
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    from model_export.architectures import ARCHITECTURES

    sam_path = tmp_path / "sam.pth"
    torch.save(random_sam(ARCHITECTURES["vit_tiny"], 0).state_dict(), sam_path)
    with pytest.raises(InputError, match=r"does not fit model type 'sam2.1_hiera_tiny'"):
        load_sam2_checkpoint(sam_path, TINY2)


def test_fp16_and_int8_are_refused_before_any_work(tmp_path):
    for options in (ExportOptions(fp16=True), ExportOptions(int8=True)):
        with pytest.raises(InputError, match=r"not available for sam2\.1_hiera_tiny"):
            run_export(
                "sam2.1_hiera_tiny", tmp_path / "m", WeightsSource(random_weights=True, seed=0),
                options,
            )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_parity_fails_on_graphs_of_other_weights(sam2_export):
    other = random_sam2(TINY2, 1)  # not the weights the graphs were exported from
    report = check_sam2_parity(other, TINY2, sam2_export)
    assert not report.passed and report.embedding_max_abs_error > 1e-2
    strict = ParityTolerances(mask_agreement=1.01)
    assert not check_sam2_parity(random_sam2(TINY2, 0), TINY2, sam2_export, strict).passed


def test_registered_with_its_family_and_loaded_by_its_own_runtime(sam2_export, local_registry):
    registered = register_model(sam2_export, None, "champion", alias_explicit=True)
    assert registered.name == "sam-sam2.1_hiera_tiny"
    (row,) = list_models()
    assert (row.family, row.model_type) == ("sam2", "sam2.1_hiera_tiny")
    resolved = resolve_model("models:/sam-sam2.1_hiera_tiny@champion")
    assert isinstance(load_model(resolved, mode="prompted"), Sam2Model)
    check_runnable(resolved, "automatic")  # both modes run (load_model checks the same)
    future = dataclasses.replace(resolved, manifest={**resolved.manifest, "family": "sam3"})
    with pytest.raises(InputError, match=r"is a 'sam3' model \(sam2.1_hiera_tiny\); this"):
        load_model(future, mode="prompted")  # a family this version has no runtime for
    pinned = pin_model("", "sam2.1_hiera_tiny")  # a pipeline's first step
    assert pinned["pinned_uri"] == "models:/sam-sam2.1_hiera_tiny/1"
    assert pinned["chip_size"] == 1024
