"""Submitting compiled pipelines to Kubeflow: packages, parameters, versions, runs, schedules.

The logic behind ``s2sam submit`` and ``s2sam schedule``, over :class:`KfpClient`:

* a **package** is a compiled pipeline YAML (``pipelines/compiled/<name>.yaml`` or any
  path); its root input definitions give the parameters' names, types and defaults,
  and its root outputs the sinks whose URIs ``--wait`` prints;
* **parameters** from a YAML/JSON file and ``--param k=v`` are checked against the
  package and converted to its types before anything is sent; a parameter that looks
  like a credential, or a value equal to a credential in this environment, is refused
  (parameters are stored in the KFP database and shown in its UI);
* the **pipeline version** is named after the package version (``0.1.0``) and carries
  the spec's sha256 in its description, so submitting the same package twice reuses
  it, and a changed package under an unchanged version gets ``0.1.0-<sha12>``;
* **schedules** take a relative window: ``lookback_days`` only, never dates; each run
  ends its window at its own scheduled time (the pipelines pass
  ``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER`` to the ingest).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from components.errors import InputError
from components.version import __version__
from pipelines.kfp_client import (
    FINAL_RUN_STATES,
    SA_TOKEN_PATH_ENV,
    TOKEN_ENV,
    KfpClient,
    KfpError,
    KfpNotFound,
)

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
KNOWN_PIPELINES = ("segment_s2", "auto_segment_s2", "export_sam")
SCHEDULE_TIME_PLACEHOLDER = "{{$.pipeline_job_schedule_time_utc}}"
WINDOW_PARAMETER = "lookback_days"
DATE_PARAMETERS = ("start_date", "end_date", "reference_time")
SECRET_ENVS = (
    TOKEN_ENV,
    "PC_SDK_SUBSCRIPTION_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
)
"""Environment variables whose values must never leave in a request body."""
_SECRET_NAME = re.compile(r"(^|_)(key|token|password|secret|credentials?)($|_)", re.IGNORECASE)


# --- the compiled package -----------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One root input parameter of a compiled pipeline."""

    name: str
    type: str
    """KFP's parameterType: STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT."""
    required: bool
    default: Any = None
    description: str = ""


@dataclass(frozen=True)
class Sink:
    """A pipeline output artifact and the task output that produces it."""

    name: str
    task: str
    output: str


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline (KFP IR YAML, possibly with a platform spec document)."""

    path: Path
    content: bytes
    name: str
    description: str
    parameters: Mapping[str, Parameter]
    sinks: tuple[Sink, ...]
    uses_schedule_time: bool

    @property
    def sha256(self) -> str:
        """Digest of the uploaded bytes: the identity of a version."""
        return hashlib.sha256(self.content).hexdigest()


def resolve_package_path(pipeline: str, compiled_dir: Path | None = None) -> Path:
    """A pipeline name (``segment_s2``, ``auto-segment-s2``) or a path to a compiled YAML."""
    compiled_dir = compiled_dir or COMPILED_DIR
    candidate = Path(pipeline)
    if candidate.suffix in (".yaml", ".yml", ".json") or os.sep in pipeline:
        if not candidate.is_file():
            raise InputError(f"compiled pipeline {pipeline} does not exist")
        return candidate
    name = pipeline.replace("-", "_")
    path = compiled_dir / f"{name}.yaml"
    if path.is_file():
        return path
    if name in KNOWN_PIPELINES:
        raise InputError(
            f"pipeline {name} is not compiled here ({path} is missing); run `s2sam compile` "
            "or give the path of a compiled YAML"
        )
    raise InputError(
        f"unknown pipeline {pipeline!r}; give one of {', '.join(KNOWN_PIPELINES)} "
        "or the path of a compiled pipeline YAML"
    )


def load_package(path: Path) -> PipelinePackage:
    """Read a compiled pipeline and what ``submit``/``schedule`` need to know about it."""
    content = path.read_bytes()
    try:
        documents = [d for d in yaml.safe_load_all(content) if d is not None]
    except yaml.YAMLError as err:
        raise InputError(f"{path} is not YAML: {err}") from None
    spec = next((d for d in documents if isinstance(d, dict) and "pipelineInfo" in d), None)
    if spec is None:
        raise InputError(f"{path} is not a compiled KFP v2 pipeline (no pipelineInfo)")
    root = spec.get("root") or {}
    parameters = {}
    for name, definition in ((root.get("inputDefinitions") or {}).get("parameters") or {}).items():
        has_default = "defaultValue" in definition
        parameters[name] = Parameter(
            name=name,
            type=str(definition.get("parameterType", "STRING")),
            required=not has_default and not definition.get("isOptional", False),
            default=definition.get("defaultValue"),
            description=str(definition.get("description", "")),
        )
    sinks = []
    tasks = (root.get("dag") or {}).get("tasks") or {}
    outputs = ((root.get("dag") or {}).get("outputs") or {}).get("artifacts") or {}
    for name, selector_set in outputs.items():
        for selector in selector_set.get("artifactSelectors") or []:
            task_key = selector.get("producerSubtask", "")
            task_name = ((tasks.get(task_key) or {}).get("taskInfo") or {}).get("name", task_key)
            sinks.append(Sink(name, task_name, selector.get("outputArtifactKey", "")))
    info = spec["pipelineInfo"]
    return PipelinePackage(
        path=path,
        content=content,
        name=str(info.get("name", path.stem)),
        description=str(info.get("description", "")),
        parameters=parameters,
        sinks=tuple(sinks),
        uses_schedule_time=SCHEDULE_TIME_PLACEHOLDER.encode() in content,
    )


# --- parameters ---------------------------------------------------------------------


def read_parameter_file(path: Path) -> dict[str, Any]:
    """Parameters from a YAML or JSON mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise InputError(f"parameter file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise InputError(f"parameter file {path} is not YAML/JSON: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InputError(f"parameter file {path} must hold a mapping of name: value")
    return data


def parse_param_flags(flags: Sequence[str]) -> dict[str, str]:
    """``--param name=value`` flags; ``name=@FILE`` takes the file's text (e.g. GeoJSON)."""
    params = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param {flag!r} is not name=value")
        if value.startswith("@"):
            file = Path(value[1:])
            try:
                value = file.read_text()
            except OSError as err:
                raise InputError(f"--param {name}=@{file}: {err.strerror}") from None
        params[name.strip()] = value
    return params


def build_parameters(
    package: PipelinePackage,
    from_file: Mapping[str, Any],
    from_flags: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The run's parameters, checked against the package and converted to its types.

    Flags override the file. Parameters left out keep the pipeline's defaults (they
    are not sent); a required parameter left out is an error here, not in the cluster.
    """
    values: dict[str, Any] = dict(from_file)
    for name, text in from_flags.items():
        values[name] = _from_text(package, name, text)
    unknown = sorted(set(values) - set(package.parameters))
    if unknown:
        raise InputError(
            f"pipeline {package.name} has no parameter {', '.join(unknown)}; it takes: "
            + ", ".join(sorted(package.parameters))
        )
    checked = {name: _check_type(package.parameters[name], value) for name, value in values.items()}
    missing = [p.name for p in package.parameters.values() if p.required and p.name not in checked]
    if missing:
        raise InputError(f"pipeline {package.name} needs parameter(s) {', '.join(missing)}")
    refuse_secrets(checked, environ)
    return checked


def _from_text(package: PipelinePackage, name: str, text: str) -> Any:
    parameter = package.parameters.get(name)
    if parameter is None:
        return text  # reported as unknown with the others
    kind = parameter.type
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise InputError(text)
        if kind in ("LIST", "STRUCT"):
            return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        raise InputError(f"--param {name}={text!r} is not a valid {kind}") from None
    return text


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "STRING": lambda v: isinstance(v, str),
    "NUMBER_INTEGER": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "NUMBER_DOUBLE": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "LIST": lambda v: isinstance(v, list),
    "STRUCT": lambda v: isinstance(v, dict),
}


def _check_type(parameter: Parameter, value: Any) -> Any:
    kind = parameter.type
    ok = _TYPE_CHECKS.get(kind, lambda _v: True)
    if not ok(value):
        raise InputError(
            f"parameter {parameter.name} must be {kind}, got {type(value).__name__} {value!r:.60}"
        )
    if kind == "NUMBER_DOUBLE":
        return float(value)
    return value


def refuse_secrets(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Refuse credentials as parameters: they would be stored and shown by KFP.

    Raises:
        InputError: A non-empty parameter named like a credential, or any value that
            contains the value of a credential variable of this environment.
    """
    env = os.environ if environ is None else environ
    for name, value in params.items():
        if _SECRET_NAME.search(name) and value not in ("", None):
            raise InputError(
                f"parameter {name} looks like a credential: pipeline parameters are stored in "
                "the KFP database and shown in its UI; put it in a Kubernetes secret "
                "(README: Running on Kubeflow)"
            )
    secrets = _secret_values(env)
    for name, value in params.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        for env_name, secret in secrets:
            if secret in text:
                raise InputError(
                    f"parameter {name} contains the value of ${env_name}; credentials are "
                    "never sent as pipeline parameters"
                )


def _secret_values(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    values = [(name, environ.get(name, "").strip()) for name in SECRET_ENVS]
    if path := environ.get(SA_TOKEN_PATH_ENV):
        with contextlib.suppress(OSError):
            values.append((SA_TOKEN_PATH_ENV, Path(path).read_text().strip()))
    return [(name, value) for name, value in values if len(value) >= 8]


def refuse_secrets_in_package(
    package: PipelinePackage, environ: Mapping[str, str] | None = None
) -> None:
    """Refuse to upload a compiled pipeline that holds a credential of this environment."""
    text = package.content.decode(errors="replace")
    for env_name, secret in _secret_values(os.environ if environ is None else environ):
        if secret in text:
            raise InputError(
                f"{package.path} contains the value of ${env_name}: recompile without it "
                "(credentials belong in Kubernetes secrets, not in the pipeline)"
            )


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


# --- schedules ----------------------------------------------------------------------

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")
_CRON_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_DURATION = re.compile(r"(\d+)\s*([wdhms])")
_DURATION_S = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def kfp_cron(expression: str) -> str:
    """KFP's 6-field cron (seconds first) from a 6- or 5-field expression or a macro.

    KFP's scheduler (robfig/cron) reads ``second minute hour day-of-month month
    day-of-week``; a standard 5-field expression gets ``0`` seconds in front.
    """
    text = " ".join(expression.split())
    if text.lower() in _CRON_MACROS:
        return _CRON_MACROS[text.lower()]
    fields_ = text.split(" ")
    if len(fields_) == 5:
        fields_ = ["0", *fields_]
    if len(fields_) != 6 or not all(_CRON_FIELD.match(f) for f in fields_):
        raise InputError(
            f"--cron {expression!r} is not a cron expression: give 6 fields "
            "(second minute hour day-of-month month day-of-week, e.g. '0 0 6 * * MON'), "
            "5 standard fields, or @daily/@weekly/@monthly"
        )
    return " ".join(fields_)


def interval_seconds(text: str) -> int:
    """``7d``, ``12h``, ``1w``, ``1d12h``, ``3600`` or ``3600s`` as seconds."""
    compact = text.strip().lower().replace(" ", "")
    if compact.isdigit():
        seconds = int(compact)
    elif compact and _DURATION.sub("", compact) == "":
        seconds = sum(int(n) * _DURATION_S[u] for n, u in _DURATION.findall(compact))
    else:
        raise InputError(f"--interval {text!r} is not a duration like 7d, 12h or 1d12h")
    if seconds < 60:
        raise InputError(f"--interval {text!r} is shorter than a minute")
    return seconds


def parse_time(text: str, flag: str) -> str:
    """An RFC 3339 UTC timestamp from an ISO 8601 date or datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not an ISO 8601 date or datetime") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Schedule:
    """When a recurring run starts runs."""

    cron: str | None = None
    interval_s: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    max_concurrency: int = 1
    catchup: bool = False
    enabled: bool = True
    warnings: list[str] = field(default_factory=list)

    def trigger(self) -> dict[str, Any]:
        """The ``V2beta1Trigger`` JSON."""
        times = {
            k: v for k, v in (("start_time", self.start_time), ("end_time", self.end_time)) if v
        }
        if self.cron is not None:
            return {"cron_schedule": {"cron": self.cron, **times}}
        return {"periodic_schedule": {"interval_second": str(self.interval_s), **times}}

    def describe(self) -> str:
        """One line for people."""
        when = f"cron '{self.cron}' (UTC)" if self.cron else f"every {_human(self.interval_s or 0)}"
        catchup = "on" if self.catchup else "off"
        return f"{when}, max {self.max_concurrency} at a time, catch-up {catchup}"


def windowed_parameters(
    package: PipelinePackage, parameters: Mapping[str, Any], lookback_days: int | None
) -> tuple[dict[str, Any], list[str]]:
    """A schedule's parameters: ``lookback_days`` set, no dates; and warnings.

    Raises:
        InputError: Fixed dates (every run would take the same imagery), a pipeline
            without ``lookback_days`` asked for a window, or no window for one that has it.
    """
    params = dict(parameters)
    fixed = [name for name in DATE_PARAMETERS if params.get(name) not in (None, "")]
    if fixed:
        raise InputError(
            f"a recurring run with {', '.join(fixed)} set would process the same imagery every "
            "time; give --lookback-days instead: each run then takes the days before its "
            "own scheduled time"
        )
    for name in DATE_PARAMETERS:
        params.pop(name, None)
    warnings: list[str] = []
    if WINDOW_PARAMETER not in package.parameters:
        if lookback_days is not None:
            raise InputError(
                f"pipeline {package.name} has no {WINDOW_PARAMETER} parameter: it takes no "
                "time window"
            )
        return params, warnings
    if lookback_days is not None:
        params[WINDOW_PARAMETER] = lookback_days
    window = params.get(WINDOW_PARAMETER)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise InputError(
            f"a recurring run of {package.name} needs --lookback-days N (N >= 1): the days "
            "of imagery before each scheduled time"
        )
    if not package.uses_schedule_time:
        warnings.append(
            f"{package.path.name} does not use the schedule-time placeholder: windows end when "
            "a run starts, not at its scheduled time"
        )
    return params, warnings


def recurring_run_body(
    display_name: str,
    experiment_id: str,
    version: UploadedVersion,
    parameters: Mapping[str, Any],
    schedule: Schedule,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A ``V2beta1RecurringRun`` request."""
    body: dict[str, Any] = {
        "display_name": display_name,
        "description": f"s2sam schedule: {schedule.describe()}",
        "experiment_id": experiment_id,
        "pipeline_version_reference": {
            "pipeline_id": version.pipeline_id,
            "pipeline_version_id": version.pipeline_version_id,
        },
        "runtime_config": {"parameters": dict(parameters)},
        "trigger": schedule.trigger(),
        "max_concurrency": str(schedule.max_concurrency),
        "no_catchup": not schedule.catchup,
        "mode": "ENABLE" if schedule.enabled else "DISABLE",
    }
    if namespace:
        body["namespace"] = namespace
    if service_account:
        body["service_account"] = service_account
    return body


def window_gap_warning(interval_s: int | None, lookback_days: int | None) -> str | None:
    """A warning when an interval is longer than the window (days without imagery)."""
    if interval_s is None or lookback_days is None:
        return None
    if lookback_days * 86400 < interval_s:
        days = math.ceil(interval_s / 86400)
        return (
            f"--lookback-days {lookback_days} is shorter than the interval "
            f"({_human(interval_s)}): imagery between windows is never processed; use {days}"
        )
    return None


def find_recurring_run(client: KfpClient, ref: str) -> dict[str, Any]:
    """A recurring run by id or by display name (which must be unique)."""
    runs = client.recurring_runs()
    by_id = [r for r in runs if r.get("recurring_run_id") == ref]
    if by_id:
        return by_id[0]
    by_name = [r for r in runs if r.get("display_name") == ref]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        ids = ", ".join(str(r.get("recurring_run_id")) for r in by_name)
        raise InputError(f"several recurring runs are named {ref!r}: {ids}; give the id")
    raise InputError(f"no recurring run {ref!r} (see `s2sam schedule list`)")


def describe_trigger(trigger: Mapping[str, Any]) -> str:
    """A recurring run's trigger for a table."""
    if cron := (trigger.get("cron_schedule") or {}).get("cron"):
        return f"cron {cron}"
    if interval := (trigger.get("periodic_schedule") or {}).get("interval_second"):
        return f"every {_human(int(interval))}"
    return "-"


def _human(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
