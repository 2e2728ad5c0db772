"""The compiled pipelines: checked in, current, and what a cluster needs."""

from pathlib import Path

import pytest
import yaml

from components.images import image
from pipelines.compile import COMPILED_DIR, compile_pipelines
from pipelines.definitions import PIPELINES

FARMVIBES = {
    "segment_s2": {"model_type": "vit_b", "spatial_overlap": 0.5, "pc_key": ""},
    "auto_segment_s2": {
        "model_type": "vit_b", "spatial_overlap": 0.5, "points_per_side": 16,
        "n_crop_layers": 0, "crop_overlap_ratio": 0.0, "crop_n_points_downscale_factor": 1,
        "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0, "points_per_batch": 16, "num_workers": 0,
        "in_memory": True, "chip_nms_thr": 0.7, "mask_nms_thr": 0.5, "pc_key": "",
    },
}  # fmt: skip


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc.pop("sdkVersion", None)  # the kfp release that compiled it, not the pipeline
    return doc


def test_checked_in_yaml_is_current(tmp_path):
    fresh = compile_pipelines(tmp_path)
    assert sorted(p.name for p in COMPILED_DIR.glob("*.yaml")) == sorted(p.name for p in fresh)
    for path in fresh:
        assert load(path) == load(COMPILED_DIR / path.name), (
            f"pipelines/compiled/{path.name} is stale: run `s2sam compile` and commit it"
        )


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def spec(request):
    return request.param, yaml.safe_load((COMPILED_DIR / f"{request.param}.yaml").read_text())


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
    assert deps["check-inputs"] == set()  # runs first: bad input fails before heavy work
    assert deps["resolve-model"] == deps["ingest-s2"] == {"check-inputs"}
    assert tasks["ingest-s2"]["retryPolicy"]["maxRetryCount"] == 3
    assert deps["plan-chips"] == {"ingest-s2", "resolve-model"}
    assert "parameterIterator" in tasks["for-loop-1"]  # the fan-out over chip shards
    assert deps["merge-masks"] == {"for-loop-1", "ingest-s2", "resolve-model"}
    sinks = doc["root"]["outputDefinitions"]["artifacts"]
    assert set(sinks) == {"s2_raster", "segmentation_mask", "polygons"}
    assert all(
        t["cachingOptions"].get("enableCache", True)
        for k, t in tasks.items()
        if "cachingOptions" in t
    )


def test_no_secret_in_compiled_yaml():
    for path in COMPILED_DIR.glob("*.yaml"):
        text = path.read_text().lower()
        assert "subscription-key" not in text and "password" not in text
