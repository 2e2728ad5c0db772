"""Cluster settings applied to the pipeline tasks: GPUs, scheduling, resources, secrets, cache.

The pipeline definitions call one function per task, e.g.::

    settings = load_cluster_settings()          # defaults, or $S2SAM_CLUSTER_SETTINGS
    configure_cpu_task(ingest, settings, kind="ingest")
    with dsl.ParallelFor(shards) as shard:
        configure_inference_task(segment(...), settings)

Everything here is written into the compiled YAML at compile time; the settings, their
defaults and the settings file are :mod:`pipelines.cluster_settings`.

Secrets are referenced by name and key only (``secretKeyRef``): their values never pass
through the compiler, the pipeline parameters, the KFP database or the logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from kfp import dsl
from kfp import kubernetes as k8s

from components.errors import InputError
from pipelines.cluster_settings import (
    MLFLOW_URI_ENV,
    PC_KEY_ENV,
    ClusterSettings,
    CpuTaskKind,
    TaskKind,
    Toleration,
)

CACHE_ENV = "S2SAM_CACHE_DIR"


def configure_inference_task(
    task: dsl.PipelineTask, settings: ClusterSettings | None = None
) -> dsl.PipelineTask:
    """A SAM inference task: one GPU on a GPU node, MLflow access, the model/embedding cache."""
    s = settings or ClusterSettings()
    task.set_accelerator_type(s.gpu_resource)
    task.set_accelerator_limit(s.gpus_per_inference_task)
    _schedule(task, s.gpu_node_selector, s.gpu_tolerations)
    _common(task, s, "inference")
    use_mlflow_secret(task, s)
    mount_cache(task, s)
    return task


def configure_cpu_task(
    task: dsl.PipelineTask,
    settings: ClusterSettings | None = None,
    *,
    kind: CpuTaskKind = "light",
    mlflow: bool | None = None,
    planetary_computer: bool | None = None,
) -> dsl.PipelineTask:
    """A task on CPU nodes with the resources, retries and timeout of ``kind``.

    Secrets follow the kind unless named: ``ingest`` gets the Planetary Computer key,
    ``export`` gets MLflow; a ``light`` task that resolves a model passes ``mlflow=True``.
    ``export`` and MLflow tasks also get the cache (downloaded checkpoints, models).
    """
    s = settings or ClusterSettings()
    if kind not in get_args(CpuTaskKind):
        raise InputError(f"kind must be one of {get_args(CpuTaskKind)}, got {kind!r}")
    _schedule(task, s.cpu_node_selector, s.cpu_tolerations)
    _common(task, s, kind)
    if planetary_computer if planetary_computer is not None else kind == "ingest":
        use_planetary_computer_secret(task, s)
    if mlflow if mlflow is not None else kind == "export":
        use_mlflow_secret(task, s)
        mount_cache(task, s)
    return task


def use_planetary_computer_secret(
    task: dsl.PipelineTask, settings: ClusterSettings | None = None
) -> dsl.PipelineTask:
    """``PC_SDK_SUBSCRIPTION_KEY`` from the Planetary Computer secret, if that exists."""
    s = settings or ClusterSettings()
    return k8s.use_secret_as_env(
        task, s.pc_secret, secret_key_to_env={s.pc_secret_key: PC_KEY_ENV}, optional=True
    )


def use_mlflow_secret(
    task: dsl.PipelineTask, settings: ClusterSettings | None = None
) -> dsl.PipelineTask:
    """``MLFLOW_TRACKING_URI`` (required) and the credential keys present in the secret.

    The URI is required on purpose: without it the step would fall back to an embedded
    store inside the pod and register models nobody can see.
    """
    s = settings or ClusterSettings()
    k8s.use_secret_as_env(
        task, s.mlflow_secret, secret_key_to_env={s.mlflow_uri_key: MLFLOW_URI_ENV}
    )
    if s.mlflow_credential_keys:
        k8s.use_secret_as_env(
            task,
            s.mlflow_secret,
            secret_key_to_env={key: key for key in s.mlflow_credential_keys},
            optional=True,
        )
    return task


def mount_cache(
    task: dsl.PipelineTask, settings: ClusterSettings | None = None
) -> dsl.PipelineTask:
    """The model/embedding cache at ``cache_mount_path``; ``S2SAM_CACHE_DIR`` points at it."""
    s = settings or ClusterSettings()
    if s.cache_pvc:
        k8s.mount_pvc(task, pvc_name=s.cache_pvc, mount_path=s.cache_mount_path)
    else:
        k8s.empty_dir_mount(
            task,
            volume_name="s2sam-cache",
            mount_path=s.cache_mount_path,
            size_limit=s.cache_size_limit or None,
        )
    task.set_env_variable(CACHE_ENV, s.cache_mount_path)
    return task


def _schedule(
    task: dsl.PipelineTask, node_selector: Mapping[str, str], tolerations: tuple[Toleration, ...]
) -> None:
    for label, value in node_selector.items():
        k8s.add_node_selector(task, label_key=label, label_value=value)
    for t in tolerations:
        k8s.add_toleration(
            task,
            key=t.key,
            operator=t.operator,
            value=t.value or None,
            effect=t.effect or None,
        )


def _common(task: dsl.PipelineTask, s: ClusterSettings, kind: TaskKind) -> None:
    r = s.resources[kind]
    if r.cpu_request:
        task.set_cpu_request(r.cpu_request)
    if r.cpu_limit:
        task.set_cpu_limit(r.cpu_limit)
    if r.memory_request:
        task.set_memory_request(r.memory_request)
    if r.memory_limit:
        task.set_memory_limit(r.memory_limit)
    retry = s.retries[kind]
    if retry.retries:
        task.set_retry(
            num_retries=retry.retries,
            backoff_duration=retry.backoff,
            backoff_factor=retry.backoff_factor,
            backoff_max_duration=retry.backoff_max,
        )
    if s.timeouts_s[kind]:
        k8s.set_timeout(task, s.timeouts_s[kind])
    if s.image_pull_secrets:
        k8s.set_image_pull_secrets(task, list(s.image_pull_secrets))
