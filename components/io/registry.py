"""The MLflow model registry: register exported SAM models, resolve ``model_uri`` to files.

Each exported model is ONE model version of the registered model ``sam-<model_type>``:
the ONNX graphs and the manifest as run artifacts, with the facts that matter as
version tags (model type, weights source and checkpoint sha256, sha256 of every file,
opset, parity figures, package versions). Aliases (``champion`` by default) name the
version to use; MLflow's deprecated stages are never used.

Every inference step resolves its ``model_uri`` here and records the resolved name
and version next to its outputs, so each mask traces back to one model version. The
registry's sha256 tags are the truth: a downloaded (or cached) file that does not
match them is refused before anything loads it.

Tracking: ``$MLFLOW_TRACKING_URI`` when set (any MLflow server), else an embedded
``sqlite:///`` store with local artifacts under the user's data directory, so a
laptop needs no server.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.errors import ModelNotFoundError, ServiceError
from components.io.files import cache_dir, data_dir
from components.io.model_files import (
    ResolvedModel,
    cached_copy,
    manifest_digests,
    open_model_directory,
    read_manifest,
    verify_files,
)
from components.version import __version__

DEFAULT_ALIAS = "champion"
EXPERIMENT = "s2sam-model-export"
ARTIFACT_PATH = "model"
TAG_KIND = "s2sam.kind"
KIND = "sam-onnx"
TAG_SHA = "s2sam.sha256."
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+|latest))$")


def default_model_name(model_type: str) -> str:
    """Registered model name for a model type: ``sam-<model_type>``."""
    return f"sam-{model_type}"


def default_model_uri(model_type: str) -> str:
    """What pipelines resolve by default: ``models:/sam-<model_type>@champion``."""
    return f"models:/{default_model_name(model_type)}@{DEFAULT_ALIAS}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the embedded sqlite store in :func:`data_dir`."""
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    path = data_dir() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` with bounded HTTP timeouts and retries.

    MLflow's defaults retry an unreachable server for minutes; a pipeline step should
    fail within a minute with the server's address in the message.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # after import: mlflow sets its own levels then
        logging.getLogger(name).setLevel(logging.WARNING)

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(mlflow_client: Any, uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if _is_local(uri):  # local store: keep artifacts beside the database, not in the cwd
        location = (data_dir() / "mlartifacts").resolve().as_uri()
    return str(mlflow_client.create_experiment(EXPERIMENT, artifact_location=location))


@dataclass(frozen=True)
class RegisteredVersion:
    """The outcome of a registration."""

    name: str
    version: str
    alias: str | None
    """The alias set on this version, if any."""
    run_id: str
    note: str | None = None
    """Why no alias was set, when none was."""

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: pins this exact version."""
        return f"models:/{self.name}/{self.version}"


def _version_tags(manifest: dict[str, Any]) -> dict[str, str]:
    weights = manifest["weights"]
    tags = {
        TAG_KIND: KIND,
        "s2sam.format": manifest["format"],
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
    for name, info in manifest["files"].items():
        tags[TAG_SHA + name] = info["sha256"]
    for report in manifest.get("parity", []):
        graph = str(report["graph"]).removesuffix(".onnx")
        for key in (
            "embedding_max_abs_error",
            "mask_agreement_min",
            "iou_prediction_max_abs_error",
        ):
            tags[f"s2sam.parity.{graph}.{key}"] = f"{report[key]:.6g}"
    return tags


def register_model(
    export_dir: Path,
    model_name: str | None = None,
    alias: str | None = DEFAULT_ALIAS,
    *,
    alias_explicit: bool = False,
    tracking: str | None = None,
) -> RegisteredVersion:
    """Log an exported model as a new version of ``model_name`` and set its alias.

    A model with random weights never takes an alias unless the caller named the
    alias explicitly (``alias_explicit``): a test model must not become the
    ``champion`` that production runs resolve by default.
    """
    manifest = read_manifest(export_dir)
    verify_files(Path(export_dir), manifest_digests(manifest), str(export_dir))
    name = model_name or default_model_name(manifest["model_type"])
    uri = tracking or tracking_uri()
    mlflow_client = client(uri)
    run = _log_export_run(mlflow_client, uri, export_dir, manifest)
    _ensure_registered_model(mlflow_client, name, manifest["model_type"])
    weights = manifest["weights"]
    version = mlflow_client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
        run_id=run.info.run_id,
        tags=_version_tags(manifest),
        description=(
            f"{manifest['model_type']} weights={weights['kind']} ({weights['source']}), "
            f"exported {manifest.get('exported_at', '')} by s2-sam-pipelines {__version__}"
        ),
    )
    note = None
    set_alias = alias
    if alias and weights["kind"] == "random" and not alias_explicit:
        set_alias = None
        note = (
            f"random weights: alias {alias!r} not set (name an alias explicitly to point one "
            "at a random-weights version)"
        )
    if set_alias:
        mlflow_client.set_registered_model_alias(name, set_alias, version.version)
    return RegisteredVersion(name, str(version.version), set_alias, run.info.run_id, note)


def _log_export_run(
    mlflow_client: Any, uri: str, export_dir: Path, manifest: dict[str, Any]
) -> Any:
    """An MLflow run holding the exported files, the architecture and the parity figures."""
    run = mlflow_client.create_run(
        _experiment_id(mlflow_client, uri),
        run_name=f"export-{manifest['model_type']}",
        tags={TAG_KIND: KIND, "s2sam.model_type": manifest["model_type"]},
    )
    run_id = run.info.run_id
    try:
        arch = manifest["architecture"]
        for key in ("encoder_embed_dim", "encoder_depth", "prompt_embed_dim", "image_size"):
            mlflow_client.log_param(run_id, key, arch[key])
        mlflow_client.log_param(run_id, "weights", manifest["weights"]["kind"])
        for report in manifest.get("parity", []):
            graph = str(report["graph"]).removesuffix(".onnx")
            for key in ("mask_agreement_min", "embedding_max_abs_error"):
                mlflow_client.log_metric(run_id, f"parity_{graph}_{key}", report[key])
        mlflow_client.log_artifacts(run_id, str(export_dir), artifact_path=ARTIFACT_PATH)
        mlflow_client.set_terminated(run_id)
    except BaseException:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    return run


def _ensure_registered_model(mlflow_client: Any, name: str, model_type: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(
            name,
            tags={TAG_KIND: KIND, "s2sam.model_type": model_type},
            description=f"SAM {model_type} as ONNX encoder/decoder (s2-sam-pipelines)",
        )


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/<version|latest>`` -> (name, alias, version)."""
    match = _MODEL_URI.match(model_uri.strip())
    if not match:
        raise ModelNotFoundError(
            f"model_uri {model_uri!r} is not models:/<name>@<alias>, models:/<name>/<version> "
            "or an existing directory"
        )
    return match["name"], match["alias"], match["version"]


def _get_version(mlflow_client: Any, name: str, alias: str | None, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in mlflow_client.search_registered_models())
        raise ModelNotFoundError(
            f"no registered model {name!r} in {mlflow_client.tracking_uri} (registered: "
            f"{known or 'none'}); export one with `s2sam export-model`"
        ) from None
    if alias is not None:
        aliases = dict(model.aliases or {})
        if alias not in aliases:
            raise ModelNotFoundError(
                f"registered model {name!r} has no alias {alias!r} (aliases: {aliases or 'none'})"
            )
        return mlflow_client.get_model_version(name, aliases[alias])
    if version == "latest":
        versions = mlflow_client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ModelNotFoundError(f"registered model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    try:
        return mlflow_client.get_model_version(name, version)
    except MlflowException:
        raise ModelNotFoundError(f"registered model {name!r} has no version {version}") from None


def resolve_model(
    model_uri: str, *, cache: Path | None = None, tracking: str | None = None
) -> ResolvedModel:
    """Resolve a model URI (or a local export directory) to verified local files.

    A registry version is downloaded once into the cache and re-verified against the
    registry's sha256 tags on every call; a copy that fails is deleted and nothing is
    returned, so a tampered model can never be loaded.
    """
    local = Path(model_uri).expanduser()
    if "://" not in model_uri and local.is_dir():
        return open_model_directory(local)
    name, alias, version = parse_model_uri(model_uri)
    uri = tracking or tracking_uri()
    mv = _get_version(client(uri), name, alias, version)
    tags = dict(mv.tags or {})
    if tags.get(TAG_KIND) != KIND:
        raise ModelNotFoundError(
            f"{model_uri} resolves to {name} version {mv.version}, which is not an s2sam SAM model"
        )
    expected = {k.removeprefix(TAG_SHA): v for k, v in tags.items() if k.startswith(TAG_SHA)}
    what = f"model {name} version {mv.version} ({model_uri})"

    def download(staging: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        try:
            return Path(
                download_artifacts(artifact_uri=mv.source, dst_path=str(staging), tracking_uri=uri)
            )
        except Exception as err:  # mlflow raises per store type; say what and where
            raise ServiceError(
                f"{what}: could not download its files from {mv.source}: {err}"
            ) from err

    target = (cache or cache_dir()) / "models" / name / str(mv.version)
    manifest = cached_copy(target, expected, what, download)
    return ResolvedModel(name, str(mv.version), model_uri, target, manifest)


@dataclass(frozen=True)
class ModelVersionInfo:
    """One line of ``s2sam models list``."""

    name: str
    version: str
    aliases: tuple[str, ...]
    model_type: str
    weights: str
    weights_source: str
    created: str


def list_models(tracking: str | None = None) -> list[ModelVersionInfo]:
    """Every version of every s2sam SAM model in the registry, newest first per model."""
    mlflow_client = client(tracking or tracking_uri())
    out = []
    for model in mlflow_client.search_registered_models(max_results=1000):
        if (model.tags or {}).get(TAG_KIND) != KIND:
            continue
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = mlflow_client.search_model_versions(f"name='{model.name}'")
        for mv in sorted(versions, key=lambda v: -int(v.version)):
            tags = dict(mv.tags or {})
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc)
            out.append(
                ModelVersionInfo(
                    name=model.name,
                    version=str(mv.version),
                    aliases=tuple(sorted(aliases_of.get(str(mv.version), []))),
                    model_type=tags.get("s2sam.model_type", "?"),
                    weights=tags.get("s2sam.weights", "?"),
                    weights_source=tags.get("s2sam.weights_source", "?"),
                    created=created.isoformat(timespec="seconds"),
                )
            )
    return out
