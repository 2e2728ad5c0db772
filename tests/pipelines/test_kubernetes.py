# No ``from __future__ import annotations``: KFP reads the components' real types.
import json

import pytest
import yaml
from kfp import compiler, dsl

from components.images import image
from pipelines.cluster_settings import (
    DEFAULT_RESOURCES,
    MLFLOW_CREDENTIAL_KEYS,
    ClusterSettings,
    Toleration,
    load_cluster_settings,
)
from pipelines.kubernetes import configure_cpu_task, configure_inference_task

PC_KEY = "pc-key-0123456789abcdef"
MLFLOW_PASSWORD = "mlflow-password-fedcba9876543210"


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def ingest(geometry: str, scenes: dsl.Output[dsl.Dataset], lookback_days: int = 0) -> int:
    return 1


@dsl.component(base_image=image("gpu"), install_kfp_package=False)
def segment(scenes: dsl.Input[dsl.Dataset], masks: dsl.Output[dsl.Dataset]):
    pass


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def merge(masks: dsl.Input[dsl.Dataset], mask: dsl.Output[dsl.Dataset]):
    pass


def compile_pipeline(tmp_path, settings=None):
    @dsl.pipeline(name="k8s-settings")
    def k8s_settings(geometry: str, lookback_days: int = 7) -> dsl.Dataset:
        scenes = ingest(geometry=geometry, lookback_days=lookback_days)
        configure_cpu_task(scenes, settings, kind="ingest")
        masks = segment(scenes=scenes.outputs["scenes"])
        configure_inference_task(masks, settings)
        merged = merge(masks=masks.outputs["masks"])
        configure_cpu_task(merged, settings, kind="merge")
        return merged.outputs["mask"]

    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(k8s_settings, str(path))
    text = path.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture
def secrets_in_env(monkeypatch):
    """Credentials as they would be on a developer's machine while compiling."""
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", PC_KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")


def test_inference_task_requests_a_gpu_on_a_gpu_node(tmp_path, secrets_in_env):
    _, spec, executors = compile_pipeline(tmp_path)
    resources = spec["deploymentSpec"]["executors"]["exec-segment"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceCpuRequest"] == DEFAULT_RESOURCES["inference"].cpu_request
    assert resources["resourceMemoryRequest"] == DEFAULT_RESOURCES["inference"].memory_request
    assert resources["resourceMemoryLimit"] == DEFAULT_RESOURCES["inference"].memory_limit
    assert "resourceCpuLimit" not in resources  # no CPU throttling by default
    gpu = executors["exec-segment"]
    assert gpu["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert int(gpu["activeDeadlineSeconds"]) == 4 * 3600
    # CPU tasks: no GPU, no GPU toleration
    for name in ("exec-ingest", "exec-merge"):
        assert (
            "accelerator" not in spec["deploymentSpec"]["executors"][name]["container"]["resources"]
        )
        assert "tolerations" not in executors[name]


def test_secrets_are_references_never_values(tmp_path, secrets_in_env):
    text, spec, executors = compile_pipeline(tmp_path)
    assert PC_KEY not in text and MLFLOW_PASSWORD not in text
    assert "mlflow.internal" not in text
    ingest_env = executors["exec-ingest"]["secretAsEnv"]
    assert ingest_env == [
        {
            "keyToEnv": [
                {"envVar": "PC_SDK_SUBSCRIPTION_KEY", "secretKey": "PC_SDK_SUBSCRIPTION_KEY"}
            ],
            "optional": True,
            "secretName": "s2sam-planetary-computer",
            "secretNameParameter": {"runtimeValue": {"constant": "s2sam-planetary-computer"}},
        }
    ]
    uri, credentials = executors["exec-segment"]["secretAsEnv"]
    assert uri["secretName"] == credentials["secretName"] == "s2sam-mlflow"
    assert uri["keyToEnv"] == [
        {"envVar": "MLFLOW_TRACKING_URI", "secretKey": "MLFLOW_TRACKING_URI"}
    ]
    assert uri["optional"] is False  # no silent fallback to a store inside the pod
    assert credentials["optional"] is True
    assert [e["envVar"] for e in credentials["keyToEnv"]] == list(MLFLOW_CREDENTIAL_KEYS)
    assert "secretAsEnv" not in executors["exec-merge"]
    # and no credential is a parameter of the pipeline
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if "key" in p or "token" in p or "password" in p]


def test_cache_volume_retries_and_timeouts(tmp_path):
    _, spec, executors = compile_pipeline(tmp_path)
    segment_exec = executors["exec-segment"]
    assert segment_exec["emptyDirMounts"] == [
        {"mountPath": "/var/cache/s2sam", "sizeLimit": "20Gi", "volumeName": "s2sam-cache"}
    ]
    env = spec["deploymentSpec"]["executors"]["exec-segment"]["container"]["env"]
    assert {"name": "S2SAM_CACHE_DIR", "value": "/var/cache/s2sam"} in env
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ingest"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["segment"]["retryPolicy"]["maxRetryCount"] == 1
    assert tasks["merge"]["retryPolicy"]["maxRetryCount"] == 1
    assert int(executors["exec-ingest"]["activeDeadlineSeconds"]) == 2 * 3600
    ingest_resources = spec["deploymentSpec"]["executors"]["exec-ingest"]["container"]["resources"]
    assert ingest_resources["resourceMemoryLimit"] == "2Gi"


def test_overrides_from_a_settings_file(tmp_path, monkeypatch):
    settings_file = tmp_path / "cluster.yaml"
    settings_file.write_text(
        yaml.safe_dump(
            {
                "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                "gpu_tolerations": [
                    {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
                ],
                "cpu_node_selector": {"pool": "cpu"},
                "resources": {"inference": {"memory_limit": "64Gi"}},
                "retries": {"ingest": {"retries": 5}},
                "timeouts_s": {"inference": 600},
                "mlflow_secret": "team-mlflow",
                "mlflow_credential_keys": ["MLFLOW_TRACKING_TOKEN"],
                "cache_pvc": "s2sam-cache",
                "image_pull_secrets": ["regcred"],
            }
        )
    )
    monkeypatch.setenv("S2SAM_CLUSTER_SETTINGS", str(settings_file))
    settings = load_cluster_settings()
    _, spec, executors = compile_pipeline(tmp_path, settings)
    gpu = executors["exec-segment"]
    assert gpu["nodeSelector"] == {
        "labels": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    }
    assert gpu["tolerations"] == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]
    assert gpu["pvcMount"][0]["mountPath"] == "/var/cache/s2sam"
    assert gpu["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "s2sam-cache"
    assert "emptyDirMounts" not in gpu
    assert [s["secretName"] for s in gpu["imagePullSecret"]] == ["regcred"]
    assert int(gpu["activeDeadlineSeconds"]) == 600
    assert {s["secretName"] for s in gpu["secretAsEnv"]} == {"team-mlflow"}
    assert executors["exec-ingest"]["nodeSelector"] == {"labels": {"pool": "cpu"}}
    resources = spec["deploymentSpec"]["executors"]["exec-segment"]["container"]["resources"]
    assert resources["resourceMemoryLimit"] == "64Gi"
    assert resources["resourceMemoryRequest"] == "8Gi"  # untouched fields keep defaults
    assert spec["root"]["dag"]["tasks"]["ingest"]["retryPolicy"]["maxRetryCount"] == 5


def test_settings_in_code(monkeypatch):
    monkeypatch.delenv("S2SAM_CLUSTER_SETTINGS", raising=False)
    assert load_cluster_settings() == ClusterSettings()
    settings = ClusterSettings(gpu_tolerations=(Toleration("nvidia.com/gpu"),)).with_resources(
        "merge", memory_limit="32Gi"
    )
    assert settings.resources["merge"].memory_limit == "32Gi"
    assert settings.resources["merge"].memory_request == DEFAULT_RESOURCES["merge"].memory_request
    assert (
        ClusterSettings().resources["merge"].memory_limit == DEFAULT_RESOURCES["merge"].memory_limit
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"gpu_resourse": "x"}, "unknown cluster settings ['gpu_resourse']"),
        ({"resources": {"infer": {"cpu_request": "1"}}}, "unknown task kind 'infer'"),
        ({"resources": {"merge": {"memory_limit": "8 GB"}}}, "not a Kubernetes quantity"),
        ({"resources": {"merge": {"memroy_limit": "8Gi"}}}, "task kind 'merge'"),
        ({"gpu_tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}, "takes no value"),
        ({"mlflow_secret": "Team_MLflow"}, "not a valid Kubernetes object name"),
        ({"timeouts_s": {"merge": -1}}, "whole seconds"),
        ({"retries": {"merge": {"backoff": "30"}}}, "duration"),
    ],
)
def test_bad_settings_are_named(tmp_path, data, message):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="cluster settings file") as err:
        load_cluster_settings(path)
    assert message in str(err.value)


def test_missing_settings_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="No such file"):
        load_cluster_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "document, message",
    [
        ({"gpu_tolerations": "nvidia.com/gpu"}, "gpu_tolerations must be a list"),
        ({"gpu_tolerations": [{"colour": "red"}]}, "gpu_tolerations:"),
        ({"gpus_per_inference_task": "2"}, "gpus_per_inference_task must be of type int"),
        ({"gpu_node_selector": "gpu=true"}, "gpu_node_selector must be of type Mapping"),
        ({"gpu_node_selector": {"gpu": True}}, "label names to string values"),
        ({"image_pull_secrets": "regcred"}, "image_pull_secrets must be a list"),
    ],
)
def test_settings_of_the_wrong_type_are_named(document, message):
    with pytest.raises(ValueError, match=message):
        ClusterSettings.from_mapping(document)
