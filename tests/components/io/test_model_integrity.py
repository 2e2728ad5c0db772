"""Every file of a model version, the manifest included, is verified before anything loads it;
parallel first uses of one version share a cold cache safely."""

import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from components.errors import IntegrityError

pytest.importorskip("mlflow")

from components.inference.model import load_model
from components.io.model_files import MANIFEST_NAME, RECORD_NAME, cached_copy
from components.io.registry import client, register_model, resolve_model

MANIFEST_TAG = "s2sam.sha256." + MANIFEST_NAME


def stored_model(local_registry, run_id):
    """The folder of a registered version's artifacts in the embedded store."""
    return next((local_registry / "home" / "mlartifacts").rglob(f"{run_id}/artifacts/model"))


def edit_manifest(folder, change):
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    change(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def forget_manifest_digest(reg):
    """Make ``reg`` look like a version registered before manifests had a digest tag."""
    client().delete_model_version_tag(reg.name, reg.version, MANIFEST_TAG)


def add_evil_lowres_decoder(folder, *, listed):
    """A second graph file named by the manifest (and, with ``listed``, in its files table)."""
    evil = folder / "evil_decoder_lowres.onnx"
    shutil.copy(folder / "decoder.onnx", evil)

    def point(manifest):
        manifest["graphs"]["decoder_lowres"]["file"] = evil.name
        if listed:
            digest = hashlib.sha256(evil.read_bytes()).hexdigest()
            manifest["files"][evil.name] = {"sha256": digest, "bytes": evil.stat().st_size}

    edit_manifest(folder, point)


def no_cached_copy(local_registry, name):
    folder = local_registry / "cache" / "models" / name
    return not folder.exists() or [p.name for p in folder.iterdir() if p.is_dir()] == []


def test_the_manifest_is_registered_and_only_listed_files_are_uploaded(tiny_export, local_registry):
    export = local_registry / "export"
    shutil.copytree(tiny_export, export)
    (export / "notes.txt").write_text("not part of the model")
    reg = register_model(export, "sam-m", "champion", alias_explicit=True)
    tags = client().get_model_version("sam-m", reg.version).tags
    assert tags[MANIFEST_TAG] == hashlib.sha256((export / MANIFEST_NAME).read_bytes()).hexdigest()
    stored = stored_model(local_registry, reg.run_id)
    listed = set(json.loads((export / MANIFEST_NAME).read_text())["files"])
    assert {p.name for p in stored.iterdir()} == listed | {MANIFEST_NAME}
    model = resolve_model("models:/sam-m@champion")
    record = json.loads((model.directory / RECORD_NAME).read_text())
    assert record["sha256"][MANIFEST_NAME] == tags[MANIFEST_TAG]


def test_a_swapped_manifest_is_refused(tiny_export, local_registry):
    reg = register_model(tiny_export, "sam-s", "champion", alias_explicit=True)
    stored = stored_model(local_registry, reg.run_id)
    edit_manifest(stored, lambda m: m.update(exported_at="1970-01-01T00:00:00+00:00"))
    with pytest.raises(IntegrityError, match=r"s2sam_model\.json has sha256 .* refusing"):
        resolve_model("models:/sam-s@champion")
    assert no_cached_copy(local_registry, "sam-s")


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_an_extra_graph_named_by_the_manifest_is_refused(tiny_export, local_registry, listed):
    reg = register_model(tiny_export, "sam-x", "champion", alias_explicit=True)
    add_evil_lowres_decoder(stored_model(local_registry, reg.run_id), listed=listed)
    with pytest.raises(IntegrityError, match=r"s2sam_model\.json has sha256"):
        resolve_model("models:/sam-x@champion")
    # a version registered before the manifest's digest tag: its manifest still cannot
    # point at a file the registry has no digest for
    forget_manifest_digest(reg)
    expected = (
        r"lists 'evil_decoder_lowres\.onnx', which is not a registered file"
        if listed
        else r"names 'evil_decoder_lowres\.onnx' for graph 'decoder_lowres'.*does not list"
    )
    with pytest.raises(IntegrityError, match=expected):
        load_model(resolve_model("models:/sam-x@champion"))
    assert no_cached_copy(local_registry, "sam-x")


def test_a_manifest_pointing_to_an_unregistered_file_is_refused(tiny_export, local_registry):
    reg = register_model(tiny_export, "sam-p", "champion", alias_explicit=True)
    stored = stored_model(local_registry, reg.run_id)
    shutil.copy(stored / "encoder.onnx", stored / "other.onnx")
    edit_manifest(stored, lambda m: m["graphs"]["encoder"].update(file="other.onnx"))
    forget_manifest_digest(reg)
    with pytest.raises(IntegrityError, match=r"names 'other\.onnx' for graph 'encoder'"):
        resolve_model("models:/sam-p@champion")  # was a KeyError traceback
    edit_manifest(stored, lambda m: m["graphs"]["encoder"].update(file="../encoder.onnx"))
    with pytest.raises(IntegrityError, match=r"names '\.\./encoder\.onnx'"):
        resolve_model("models:/sam-p@champion")


def test_an_untouched_version_registered_before_the_manifest_tag_still_resolves(
    tiny_export, local_registry
):
    reg = register_model(tiny_export, "sam-old", "champion", alias_explicit=True)
    forget_manifest_digest(reg)
    model = resolve_model("models:/sam-old@champion")
    assert model.decoder_lowres.name == "decoder_lowres.onnx"


def test_a_flipped_byte_in_the_cached_manifest_is_fetched_again(tiny_export, local_registry):
    register_model(tiny_export, "sam-f", "champion", alias_explicit=True)
    model = resolve_model("models:/sam-f@champion")
    cached = model.directory / MANIFEST_NAME
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x01
    cached.write_bytes(bytes(data))
    again = resolve_model("models:/sam-f@champion")
    assert cached.read_bytes() == (tiny_export / MANIFEST_NAME).read_bytes()
    assert again.manifest == model.manifest


def test_a_local_directory_must_be_self_consistent(tiny_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    add_evil_lowres_decoder(copy, listed=False)
    with pytest.raises(IntegrityError, match=r"names 'evil_decoder_lowres\.onnx'.*does not list"):
        resolve_model(str(copy))
    edit_manifest(copy, lambda m: m["files"].update({"../x": {"sha256": "0", "bytes": 0}}))
    with pytest.raises(IntegrityError, match=r"lists '\.\./x', not a model file name"):
        resolve_model(str(copy))
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        resolve_model(str(copy))


def _resolve_in_child(barrier, results, url, cache, uri):
    os.environ["MLFLOW_TRACKING_URI"] = url
    os.environ["S2SAM_CACHE_DIR"] = str(cache)
    barrier.wait(timeout=60)
    try:
        model = resolve_model(uri)
        results.put(("ok", str(model.directory), model.manifest["files"]))
    except BaseException as err:  # report anything: the parent asserts
        results.put(("error", f"{type(err).__name__}: {err}", None))


def test_parallel_first_use_of_a_version_shares_one_cold_cache(
    tiny_export, mlflow_server_url, tmp_path, monkeypatch
):
    """Shards on one cache volume resolving a new version at once (was: OSError errno 39)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_url)
    reg = register_model(tiny_export, "sam-parallel", "champion", alias_explicit=True)
    cache = tmp_path / "shared-cache"
    ctx = multiprocessing.get_context("fork")  # real processes, without re-importing mlflow
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(
            target=_resolve_in_child, args=(barrier, results, mlflow_server_url, cache, reg.uri)
        )
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [o[0] for o in outcomes] == ["ok"] * n, outcomes
    target = cache / "models" / "sam-parallel" / reg.version
    assert {o[1] for o in outcomes} == {str(target)}
    assert sorted(p.name for p in target.parent.iterdir()) == [f".{reg.version}.lock", reg.version]
    for name, info in outcomes[0][2].items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == info["sha256"]
    assert resolve_model(reg.uri, cache=cache).directory == Path(target)


@pytest.mark.parametrize("winner", ["complete", "damaged"])
def test_a_rename_that_finds_another_copy_keeps_a_complete_one(tiny_export, tmp_path, winner):
    """Where the lock does not hold (no flock on the volume), a lost race is not an error."""
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_export.iterdir()}
    target = tmp_path / "models" / "sam-race" / "1"

    def download(staging):
        shutil.copytree(tiny_export, staging / "model")
        shutil.copytree(tiny_export, target)  # another process renamed its copy meanwhile
        if winner == "damaged":
            (target / "decoder.onnx").write_bytes(b"half")
        return staging / "model"

    manifest = cached_copy(target, expected, "race", download, {"name": "sam-race"})
    assert manifest == json.loads((tiny_export / MANIFEST_NAME).read_text())
    assert (target / "decoder.onnx").read_bytes() == (tiny_export / "decoder.onnx").read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == [".1.lock", "1"]
