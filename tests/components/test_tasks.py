"""The KFP components (``components.tasks``): their images, interfaces, and runs on kfp.local."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import rasterio

from components import tasks
from components.core.params import PIPELINE_PARAMETERS, DateWindow, PipelineRequest, SearchParams
from components.core.records import to_json
from components.images import image
from components.version import __version__
from pipelines.definitions import DEFINITIONS
from tests.fixtures.s2_world import roi

IMAGE_OF_TASK = {"segment_shard": "gpu", "export_sam": "export"}
"""Tasks that do not run in the CPU image, and the image they need."""


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_each_task_runs_in_the_image_of_this_version(name):
    kind = IMAGE_OF_TASK.get(name, "cpu")
    container = tasks.TASKS[name].component_spec.implementation.container
    assert container.image == image(kind)
    assert container.image.rsplit(":", 1) == [container.image.rsplit(":", 1)[0], __version__]
    assert f"/s2sam-{kind}:" in container.image


@pytest.mark.parametrize(
    "pipeline,check",
    [("segment_s2", "check_prompted_inputs"), ("auto_segment_s2", "check_auto_inputs")],
)
def test_the_check_task_takes_every_pipeline_parameter(pipeline, check):
    taken = set(inspect.signature(DEFINITIONS[pipeline].function).parameters)
    inputs = set(tasks.TASKS[check].component_spec.inputs)
    assert inputs == taken
    assert inputs <= set(PIPELINE_PARAMETERS)


def test_task_parameters_have_no_defaults_the_pipelines_pass_every_value():
    for name, component in tasks.TASKS.items():
        for input_name, spec in (component.component_spec.inputs or {}).items():
            assert spec.default is None, f"{name}.{input_name} has a default"


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_ingest_runs_in_kfp_local(stac, tmp_path, monkeypatch):
    from kfp import local

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    request = PipelineRequest(
        geometry=json.dumps(roi("single")),
        dates=DateWindow(start_date="2023-05-01", end_date="2023-05-31"),
        search=SearchParams(max_cloud_cover=100.0, strategy="all", max_roi_cloud_fraction=0.3),
        stac_url=stac.url,
    )
    task = tasks.ingest_s2(request=to_json(request), schedule_time="")
    assert task.outputs["Output"] == 3
    scenes = task.outputs["scenes"]
    assert scenes.metadata["acquisitions"] == [
        "S2B_20230502_R022",
        "S2B_20230512_R022",
        "S2A_20230515_R122",
    ]
    folder = Path(scenes.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["file"] for s in manifest["scenes"]] == [
        f"{k}.tif" for k in scenes.metadata["acquisitions"]
    ]
    with rasterio.open(folder / manifest["scenes"][0]["file"]) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 3


def test_export_sam_runs_in_kfp_local(local_registry, tmp_path):
    pytest.importorskip("torch", reason="model export needs the [export] extra")
    from kfp import local

    from components.io.registry import resolve_model

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = tasks.export_sam(
        model_type="vit_tiny", checkpoint="", random_weights=True, seed=0, fp16=False, int8=False,
        alias="candidate", model_name="sam-vit_tiny-kfp",
    )  # fmt: skip
    assert task.outputs["Output"] == "models:/sam-vit_tiny-kfp/1"
    meta = task.outputs["model"].metadata
    assert meta["model_version"] == "1" and meta["alias"] == "candidate"
    assert meta["weights"] == "random" and meta["parity_mask_agreement_min"] >= 0.99
    assert resolve_model("models:/sam-vit_tiny-kfp@candidate").version == "1"
