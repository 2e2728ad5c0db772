"""Runs of a compiled pipeline on Kubeflow: its version, the experiment, the run, its outputs.

The **pipeline version** is named after the package version (``0.1.0``) and carries
the spec's sha256 in its description, so submitting the same package twice reuses it,
and a changed package under an unchanged version gets ``0.1.0-<sha12>``. A run is
followed until it ends (``s2sam submit --wait``), then its sinks' URIs are looked up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from components.version import __version__
from pipelines.compiled_package import PipelinePackage, refuse_secrets_in_package
from pipelines.kfp_client import FINAL_RUN_STATES, KfpClient, KfpError, KfpNotFound

# --- pipeline versions and experiments -----------------------------------------------


@dataclass(frozen=True)
class UploadedVersion:
    """The pipeline version a run or schedule uses."""

    pipeline_id: str
    pipeline_version_id: str
    name: str
    reused: bool


def ensure_pipeline_version(
    client: KfpClient, package: PipelinePackage, pipeline_name: str | None = None
) -> UploadedVersion:
    """Upload the package as a version of its pipeline, or reuse the identical version."""
    refuse_secrets_in_package(package)
    name = pipeline_name or package.name
    pipeline = client.find_pipeline(name)
    if pipeline is None:
        pipeline = client.create_pipeline(name, package.description or f"s2-sam-pipelines {name}")
    pipeline_id = str(pipeline["pipeline_id"])
    sha = package.sha256
    marker = f"sha256:{sha}"
    versions = client.pipeline_versions(pipeline_id)
    for version in versions:
        if marker in str(version.get("description", "")):
            return UploadedVersion(
                pipeline_id, str(version["pipeline_version_id"]), version["display_name"], True
            )
    taken = {str(v.get("display_name", "")) for v in versions}
    version_name = __version__ if __version__ not in taken else f"{__version__}-{sha[:12]}"
    created = client.upload_pipeline_version(
        pipeline_id,
        version_name,
        f"s2sam {__version__}, {package.path.name}, {marker}",
        package.content,
        package.path.name,
    )
    return UploadedVersion(pipeline_id, str(created["pipeline_version_id"]), version_name, False)


def ensure_experiment(client: KfpClient, name: str) -> str:
    """The id of the experiment ``name``, created if needed."""
    experiment = client.find_experiment(name)
    if experiment is None:
        experiment = client.create_experiment(name, "s2-sam-pipelines runs")
    return str(experiment["experiment_id"])


# --- runs ---------------------------------------------------------------------------


def run_body(
    display_name: str,
    experiment_id: str,
    version: UploadedVersion,
    parameters: Mapping[str, Any],
    service_account: str | None = None,
) -> dict[str, Any]:
    """A ``V2beta1Run`` request."""
    body: dict[str, Any] = {
        "display_name": display_name,
        "experiment_id": experiment_id,
        "pipeline_version_reference": {
            "pipeline_id": version.pipeline_id,
            "pipeline_version_id": version.pipeline_version_id,
        },
        "runtime_config": {"parameters": dict(parameters)},
    }
    if service_account:
        body["service_account"] = service_account
    return body


def wait_for_run(
    client: KfpClient,
    run_id: str,
    *,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    on_state: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll a run until it ends; the final run. ``on_state`` hears every new state.

    Raises:
        KfpError: The run did not end within ``timeout_s``.
    """
    started = time.monotonic()
    last = ""
    while True:
        run = client.get_run(run_id)
        state = str(run.get("state") or "PENDING")
        if state != last and on_state is not None:
            on_state(state)
        last = state
        if state in FINAL_RUN_STATES:
            return run
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise KfpError(f"run {run_id} is still {state} after {timeout_s:g} s")
        sleep(poll_s)


@dataclass
class SinkUri:
    """Where one output of a finished run is stored."""

    name: str
    uri: str


def sink_uris(client: KfpClient, package: PipelinePackage, run: Mapping[str, Any]) -> list[SinkUri]:
    """The URIs of the pipeline's outputs.

    Every task output instead when the pipeline declares no outputs, or when none of
    them is found among the run's tasks (a backend that names tasks differently).
    """
    tasks = (run.get("run_details") or {}).get("task_details") or []
    declared = {(s.task, s.output): s.name for s in package.sinks}
    produced = {
        (str(t.get("display_name", "")), output) for t in tasks for output in t.get("outputs") or {}
    }
    wanted = declared if declared.keys() & produced else {}
    found: list[SinkUri] = []
    for task in tasks:
        task_name = str(task.get("display_name", ""))
        for output, artifact_list in (task.get("outputs") or {}).items():
            label = wanted.get((task_name, output)) if wanted else f"{task_name}.{output}"
            if label is None:
                continue
            for artifact_id in artifact_list.get("artifact_ids") or []:
                found.append(SinkUri(label, _artifact_uri(client, str(artifact_id))))
    order = {name: i for i, name in enumerate(wanted.values())}
    found.sort(key=lambda s: (order.get(s.name, len(order)), s.name))
    return found


def _artifact_uri(client: KfpClient, artifact_id: str) -> str:
    try:
        return str(client.get_artifact(artifact_id).get("uri") or f"artifact {artifact_id}")
    except KfpNotFound:
        return f"artifact {artifact_id} (this KFP has no artifact API: see the run page)"
