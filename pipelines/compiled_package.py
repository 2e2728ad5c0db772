"""A compiled pipeline package and the parameters of a run of it.

* a **package** is a compiled pipeline YAML (``pipelines/compiled/<name>.yaml`` or any
  path); its root input definitions give the parameters' names, types and defaults,
  and its root outputs the sinks whose URIs ``s2sam submit --wait`` prints;
* **parameters** from a YAML/JSON file and ``--param k=v`` are checked against the
  package and converted to its types before anything is sent; a parameter that looks
  like a credential, or a value equal to a credential in this environment, is refused
  (parameters are stored in the KFP database and shown in its UI), and so is a package
  that holds such a value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.errors import InputError
from pipelines.kfp_client import SA_TOKEN_PATH_ENV, TOKEN_ENV

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
KNOWN_PIPELINES = ("segment_s2", "auto_segment_s2", "export_sam")
SCHEDULE_TIME_PLACEHOLDER = "{{$.pipeline_job_schedule_time_utc}}"
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
