"""Exported model folders on disk: the manifest, sha256 verification, the local cache.

An exported model is a folder of ONNX graphs and ``s2sam_model.json`` (the manifest:
architecture, I/O contract, sha256 of every file). Nothing loads a file that was not
checked against the digests the registry (or, for a local folder, the manifest)
holds, and the manifest only names files it lists: a manifest cannot point a graph at
a file nobody checked. A registered version is fetched once into the cache, under a
file lock, through a staging folder and one rename, and verified again on every use:
a damaged copy is fetched anew.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import InputError, IntegrityError, ModelNotFoundError
from components.io.files import atomic_write_text, file_sha256
from components.version import __version__

MANIFEST_NAME = "s2sam_model.json"
MANIFEST_FORMAT = "s2sam-sam-onnx/1"
TAG_KIND = "s2sam.kind"
KIND = "sam-onnx"
TAG_SHA = "s2sam.sha256."
"""Version tag prefix: ``s2sam.sha256.<file>`` holds the registered digest of each file."""
TAG_FAMILY = "s2sam.family"
"""Version tag: the model family (``sam``, ``sam2``), which runtime can load it."""
RECORD_NAME = ".s2sam-registry.json"
"""In a cached copy: what the registry said about it when it was fetched (for offline use)."""


def read_manifest(
    directory: Path, sha256: str | None = None, what: str | None = None
) -> dict[str, Any]:
    """The manifest of an exported model directory; :class:`ModelNotFoundError` if not one.

    With ``sha256`` the bytes read are the bytes checked (:class:`IntegrityError` if they
    differ), so the manifest in memory is exactly the registered one.
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{directory} is not an exported s2sam model: no {MANIFEST_NAME}")
    data = path.read_bytes()
    if sha256 is not None:
        _check_digest(
            what or str(directory), MANIFEST_NAME, hashlib.sha256(data).hexdigest(), sha256
        )
    try:
        manifest = json.loads(data)
    except ValueError as err:  # a flipped byte in an unregistered (pre-digest) manifest
        raise IntegrityError(f"{path} is not valid JSON ({err}); refusing to use it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelNotFoundError(f"{path}: unknown model format {found!r}")
    return manifest


def _check_digest(what: str, name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise IntegrityError(
            f"{what}: file {name} has sha256 {actual}, but the registry says {expected}; "
            "refusing to use it (the stored model was modified or corrupted)"
        )


def verify_files(directory: Path, expected: dict[str, str], what: str) -> None:
    """Check every expected file's sha256; the first mismatch or absence is an error."""
    for name, sha in sorted(expected.items()):
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{what}: file {name} is missing")
        _check_digest(what, name, file_sha256(path), sha)


def manifest_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """File name -> sha256 of every file the manifest lists."""
    return {name: str(info["sha256"]) for name, info in manifest["files"].items()}


def check_manifest(
    manifest: dict[str, Any], what: str, registered: dict[str, str] | None = None
) -> dict[str, str]:
    """The manifest's files table, once the manifest is known to name only checked files.

    Every graph must be a file of its ``files`` table, every entry a plain file name in
    the folder; with ``registered`` (the registry's sha256 tags) the table must be
    exactly the registered files and digests. This is what keeps a version registered
    before the manifest had its own digest tag safe: its manifest is not verified, but
    it can only point at files that are.

    Raises:
        IntegrityError: A malformed manifest, or one naming a file nobody checked.
    """
    try:
        table = manifest_digests(manifest)
        graphs = {key: str(info["file"]) for key, info in manifest["graphs"].items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise IntegrityError(f"{what}: malformed manifest ({type(err).__name__}: {err})") from None
    for name in table:
        if name in ("", ".", "..", MANIFEST_NAME) or Path(name).name != name:
            raise IntegrityError(f"{what}: its manifest lists {name!r}, not a model file name")
    for key, name in sorted(graphs.items()):
        if name not in table:
            raise IntegrityError(
                f"{what}: its manifest names {name!r} for graph {key!r}, a file its own "
                "files table does not list; refusing to use it"
            )
    if registered is not None:
        _matches_registry(table, registered, what)
    return table


def _matches_registry(table: dict[str, str], registered: dict[str, str], what: str) -> None:
    files = {k: v for k, v in registered.items() if k != MANIFEST_NAME}
    for name, sha in sorted(table.items()):
        if name not in files:
            raise IntegrityError(
                f"{what}: its manifest lists {name!r}, which is not a registered file of this "
                "version (no sha256 tag); refusing to use it"
            )
        if files[name] != sha:
            raise IntegrityError(f"{what}: its manifest's sha256 of {name} is not the registry's")
    if missing := sorted(set(files) - set(table)):
        raise IntegrityError(f"{what}: registered files {missing} are missing from its manifest")


def verified_manifest(
    directory: Path, registered: dict[str, str] | None, what: str
) -> dict[str, Any]:
    """Verify a model folder (the manifest, what it names, every file's sha256); its manifest.

    ``registered`` holds the registry's digests (the manifest's own among them for
    versions registered since it was tagged); ``None`` means a local folder, checked
    against its own manifest.
    """
    manifest = read_manifest(directory, (registered or {}).get(MANIFEST_NAME), what)
    verify_files(directory, check_manifest(manifest, what, registered), what)
    return manifest


def manifest_family(manifest: dict[str, Any]) -> str:
    """The model family a manifest describes (manifests from before families: ``sam``)."""
    return str(manifest.get("family", "sam"))


def version_tags(manifest: dict[str, Any], manifest_sha256: str) -> dict[str, str]:
    """The registry's version tags of an exported model: its facts and every file's sha256.

    The manifest's own digest is among them: it names the graphs, so it is verified too.
    """
    weights = manifest["weights"]
    tags = {
        TAG_KIND: KIND,
        "s2sam.format": manifest["format"],
        TAG_FAMILY: manifest_family(manifest),
        "s2sam.model_type": manifest["model_type"],
        "s2sam.weights": weights["kind"],
        "s2sam.weights_source": str(weights["source"]),
        "s2sam.checkpoint_sha256": str(weights.get("sha256") or ""),
        "s2sam.opset": str(manifest["opset"]),
        "s2sam.architecture": json.dumps(manifest["architecture"], separators=(",", ":")),
        "s2sam.graphs": ",".join(f"{k}={v['file']}" for k, v in manifest["graphs"].items()),
        "s2sam.package_version": __version__,
        "s2sam.versions": json.dumps(manifest.get("versions", {}), separators=(",", ":")),
    }
    tags.update({TAG_SHA + name: sha for name, sha in manifest_digests(manifest).items()})
    tags[TAG_SHA + MANIFEST_NAME] = manifest_sha256
    for report in manifest.get("parity", []):
        graph = str(report["graph"]).removesuffix(".onnx")
        for key in (
            "embedding_max_abs_error",
            "mask_agreement_min",
            "iou_prediction_max_abs_error",
        ):
            tags[f"s2sam.parity.{graph}.{key}"] = f"{report[key]:.6g}"
    tags["s2sam.precisions"] = precisions_summary(manifest)
    for precision, figures in manifest.get("precisions", {}).items():
        for key in ("embedding_rms_error", "mask_iou_mean", "mask_iou_min", "accepted"):
            tags[f"s2sam.agreement.{precision}.{key}"] = f"{figures[key]:.6g}"
    return tags


def precisions_summary(manifest: dict[str, Any]) -> str:
    """The precisions a model may run in, with bf16's measured agreement (for listings)."""
    names = ["fp32"] + (["fp16"] if "encoder_fp16" in manifest["graphs"] else [])
    for precision, figures in manifest.get("precisions", {}).items():
        verdict = "" if figures["accepted"] else " refused"
        names.append(f"{precision}{verdict} (mask IoU {figures['mask_iou_mean']:.4f})")
    return ", ".join(names)


@dataclass(frozen=True)
class ResolvedModel:
    """A verified local copy of one model version."""

    name: str
    """Registered model name, or ``"local"`` for a directory."""
    version: str | None
    uri: str
    """What was asked for (``models:/...@alias``, ``models:/.../3`` or a path)."""
    directory: Path
    manifest: dict[str, Any]

    def graph(self, key: str) -> Path | None:
        """Path of a graph by manifest key (``encoder``, ``decoder``, ...), if present."""
        info = self.manifest["graphs"].get(key)
        return None if info is None else self.directory / info["file"]

    @property
    def encoder(self) -> Path:
        """The fp32 encoder graph."""
        path = self.graph("encoder")
        assert path is not None
        return path

    @property
    def decoder(self) -> Path:
        """The decoder graph with chip-resolution logits."""
        path = self.graph("decoder")
        assert path is not None
        return path

    @property
    def decoder_lowres(self) -> Path:
        """The decoder graph that stops at low-resolution logits."""
        path = self.graph("decoder_lowres")
        assert path is not None
        return path

    @property
    def model_type(self) -> str:
        """Architecture name, e.g. ``vit_b``."""
        return str(self.manifest["model_type"])

    @property
    def lineage(self) -> dict[str, Any]:
        """What every output records about the model that made it."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "model_uri": self.uri,
            "model_type": self.model_type,
            "weights": self.manifest["weights"]["kind"],
            "encoder_sha256": self.manifest["files"][self.encoder.name]["sha256"],
        }


def open_model_directory(directory: Path) -> ResolvedModel:
    """An exported model folder given by path, verified against its own manifest."""
    manifest = verified_manifest(directory, None, f"model directory {directory}")
    return ResolvedModel("local", None, str(directory.resolve()), directory.resolve(), manifest)


def cached_copy(
    target: Path,
    expected: dict[str, str],
    what: str,
    download: Callable[[Path], Path],
    record: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of a verified copy at ``target``, fetched with ``download`` if needed.

    ``download(staging)`` puts the files in a folder under ``staging`` and returns it;
    it is verified there, given ``record`` (plus the digests: what
    :func:`offline_copy` trusts later) and renamed into place, so ``target`` only ever
    holds a complete, verified copy. A copy that fails verification is deleted and
    fetched again. Parallel processes sharing the cache (shards on one volume) fetch
    one at a time under a lock, and should the lock not hold (a file system without
    ``flock``), a rename that finds a verified copy in place keeps it.
    """
    record = {**record, "sha256": expected}
    if (manifest := _good_copy(target, expected, what, record)) is not None:
        return manifest
    with _lock(target):
        if (manifest := _good_copy(target, expected, what, record)) is not None:
            return manifest  # another process fetched it while this one waited
        shutil.rmtree(target, ignore_errors=True)  # a damaged copy: fetch it again
        for leftover in target.parent.glob(f".{target.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a killed fetch's; none run now
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            fetched = download(staging)
            manifest = verified_manifest(fetched, expected, what)
            atomic_write_text(fetched / RECORD_NAME, json.dumps(record, indent=1))
            return _move_into_place(fetched, target, expected, what) or manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _good_copy(
    target: Path, expected: dict[str, str], what: str, record: dict[str, Any]
) -> dict[str, Any] | None:
    """The manifest of a verified copy at ``target``, or ``None``; refreshes its record."""
    if not target.is_dir():
        return None
    try:
        manifest = verified_manifest(target, expected, what)
    except (InputError, OSError):
        return None
    if _read_record(target) != record:  # cached before records were kept, or re-tagged
        with suppress(OSError):  # a read-only cache volume: the copy is still good
            atomic_write_text(target / RECORD_NAME, json.dumps(record, indent=1))
    return manifest


def _move_into_place(
    fetched: Path, target: Path, expected: dict[str, str], what: str
) -> dict[str, Any] | None:
    """Rename ``fetched`` to ``target``; the winner's manifest if another copy got there first."""
    try:
        os.replace(fetched, target)
        return None
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    try:
        return verified_manifest(target, expected, what)  # a complete copy won: keep it
    except (InputError, OSError):
        shutil.rmtree(target, ignore_errors=True)
        os.replace(fetched, target)
        return None


@contextmanager
def _lock(target: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<version>.lock`` beside ``target``, held while fetching.

    Released by the kernel if the process dies. Where the file system refuses locks,
    the tolerant rename of :func:`cached_copy` still keeps concurrent fetches safe.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        with suppress(OSError):  # no locks here (some network file systems)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_record(target: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((target / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def offline_copy(target: Path, model_uri: str, tracking: str) -> ResolvedModel | None:
    """The cached copy of a version asked for by number, for use while MLflow is down.

    ``target`` is ``<cache>/models/<name>/<version>``. The copy must have been fetched
    from the same registry (``tracking``, credentials redacted) and still match the
    sha256 digests the registry gave then (and its manifest its files); else ``None``.
    This trusts the cache folder as much as the files in it: whoever can rewrite both
    could substitute a model, which is why the registry is asked whenever it answers.
    """
    name, version = target.parent.name, target.name
    record = _read_record(target) or {}
    facts = {"tracking_uri": tracking, "name": name, "version": version}
    digests = record.get("sha256")
    if any(record.get(k) != v for k, v in facts.items()) or not isinstance(digests, dict):
        return None
    what = f"model {name} version {version} ({model_uri})"
    try:
        manifest = verified_manifest(target, {str(k): str(v) for k, v in digests.items()}, what)
    except (InputError, OSError):
        return None
    return ResolvedModel(name, version, model_uri, target, manifest)
