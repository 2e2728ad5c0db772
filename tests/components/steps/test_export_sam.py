import pytest

pytest.importorskip("torch", reason="model export needs the [export] extra")
pytest.importorskip("mlflow")

from kfp import local

from components.images import image
from components.io.registry import resolve_model
from components.steps.export_sam import export_sam
from components.version import __version__


def test_export_sam_component_on_kfp_local(local_registry, tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = export_sam(
        model_type="vit_tiny",
        random_weights=True,
        seed=0,
        alias="candidate",
        model_name="sam-vit_tiny-kfp",
    )
    assert task.outputs["Output"] == "models:/sam-vit_tiny-kfp/1"
    meta = task.outputs["model"].metadata
    assert meta["model_version"] == "1" and meta["alias"] == "candidate"
    assert meta["weights"] == "random" and meta["parity_mask_agreement_min"] >= 0.99
    assert resolve_model("models:/sam-vit_tiny-kfp@candidate").version == "1"


def test_component_image_is_the_versioned_export_image():
    spec = export_sam.component_spec
    assert spec.implementation.container.image == image("export")
    assert image("export").endswith(f"/s2sam-export:{__version__}")
