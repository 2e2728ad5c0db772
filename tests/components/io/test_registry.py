import shutil

import numpy as np
import pytest

from components.errors import IntegrityError, ModelNotFoundError, ServiceError

pytest.importorskip("mlflow")

from components.inference.backends import open_session
from components.io.model_files import read_manifest
from components.io.registry import (
    client,
    default_model_uri,
    list_models,
    parse_model_uri,
    register_model,
    resolve_model,
    tracking_uri,
)


def run_resolved(model):
    """Load the resolved graphs in onnxruntime and push one chip through them."""
    enc = open_session(model.encoder)
    dec = open_session(model.decoder)
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 1024, 1024), dtype=np.uint8)
    emb = enc.run(None, {"images": x})[0]
    masks, ious, _ = dec.run(
        None,
        {
            "image_embeddings": emb,
            "point_coords": np.array([[[512.0, 512.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, -1.0]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        },
    )
    assert masks.shape == (1, 4, 1024, 1024) and np.isfinite(ious).all()


def test_embedded_store_register_resolve_and_list(tiny_export, local_registry):
    assert tracking_uri().startswith("sqlite:///") and str(local_registry) in tracking_uri()
    first = register_model(tiny_export, "sam-vit_tiny-test")
    assert first.version == "1" and first.alias is None and "random weights" in first.note
    second = register_model(tiny_export, "sam-vit_tiny-test", "champion", alias_explicit=True)
    assert second.version == "2" and second.alias == "champion"

    by_alias = resolve_model("models:/sam-vit_tiny-test@champion")
    by_version = resolve_model("models:/sam-vit_tiny-test/1")
    latest = resolve_model("models:/sam-vit_tiny-test/latest")
    assert (by_alias.version, by_version.version, latest.version) == ("2", "1", "2")
    assert by_alias.lineage["model_version"] == "2"
    assert by_alias.lineage["model_uri"] == "models:/sam-vit_tiny-test@champion"
    assert by_alias.model_type == "vit_tiny"
    run_resolved(by_alias)

    rows = list_models()
    assert [(r.name, r.version, r.aliases, r.weights) for r in rows] == [
        ("sam-vit_tiny-test", "2", ("champion",), "random"),
        ("sam-vit_tiny-test", "1", (), "random"),
    ]
    # registry facts are on the version: the weights source and every file's sha256
    mv = client().get_model_version("sam-vit_tiny-test", "2")
    assert mv.tags["s2sam.weights_source"] == "seed=0"
    assert (
        mv.tags["s2sam.sha256.encoder.onnx"] == by_alias.manifest["files"]["encoder.onnx"]["sha256"]
    )
    assert mv.tags["s2sam.opset"] == "18"
    assert float(mv.tags["s2sam.parity.encoder.mask_agreement_min"]) >= 0.99


def test_real_mlflow_server(tiny_export, mlflow_server_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_url)
    monkeypatch.setenv("S2SAM_CACHE_DIR", str(tmp_path / "cache"))
    reg = register_model(tiny_export, "sam-vit_tiny-server", "staging", alias_explicit=True)
    model = resolve_model("models:/sam-vit_tiny-server@staging")
    assert model.version == reg.version and model.directory.is_relative_to(tmp_path)
    run_resolved(model)
    assert resolve_model(f"models:/sam-vit_tiny-server/{reg.version}").version == reg.version
    assert any(r.name == "sam-vit_tiny-server" for r in list_models())


def test_a_tampered_registered_file_is_refused(tiny_export, local_registry):
    reg = register_model(tiny_export, "sam-t", "champion", alias_explicit=True)
    stored = next((local_registry / "home" / "mlartifacts").rglob("decoder.onnx"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"decoder.onnx has sha256 .* refusing"):
        resolve_model("models:/sam-t@champion")
    cache = local_registry / "cache" / "models" / "sam-t"
    # nothing kept, nothing used (the lock file of the fetch may stay)
    assert not cache.exists() or [p.name for p in cache.iterdir()] in ([], [".1.lock"])
    assert reg.version == "1"


def test_a_damaged_cache_copy_is_fetched_again(tiny_export, local_registry):
    register_model(tiny_export, "sam-c", "champion", alias_explicit=True)
    model = resolve_model("models:/sam-c@champion")
    model.encoder.write_bytes(b"broken")
    again = resolve_model("models:/sam-c@champion")
    assert again.encoder.read_bytes() == (tiny_export / "encoder.onnx").read_bytes()


def test_external_data_model_registers_and_loads(local_registry, variants_export):
    assert "encoder.onnx.data" in read_manifest(variants_export)["files"]
    register_model(variants_export, "sam-ext", "champion", alias_explicit=True)
    model = resolve_model("models:/sam-ext@champion")
    assert (model.directory / "encoder.onnx.data").is_file()
    run_resolved(model)
    # the data file is verified like the graphs
    stored = next((local_registry / "home" / "mlartifacts").rglob("encoder.onnx.data"))
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    shutil.rmtree(model.directory)
    with pytest.raises(IntegrityError, match=r"encoder.onnx.data has sha256"):
        resolve_model("models:/sam-ext@champion")
    # and a store that lost the files fails with a clear message, not MLflow's traceback
    shutil.rmtree(local_registry / "home" / "mlartifacts")
    with pytest.raises(ServiceError, match="could not download its files"):
        resolve_model("models:/sam-ext@champion")


def test_local_directory_is_verified_too(tiny_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    assert resolve_model(str(copy)).name == "local"
    (copy / "decoder_lowres.onnx").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"decoder_lowres\.onnx"):
        resolve_model(str(copy))
    with pytest.raises(ModelNotFoundError, match="not an exported s2sam model"):
        resolve_model(str(tmp_path))


def test_resolution_errors_are_clear(tiny_export, local_registry):
    register_model(tiny_export, "sam-e", "champion", alias_explicit=True)
    with pytest.raises(ModelNotFoundError, match=r"no alias 'prod'.*champion"):
        resolve_model("models:/sam-e@prod")
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        resolve_model("models:/sam-e/9")
    with pytest.raises(ModelNotFoundError, match=r"no registered model 'sam-nope'.*sam-e"):
        resolve_model("models:/sam-nope@champion")
    with pytest.raises(ModelNotFoundError, match="is not models:/"):
        resolve_model("runs:/abc/model")
    with pytest.raises(ModelNotFoundError, match="is not models:/"):
        parse_model_uri("models:/only-name")
    assert default_model_uri("vit_b") == "models:/sam-vit_b@champion"


def test_a_version_that_is_not_ours_is_refused(local_registry, tmp_path):
    c = client()
    c.create_registered_model("someone-else")
    (tmp_path / "f").write_text("x")
    c.create_model_version("someone-else", source=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not an s2sam SAM model"):
        resolve_model("models:/someone-else/1")
    assert list_models() == []
