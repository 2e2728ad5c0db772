"""How the pipeline tasks run on a cluster: GPUs, scheduling, resources, retries, secrets, cache.

:class:`ClusterSettings` holds every choice with its default. A cluster with other GPU
labels, taints, secret names or sizes compiles its own copy of the pipelines with a
settings file (:func:`load_cluster_settings`) instead of editing code;
:mod:`pipelines.kubernetes` writes the settings into each task at compile time.

Resource defaults and why (peak RSS measured on 2 shared CPU cores, vit_b; README,
"Running on Kubeflow", has the table):

* ``ingest``: a whole 10980 x 10980 px tile peaks at 287 MB (ingest benchmark; target
  < 1.5 GB), I/O bound with COG encoding on top: 1 CPU, 1 GiB request, 2 GiB limit.
* ``light`` (model resolution, chip planning): Python, the MLflow client, file copies:
  250m, 512 MiB, 1 GiB limit.
* ``merge``: the shard outputs and the scene's rasters, rendered window by window:
  1 CPU, 2 GiB request, 8 GiB limit.
* ``inference``: one GPU. On CPU the vit_b encoder peaks at 4.0 GB for one 1024 px
  chip (its session runs without ONNX Runtime's CPU arena; 7.2 GB with it); on a GPU
  the activations live in GPU memory and the host keeps the CUDA context, sessions
  and chips: 4 CPUs, 8 GiB request (fits small GPU nodes), 24 GiB limit.
* ``export``: PyTorch + ONNX export with the parity check; vit_b peaked at 5.5 GB,
  vit_h (7x the weights) peaked at 10.9 GB (3.5 min): 4 CPUs, 8 GiB request, 16 GiB limit.

No CPU limits by default: a CPU limit throttles a pod that could use idle cores, and
the memory limit is what protects the node.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from components.errors import InputError

TaskKind = Literal["ingest", "light", "merge", "inference", "export"]
"""Resource/retry profiles: every pipeline task is one of these."""

CpuTaskKind = Literal["ingest", "light", "merge", "export"]
SETTINGS_ENV = "S2SAM_CLUSTER_SETTINGS"
"""Path of a YAML/JSON settings file read by :func:`load_cluster_settings` at compile time."""

PC_KEY_ENV = "PC_SDK_SUBSCRIPTION_KEY"
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?s$")


@dataclass(frozen=True)
class Resources:
    """CPU and memory of one task kind, as Kubernetes quantities ("" = not set)."""

    cpu_request: str
    memory_request: str
    memory_limit: str
    cpu_limit: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value and not _QUANTITY.match(value):
                raise InputError(
                    f"{f.name} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)"
                )


@dataclass(frozen=True)
class Toleration:
    """A pod toleration (for tainted GPU nodes, spot pools, ...)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = "NoSchedule"

    def __post_init__(self) -> None:
        if self.operator not in ("Exists", "Equal"):
            raise InputError(f"toleration operator must be Exists or Equal, got {self.operator!r}")
        if self.operator == "Exists" and self.value:
            raise InputError(f"toleration {self.key!r}: operator Exists takes no value")
        if self.effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute", ""):
            raise InputError(f"toleration {self.key!r}: unknown effect {self.effect!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """KFP task retries: ``retries`` more attempts, exponential backoff."""

    retries: int
    backoff: str = "30s"
    backoff_factor: float = 2.0
    backoff_max: str = "3600s"

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InputError(f"retries must be >= 0, got {self.retries}")
        for name in ("backoff", "backoff_max"):
            if not _DURATION.match(getattr(self, name)):
                raise InputError(f"{name} {getattr(self, name)!r} is not a duration like '30s'")


DEFAULT_RESOURCES: Mapping[TaskKind, Resources] = {
    "ingest": Resources("1", "1Gi", "2Gi"),
    "light": Resources("250m", "512Mi", "1Gi"),
    "merge": Resources("1", "2Gi", "8Gi"),
    "inference": Resources("4", "8Gi", "24Gi"),
    "export": Resources("4", "8Gi", "16Gi"),
}

DEFAULT_RETRIES: Mapping[TaskKind, RetryPolicy] = {
    # Network I/O against the Planetary Computer: transient failures are expected.
    "ingest": RetryPolicy(3, "60s"),
    "light": RetryPolicy(2, "30s"),
    "merge": RetryPolicy(1, "30s"),
    # A GPU pod lost with its node (spot/preemptible pools) starts again once.
    "inference": RetryPolicy(1, "60s"),
    # An export that failed after registering would register a second version.
    "export": RetryPolicy(0),
}

DEFAULT_TIMEOUTS_S: Mapping[TaskKind, int] = {
    "ingest": 2 * 3600,
    "light": 30 * 60,
    "merge": 2 * 3600,
    "inference": 4 * 3600,
    "export": 3 * 3600,
}
"""``activeDeadlineSeconds`` per attempt: a hung pod fails instead of holding a GPU forever."""

MLFLOW_CREDENTIAL_KEYS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_S3_ENDPOINT_URL",
)
"""Optional keys of the MLflow secret, each exported as the env var of the same name
(basic auth or a token; S3 keys only when the server does not proxy artifacts)."""


@dataclass(frozen=True)
class ClusterSettings:
    """How the pipeline tasks run on a Kubernetes cluster; every field has a default.

    Override in code with :func:`dataclasses.replace` or :meth:`with_resources`, or at
    compile time with a settings file (:func:`load_cluster_settings`).
    """

    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource of a GPU (the NVIDIA device plugin's name)."""
    gpus_per_inference_task: int = 1
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    """Labels an inference node must carry, e.g. ``{"nvidia.com/gpu.product": "NVIDIA-H100"}``."""
    gpu_tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    """Default: tolerate the ``nvidia.com/gpu`` taint (GKE, GPU operator setups)."""
    cpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    cpu_tolerations: tuple[Toleration, ...] = ()
    resources: Mapping[TaskKind, Resources] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    retries: Mapping[TaskKind, RetryPolicy] = field(default_factory=lambda: dict(DEFAULT_RETRIES))
    timeouts_s: Mapping[TaskKind, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS_S))
    pc_secret: str = "s2sam-planetary-computer"
    """Secret with the Planetary Computer key (optional: anonymous access has lower limits)."""
    pc_secret_key: str = PC_KEY_ENV
    mlflow_secret: str = "s2sam-mlflow"
    """Secret with ``MLFLOW_TRACKING_URI`` (required) and optional credentials."""
    mlflow_uri_key: str = MLFLOW_URI_ENV
    mlflow_credential_keys: tuple[str, ...] = MLFLOW_CREDENTIAL_KEYS
    cache_pvc: str = ""
    """A ReadWriteMany PVC for models and image embeddings shared by all pods and runs;
    empty: a per-pod emptyDir (scratch space only)."""
    cache_size_limit: str = "20Gi"
    cache_mount_path: str = "/var/cache/s2sam"
    image_pull_secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check_tables()
        if self.gpus_per_inference_task < 1:
            raise InputError("gpus_per_inference_task must be at least 1")
        self._check_names()
        if self.cache_size_limit and not _QUANTITY.match(self.cache_size_limit):
            raise InputError(f"cache_size_limit {self.cache_size_limit!r} is not a quantity")
        if not self.cache_mount_path.startswith("/"):
            raise InputError(f"cache_mount_path {self.cache_mount_path!r} must be absolute")

    def _check_tables(self) -> None:
        """Per-kind tables name exactly the task kinds; timeouts are whole seconds."""
        kinds = set(get_args(TaskKind))
        for name in ("resources", "retries", "timeouts_s"):
            table = getattr(self, name)
            missing = kinds - set(table)
            unknown = set(table) - kinds
            if missing or unknown:
                raise InputError(
                    f"{name} needs exactly the task kinds {sorted(kinds)}: "
                    f"missing {sorted(missing)}, unknown {sorted(unknown)}"
                )
        for kind, seconds in self.timeouts_s.items():
            if not isinstance(seconds, int) or seconds < 0:
                raise InputError(f"timeouts_s[{kind!r}] must be whole seconds >= 0 (0: none)")

    def _check_names(self) -> None:
        """Secret, volume and key names Kubernetes will accept."""
        for value in (self.pc_secret, self.mlflow_secret, self.cache_pvc, *self.image_pull_secrets):
            if value and not _DNS_NAME.match(value):
                raise InputError(f"{value!r} is not a valid Kubernetes object name")
        if not self.pc_secret or not self.mlflow_secret:
            raise InputError("pc_secret and mlflow_secret need a name")
        for key in (self.pc_secret_key, self.mlflow_uri_key, *self.mlflow_credential_keys):
            if not _SECRET_KEY.match(key):
                raise InputError(f"{key!r} is not a valid secret key")
        for key in self.mlflow_credential_keys:
            if not _ENV_NAME.match(key):
                raise InputError(f"MLflow credential key {key!r} must also be an env var name")

    def with_resources(self, kind: TaskKind, **changes: str) -> ClusterSettings:
        """A copy with some of one kind's resources changed, e.g. ``memory_limit="64Gi"``."""
        resources = dict(self.resources)
        resources[kind] = replace(resources[kind], **changes)
        return replace(self, resources=resources)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ClusterSettings:
        """Settings from a parsed YAML/JSON document; fields left out keep their defaults.

        ``resources``, ``retries`` and ``timeouts_s`` may name only the kinds they change.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown cluster settings {unknown}; known: {sorted(known)}")
        base = cls()
        kwargs = {name: _setting(base, name, value) for name, value in data.items()}
        return replace(base, **kwargs)


def _setting(base: ClusterSettings, name: str, value: Any) -> Any:
    """One setting from a settings file, checked against the type of its default."""
    if name in ("resources", "retries"):
        return _merge_table(getattr(base, name), value, lambda old, new: replace(old, **new))
    if name == "timeouts_s":
        return _merge_table(base.timeouts_s, value, lambda _old, new: new)
    if name in ("gpu_tolerations", "cpu_tolerations"):
        if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
            raise InputError(f"{name} must be a list of tolerations (key, operator, ...)")
        try:
            return tuple(Toleration(**t) for t in value)
        except TypeError as err:
            raise InputError(f"{name}: {err}") from None
    if name in ("image_pull_secrets", "mlflow_credential_keys"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{name} must be a list of names")
        return tuple(value)
    default = getattr(base, name)
    kind = Mapping if isinstance(default, Mapping) else type(default)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise InputError(f"{name} must be of type {kind.__name__}, got {value!r}")
    if kind is Mapping and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InputError(f"{name} must map label names to string values")
    return value


def _merge_table(base: Mapping[TaskKind, Any], changes: Any, merge: Any) -> dict[TaskKind, Any]:
    if not isinstance(changes, Mapping):
        raise InputError(f"expected a mapping of task kind to settings, got {changes!r}")
    table = dict(base)
    for kind, value in changes.items():
        if kind not in table:
            raise InputError(f"unknown task kind {kind!r}; known: {sorted(table)}")
        try:
            table[kind] = merge(table[kind], value)
        except TypeError as err:
            raise InputError(f"settings of task kind {kind!r}: {err}") from None
    return table


def load_cluster_settings(path: str | os.PathLike[str] | None = None) -> ClusterSettings:
    """Settings from ``path`` (YAML/JSON), else from ``$S2SAM_CLUSTER_SETTINGS``, else defaults."""
    source = path if path is not None else os.environ.get(SETTINGS_ENV)
    if not source:
        return ClusterSettings()
    file = Path(source)
    try:
        text = file.read_text()
    except OSError as err:
        raise InputError(f"cluster settings file {file}: {err.strerror}") from None
    if file.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        return ClusterSettings()
    if not isinstance(data, Mapping):
        raise InputError(f"cluster settings file {file} must hold a mapping")
    try:
        return ClusterSettings.from_mapping(data)
    except ValueError as err:
        raise InputError(f"cluster settings file {file}: {err}") from None
