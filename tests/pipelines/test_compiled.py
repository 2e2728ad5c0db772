"""The compiled pipelines: checked in, current, and what a cluster needs."""

from pathlib import Path

import pytest
import yaml

from components.images import image
from pipelines.compile import COMPILED_DIR, compile_pipelines
from pipelines.definitions import DEFINITIONS

FARMVIBES = {
    "segment_s2": {"model_type": "vit_b", "spatial_overlap": 0.5},
    "auto_segment_s2": {
        "model_type": "vit_b", "spatial_overlap": 0.5, "points_per_side": 16,
        "n_crop_layers": 0, "crop_overlap_ratio": 0.0, "crop_n_points_downscale_factor": 1,
        "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0, "points_per_batch": 16, "num_workers": 0,
        "in_memory": True, "chip_nms_thr": 0.7, "mask_nms_thr": 0.5,
    },
}  # fmt: skip


CHECK_TASK = {"segment_s2": "check-prompted-inputs", "auto_segment_s2": "check-auto-inputs"}


def load(path: Path) -> list[dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0].pop("sdkVersion", None)  # the kfp release that compiled it, not the pipeline
    return docs


def test_checked_in_yaml_is_current(tmp_path):
    fresh = compile_pipelines(tmp_path)
    assert sorted(p.name for p in COMPILED_DIR.glob("*.yaml")) == sorted(p.name for p in fresh)
    for path in fresh:
        assert load(path) == load(COMPILED_DIR / path.name), (
            f"pipelines/compiled/{path.name} is stale: run `s2sam compile` and commit it"
        )


@pytest.fixture(scope="module", params=sorted(DEFINITIONS))
def spec(request):
    return request.param, load(COMPILED_DIR / f"{request.param}.yaml")[0]


def kubernetes(name: str, path: Path = COMPILED_DIR) -> dict:
    """The Kubernetes platform config of each executor (the YAML's second document)."""
    docs = load(path / f"{name}.yaml")
    assert len(docs) == 2, f"{name}.yaml has no platform spec"
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def env_secrets(config: dict) -> dict[str, tuple[str, bool]]:
    """env var -> (secret name, optional) of one executor."""
    return {
        m["envVar"]: (ref["secretName"], ref["optional"])
        for ref in config.get("secretAsEnv", [])
        for m in ref["keyToEnv"]
    }


def executors(doc):
    return doc["deploymentSpec"]["executors"]


def test_every_executor_runs_the_versioned_image(spec):
    _name, doc = spec
    images = {e["container"]["image"] for e in executors(doc).values()}
    allowed = {image("cpu"), image("gpu"), image("export")}
    assert images and images <= allowed, images
    for e in executors(doc).values():
        # install_kfp_package=False: the image has kfp; nothing is pip-installed at run time
        assert "pip install" not in " ".join(e["container"]["command"])


def test_inference_tasks_request_a_gpu(spec):
    name, doc = spec
    if name == "export_sam":
        return
    gpu = {k: e for k, e in executors(doc).items() if e["container"]["image"] == image("gpu")}
    assert gpu, "no inference executor"
    for e in gpu.values():
        accelerator = e["container"]["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu"
        assert str(accelerator["resourceCount"]) == "1"
    cpu = [e for e in executors(doc).values() if e["container"]["image"] == image("cpu")]
    assert all("accelerator" not in e["container"].get("resources", {}) for e in cpu)


def test_farmvibes_parameters_with_their_defaults(spec):
    name, doc = spec
    inputs = doc["root"]["inputDefinitions"]["parameters"]
    for param, default in FARMVIBES.get(name, {}).items():
        assert param in inputs, param
        assert inputs[param]["defaultValue"] == default, param
    for param, definition in inputs.items():
        assert definition.get("description"), f"{name}.{param} has no description for the UI"


def test_ingest_retries_and_the_dag_shape(spec):
    name, doc = spec
    if name == "export_sam":
        return
    tasks = doc["root"]["dag"]["tasks"]
    deps = {k: set(v.get("dependentTasks", [])) for k, v in tasks.items()}
    check = CHECK_TASK[name]
    assert deps[check] == set()  # runs first: bad input fails before heavy work
    assert deps["resolve-model"] == deps["ingest-s2"] == {check}
    assert tasks["ingest-s2"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["ingest-s2"]["retryPolicy"]["backoffDuration"] == "60s"
    assert deps["plan-chips"] == {"ingest-s2", "resolve-model", check}
    assert "parameterIterator" in tasks["for-loop-1"]  # the fan-out over chip shards
    assert deps["merge-masks"] == {"for-loop-1", "ingest-s2", "resolve-model", "plan-chips", check}
    sinks = doc["root"]["outputDefinitions"]["artifacts"]
    assert set(sinks) == {"s2_raster", "segmentation_mask", "polygons", "fields"}
    assert all(
        t["cachingOptions"].get("enableCache", True)
        for k, t in tasks.items()
        if "cachingOptions" in t
    )


def test_no_secret_in_compiled_yaml():
    """Secrets are referenced by name (secretAsEnv), never set as values or parameters."""
    for path in COMPILED_DIR.glob("*.yaml"):
        doc = load(path)[0]
        for e in executors(doc).values():
            names = {v["name"] for v in e["container"].get("env", [])}
            assert not names & {"PC_SDK_SUBSCRIPTION_KEY", "MLFLOW_TRACKING_URI"}, path.name
            assert not any("PASSWORD" in n or "TOKEN" in n for n in names), path.name
        assert "subscription-key" not in path.read_text().lower()


@pytest.mark.parametrize("name", ["segment_s2", "auto_segment_s2"])
def test_kubernetes_settings_of_each_task(name):
    k8s = kubernetes(name)
    doc = load(COMPILED_DIR / f"{name}.yaml")[0]
    inference = "exec-segment-shard"
    gpu = k8s[inference]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}.items() <= (
        gpu["tolerations"][0].items()
    )
    assert env_secrets(gpu)["MLFLOW_TRACKING_URI"] == ("s2sam-mlflow", False)
    assert env_secrets(gpu)["MLFLOW_TRACKING_PASSWORD"] == ("s2sam-mlflow", True)
    assert gpu["emptyDirMounts"][0]["mountPath"] == "/var/cache/s2sam"
    resources = executors(doc)[inference]["container"]["resources"]
    assert resources["resourceMemoryRequest"] == "8Gi" and resources["resourceCpuRequest"] == "4"
    # Only ingest sees the Planetary Computer key, and only it may run without one.
    assert env_secrets(k8s["exec-ingest-s2"]) == {
        "PC_SDK_SUBSCRIPTION_KEY": ("s2sam-planetary-computer", True)
    }
    assert "MLFLOW_TRACKING_URI" in env_secrets(k8s["exec-resolve-model"])
    for task in (f"exec-{CHECK_TASK[name]}", "exec-plan-chips", "exec-merge-masks"):
        assert env_secrets(k8s[task]) == {}, task
        assert "tolerations" not in k8s[task], task
    assert all(int(c["activeDeadlineSeconds"]) > 0 for c in k8s.values())
    merge = executors(doc)["exec-merge-masks"]["container"]["resources"]
    assert merge["resourceMemoryLimit"] == "8Gi"


def test_compile_a_clusters_own_copy(tmp_path, capsys):
    from pipelines.cli import main

    settings = tmp_path / "cluster.yaml"
    settings.write_text(
        "gpu_node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}\n"
        "cache_pvc: s2sam-cache\n"
        "resources: {inference: {memory_limit: 64Gi}}\n"
    )
    assert main(["compile", "--settings", str(settings)]) == 2
    assert "--output-dir" in capsys.readouterr().err
    out = tmp_path / "compiled"
    assert main(["compile", "--settings", str(settings), "--output-dir", str(out)]) == 0
    k8s = kubernetes("auto_segment_s2", out)
    gpu = k8s["exec-segment-shard"]
    assert gpu["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert gpu["pvcMount"][0]["mountPath"] == "/var/cache/s2sam"
    assert "emptyDirMounts" not in gpu
    doc = load(out / "auto_segment_s2.yaml")[0]
    assert (
        executors(doc)["exec-segment-shard"]["container"]["resources"]["resourceMemoryLimit"]
        == "64Gi"
    )
    settings.write_text("gpu_tolerations: oops\n")
    out2 = tmp_path / "bad"
    assert main(["compile", "--settings", str(settings), "--output-dir", str(out2)]) == 2
    assert "cluster settings file" in capsys.readouterr().err
    assert not out2.exists()
