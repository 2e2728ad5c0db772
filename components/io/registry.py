"""The MLflow model registry: register exported SAM models, resolve ``model_uri`` to files.

Each exported model is ONE model version of the registered model ``sam-<model_type>``:
the ONNX graphs and the manifest as run artifacts, with the facts that matter as
version tags (model type, weights source and checkpoint sha256, sha256 of every file,
opset, parity figures, package versions). Aliases (``champion`` by default) name the
version to use; MLflow's deprecated stages are never used.

Every inference step resolves its ``model_uri`` here and records the resolved name
and version next to its outputs, so each mask traces back to one model version. The
registry's sha256 tags (the manifest's, which names the graphs, among them) are the
truth: a downloaded (or cached) file that does not match them is refused before
anything loads it.

Tracking: ``$MLFLOW_TRACKING_URI`` when set (any MLflow server), else an embedded
``sqlite:///`` store with local artifacts under the user's data directory, so a
laptop needs no server. A server that does not answer is a one-line
:class:`ServiceError` within a bound (:func:`client`), its credentials blanked.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from components.errors import ModelNotFoundError, ServiceError
from components.io.files import cache_dir, data_dir, file_sha256
from components.io.model_files import (
    KIND,
    MANIFEST_NAME,
    TAG_FAMILY,
    TAG_KIND,
    TAG_SHA,
    ResolvedModel,
    cached_copy,
    offline_copy,
    open_model_directory,
    version_tags,
)
from components.io.network import failure_reason, redact
from components.version import __version__

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_ALIAS = "champion"
EXPERIMENT = "s2sam-model-export"
ARTIFACT_PATH = "model"
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

    MLflow's defaults retry an unreachable server for minutes (one that accepts
    connections but never answers: 4+ minutes); a step should fail within a minute.
    Unless set already, each request gets 15 s to connect and 15 s between bytes and 2
    retries (after 0 s, then 2-3 s): a silent server is given up on after at most ~50 s,
    a closed port after ~3 s, and the first failed request ends the command (:func:`_ask`).
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # after import: mlflow sets its own levels then
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 logs MLflow's retries with path and query (signed URLs hold tokens)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def _talking_to(uri: str, what: str) -> Iterator[None]:
    """MLflow's failures inside as one :class:`ServiceError` line, credentials blanked."""
    from mlflow.exceptions import MlflowException

    started = time.monotonic()
    try:
        yield
    except MlflowException as err:
        raise _service_error(uri, what, err, time.monotonic() - started) from None


def _ask(uri: str, what: str, call: Callable[[], _T]) -> _T | None:
    """``call()``; ``None`` when MLflow answers that the thing asked for does not exist.

    Only that answer (``RESOURCE_DOES_NOT_EXIST``) means "not found": a refused
    connection, a timeout or a 5xx is an outage, raised at once as a
    :class:`ServiceError` so no further request waits through another retry cycle.
    """
    from mlflow.exceptions import MlflowException

    with _talking_to(uri, what):
        try:
            return call()
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    return None


def _service_error(uri: str, what: str, err: Exception, seconds: float) -> ServiceError:
    message = str(getattr(err, "message", err)).strip()
    if re.match(r"API request to \S+ failed with (timeout )?exception", message):  # no answer
        status = re.search(r"too many (\d+) error responses", message)
        reason = f"HTTP {status[1]} on every attempt" if status else failure_reason(err)
        if "Connection aborted" in message:  # accepted, then hung up
            reason = "connection closed without an answer"
        return ServiceError(
            f"MLflow at {redact(uri)} did not answer ({reason}; gave up after "
            f"{seconds:.0f} s) when asked to {what}; is the server up? "
            "(limits: $MLFLOW_HTTP_REQUEST_TIMEOUT, $MLFLOW_HTTP_REQUEST_MAX_RETRIES)"
        )
    code = getattr(err, "error_code", type(err).__name__)
    first = redact(message.splitlines()[0] if message else "", urlsplit(uri).password)[:300]
    return ServiceError(f"MLflow at {redact(uri)} failed to {what}: {code}: {first}")


def check_registry(tracking: str | None = None) -> None:
    """Fail now, within the bounds of :func:`client`, if the registry cannot be reached.

    ``s2sam export-model`` asks before spending minutes on an export it could not register.
    A local (sqlite or file) store is not asked.
    """
    uri = tracking or tracking_uri()
    if _is_local(uri):
        return  # a local store has no outages to foresee
    search = client(uri).search_registered_models
    _ask(uri, "list registered models", lambda: search(max_results=1))


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
    ``champion`` that production runs resolve by default. Only the files the manifest
    lists, and the manifest, are uploaded, each with its sha256 as a version tag.
    """
    export_dir = Path(export_dir)
    manifest = open_model_directory(export_dir).manifest  # consistent and verified
    manifest_sha256 = file_sha256(export_dir / MANIFEST_NAME)
    name = model_name or default_model_name(manifest["model_type"])
    uri = tracking or tracking_uri()
    mlflow_client = client(uri)
    with _talking_to(uri, f"register a version of {name!r}"):
        run = _log_export_run(mlflow_client, uri, export_dir, manifest)
        _ensure_registered_model(mlflow_client, uri, name, manifest["model_type"])
        weights = manifest["weights"]
        version = mlflow_client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
            run_id=run.info.run_id,
            tags=version_tags(manifest, manifest_sha256),
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
        with _talking_to(uri, f"set alias {set_alias!r} of {name!r}"):
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
        for key, value in sorted(manifest["architecture"].items()):
            if isinstance(value, str | int | float):
                mlflow_client.log_param(run_id, key, value)
        mlflow_client.log_param(run_id, "weights", manifest["weights"]["kind"])
        for report in manifest.get("parity", []):
            graph = str(report["graph"]).removesuffix(".onnx")
            for key in ("mask_agreement_min", "embedding_max_abs_error"):
                mlflow_client.log_metric(run_id, f"parity_{graph}_{key}", report[key])
        for file in [*sorted(manifest["files"]), MANIFEST_NAME]:
            mlflow_client.log_artifact(run_id, str(export_dir / file), artifact_path=ARTIFACT_PATH)
        mlflow_client.set_terminated(run_id)
    except BaseException:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    return run


def _ensure_registered_model(mlflow_client: Any, uri: str, name: str, model_type: str) -> None:
    if _ask(uri, f"look up {name!r}", lambda: mlflow_client.get_registered_model(name)) is None:
        mlflow_client.create_registered_model(
            name,
            tags={TAG_KIND: KIND, "s2sam.model_type": model_type},
            description=f"Segment Anything {model_type} as ONNX graphs (s2-sam-pipelines)",
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


def _get_version(
    mlflow_client: Any, uri: str, name: str, alias: str | None, version: str | None
) -> Any:
    """The version named; :class:`ModelNotFoundError` only when MLflow says it is not there."""
    model = _ask(uri, f"look up model {name!r}", lambda: mlflow_client.get_registered_model(name))
    if model is None:
        found = _ask(uri, "list registered models", mlflow_client.search_registered_models)
        known = sorted(m.name for m in found or [])
        raise ModelNotFoundError(
            f"no registered model {name!r} in {redact(uri)} (registered: "
            f"{known or 'none'}); export one with `s2sam export-model`"
        )
    if alias is not None:
        aliases = dict(model.aliases or {})
        if alias not in aliases:
            raise ModelNotFoundError(
                f"registered model {name!r} has no alias {alias!r} (aliases: {aliases or 'none'})"
            )
        version = str(aliases[alias])
    elif version == "latest":
        search = mlflow_client.search_model_versions
        versions = _ask(uri, f"list versions of {name!r}", lambda: search(f"name='{name}'"))
        if not versions:
            raise ModelNotFoundError(f"registered model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    get = mlflow_client.get_model_version
    mv = _ask(uri, f"look up {name!r} version {version}", lambda: get(name, version))
    if mv is None:
        raise ModelNotFoundError(f"registered model {name!r} has no version {version}")
    return mv


def resolve_model(
    model_uri: str, *, cache: Path | None = None, tracking: str | None = None
) -> ResolvedModel:
    """Resolve a model URI (or a local export directory) to verified local files.

    A registry version is downloaded once into the cache and re-verified against the
    registry's sha256 tags on every call; a copy that fails is deleted and nothing is
    returned, so a tampered model can never be loaded. When MLflow does not answer, a
    version asked for by number (``models:/name/3``) that is cached and still matches
    the digests recorded when it was fetched is used, with a warning; an alias or
    ``latest`` can only be answered by the server.
    """
    local = Path(model_uri).expanduser()
    if "://" not in model_uri and local.is_dir():
        return open_model_directory(local)
    name, alias, version = parse_model_uri(model_uri)
    uri = tracking or tracking_uri()
    models = (cache or cache_dir()) / "models" / name
    try:
        mv = _get_version(client(uri), uri, name, alias, version)
    except ServiceError as outage:
        by_number = version is not None and version != "latest"
        cached = offline_copy(models / str(version), model_uri, redact(uri)) if by_number else None
        if cached is None:
            raise
        logger.warning("%s; using the verified cached copy of %s", outage, model_uri)
        return cached
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
            reason = redact(f"{type(err).__name__}: {err}".splitlines()[0], urlsplit(uri).password)
            raise ServiceError(
                f"{what}: could not download its files from {redact(mv.source)}: {reason}"
            ) from None

    target = models / str(mv.version)
    record = {"tracking_uri": redact(uri), "name": name, "version": str(mv.version)}
    manifest = cached_copy(target, expected, what, download, record)
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
    precisions: str = "fp32"
    family: str = "sam"
    """``sam`` (SAM) or ``sam2`` (SAM 2 / 2.1); versions registered before families: sam."""


def list_models(tracking: str | None = None) -> list[ModelVersionInfo]:
    """Every version of every s2sam SAM model in the registry, newest first per model."""
    uri = tracking or tracking_uri()
    mlflow_client = client(uri)
    out = []
    with _talking_to(uri, "list registered models"):
        models = mlflow_client.search_registered_models(max_results=1000)
    for model in models:
        if (model.tags or {}).get(TAG_KIND) != KIND:
            continue
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        with _talking_to(uri, f"list versions of {model.name!r}"):
            versions = mlflow_client.search_model_versions(f"name='{model.name}'")
        for mv in sorted(versions, key=lambda v: -int(v.version)):
            tags = dict(mv.tags or {})
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc)
            out.append(ModelVersionInfo(
                model.name, str(mv.version), tuple(sorted(aliases_of.get(str(mv.version), []))),
                tags.get("s2sam.model_type", "?"), tags.get("s2sam.weights", "?"),
                tags.get("s2sam.weights_source", "?"), created.isoformat(timespec="seconds"),
                tags.get("s2sam.precisions", "fp32"), tags.get(TAG_FAMILY, "sam"),
            ))  # fmt: skip
    return out
