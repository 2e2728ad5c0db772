"""The real vit_b architecture through the real export path (minutes on 2 cores)."""

import time

import pytest

pytest.importorskip("torch", reason="model export needs the [export] extra")
pytest.importorskip("segment_anything")

from components.io.model_files import read_manifest
from components.io.registry import register_model, resolve_model
from model_export.export import run_export
from model_export.weights import WeightsSource


@pytest.mark.slow
def test_vit_b_random_weights_export_parity_and_registration(tmp_path, local_registry):
    started = time.perf_counter()
    exported = run_export("vit_b", tmp_path / "vit_b", WeightsSource(random_weights=True, seed=0))
    seconds = time.perf_counter() - started
    (parity,) = exported.manifest["parity"]
    print(f"vit_b export + parity: {seconds:.0f} s; parity: {parity}")
    assert parity["passed"]
    assert parity["embedding_max_abs_error"] < 1e-3 * max(1.0, parity["embedding_scale"])
    assert parity["mask_agreement_min"] >= 0.99
    manifest = read_manifest(exported.directory)
    assert manifest["graphs"]["encoder"]["outputs"]["image_embeddings"]["shape"] == [
        "batch",
        256,
        64,
        64,
    ]
    assert manifest["files"]["encoder.onnx"]["bytes"] > 300e6  # real vit_b weights
    reg = register_model(exported.directory, "sam-vit_b-test")
    model = resolve_model(reg.uri)
    assert model.model_type == "vit_b" and model.version == "1"
