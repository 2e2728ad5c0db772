"""Exported model folders on disk: the manifest, sha256 verification, the local cache.

An exported model is a folder of ONNX graphs and ``s2sam_model.json`` (the manifest:
architecture, I/O contract, sha256 of every file). Nothing loads a file that was not
checked against the digests the registry (or, for a local folder, the manifest)
holds. A registered version is fetched once into the cache, through a staging folder
and one rename, and verified again on every use: a damaged copy is fetched anew.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import IntegrityError, ModelNotFoundError
from components.io.files import file_sha256

MANIFEST_NAME = "s2sam_model.json"
MANIFEST_FORMAT = "s2sam-sam-onnx/1"


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an exported model directory; :class:`ModelNotFoundError` if not one."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{directory} is not an exported s2sam model: no {MANIFEST_NAME}")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelNotFoundError(f"{path}: unknown model format {manifest.get('format')!r}")
    return manifest


def verify_files(directory: Path, expected: dict[str, str], what: str) -> None:
    """Check every expected file's sha256; the first mismatch or absence is an error."""
    for name, sha in sorted(expected.items()):
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{what}: file {name} is missing")
        actual = file_sha256(path)
        if actual != sha:
            raise IntegrityError(
                f"{what}: file {name} has sha256 {actual}, but the registry says {sha}; "
                "refusing to use it (the stored model was modified or corrupted)"
            )


def manifest_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """File name -> sha256 of every file the manifest lists."""
    return {name: str(info["sha256"]) for name, info in manifest["files"].items()}


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
    manifest = read_manifest(directory)
    verify_files(directory, manifest_digests(manifest), f"model directory {directory}")
    return ResolvedModel("local", None, str(directory.resolve()), directory.resolve(), manifest)


def cached_copy(
    target: Path, expected: dict[str, str], what: str, download: Callable[[Path], Path]
) -> dict[str, Any]:
    """The manifest of a verified copy at ``target``, fetched with ``download`` if needed.

    ``download(staging)`` puts the files in a folder under ``staging`` and returns it;
    it is verified there and renamed into place, so ``target`` only ever holds a
    complete, verified copy. A copy that fails verification is deleted and fetched
    again.
    """
    if target.exists():
        try:
            verify_files(target, expected, what)
        except IntegrityError:
            shutil.rmtree(target)  # a damaged cache copy: fetch it again
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            fetched = download(staging)
            verify_files(fetched, expected, what)
            os.replace(fetched, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    manifest = read_manifest(target)
    if manifest_digests(manifest) != expected:
        raise IntegrityError(f"{what}: its manifest does not match the registry's sha256 tags")
    return manifest
