"""The ``ingest_s2`` KFP component, run by ``kfp.local`` against the loopback STAC API."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import rasterio

from components.io.ingest import ingest_s2 as library
from components.steps.ingest_s2 import BASE_IMAGE, ingest_s2
from components.version import __version__
from tests.fixtures.s2_world import roi


def test_component_interface_mirrors_the_library():
    spec = ingest_s2.component_spec
    inputs = spec.inputs
    library_defaults = inspect.signature(library).parameters
    for name in ("bands", "max_cloud_cover", "max_roi_cloud_fraction", "strategy", "max_scenes"):
        default = library_defaults[name].default
        default = ",".join(default) if isinstance(default, tuple) else default
        assert inputs[name].default == default, name
    # FarmVibes' pc_key is accepted but empty by default: the key comes from a secret
    assert inputs["pc_key"].default == ""
    assert spec.implementation.container.image == BASE_IMAGE
    assert BASE_IMAGE.endswith(f":{__version__}")


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_component_runs_in_kfp_local(stac, tmp_path, monkeypatch):
    from kfp import local

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = ingest_s2(
        geometry=json.dumps(roi("single")),
        start_date="2023-05-01",
        end_date="2023-05-31",
        max_cloud_cover=100.0,
        strategy="all",
        max_roi_cloud_fraction=0.3,
        stac_url=stac.url,
    )
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
