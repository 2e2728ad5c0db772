"""The CPU image, built for real with podman through ``make images``, then run.

Checks what a cluster relies on: the tag is ``components.images.image("cpu")``, the
image holds this package at that version, runs as a non-root user, has no pip left,
imports the runtime stack, and runs a KFP lightweight component exactly as the compiled
pipeline's container command does (``python3 -m kfp.dsl.executor_main``), writing its
output artifact under ``/minio`` as that user.

Expensive (a Debian rootfs by debootstrap and a pip install from PyPI: minutes): the
``cpu_image`` fixture (``tests/fixtures/podman.py``) builds once, in the background
from the end of collection; skipped with the reason where podman cannot run.
"""

# No ``from __future__ import annotations``: KFP reads the component's real types.
import json

import pytest
from kfp import dsl

from components.core.chips import chip_grid
from components.images import REGISTRY_ENV, image
from components.version import __version__
from tests.fixtures.podman import TEST_REGISTRY

pytestmark = pytest.mark.slow


def test_make_images_tags_with_the_package_version(cpu_image, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, TEST_REGISTRY)
    assert cpu_image == image("cpu")


def test_image_holds_this_version_as_non_root_without_pip(podman, cpu_image):
    assert podman.run(cpu_image, "s2sam", "--version").strip() == f"s2sam {__version__}"
    assert podman.run(cpu_image, "id", "-u").strip() == "1000"
    out = podman.run(
        cpu_image,
        "python3",
        "-c",
        "import importlib.util as u, shutil, components.io.ingest, components.inference.onnx_sam, "
        "components.io.registry, components.io.outputs, onnxruntime as ort; "
        "from components.inference.backends import choose_engine; "
        "print(shutil.which('python3'), u.find_spec('pip') is None, "
        "ort.get_available_providers()[-1], choose_engine().backend)",
    )
    python, no_pip, provider, backend = out.split()
    assert python == "/opt/s2sam/bin/python3"
    assert no_pip == "True"
    assert provider == "CPUExecutionProvider"
    assert backend == "openvino"  # the CPU image's automatic choice


@dsl.component(base_image=image("cpu"), install_kfp_package=False)
def count_chips(
    height: int, width: int, spatial_overlap: float, grid: dsl.Output[dsl.Dataset]
) -> int:
    """Lay out a scene's chip grid with the library in the image."""
    import json as json_

    from components.core.chips import chip_grid as grid_of

    chips = grid_of(height, width, spatial_overlap=spatial_overlap)
    with open(grid.path, "w") as f:
        json_.dump([[c.row, c.col] for c in chips], f)
    grid.metadata["chips"] = len(chips)
    return len(chips)


def test_kfp_component_runs_in_the_image(podman, cpu_image, tmp_path):
    """The container command of the compiled component, with a KFP executor input."""
    container = count_chips.component_spec.implementation.container
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by uid 1000
    executor_input = {
        "inputs": {"parameterValues": {"height": 10980, "width": 10980, "spatial_overlap": 0.5}},
        "outputs": {
            "parameters": {"Output": {"outputFile": "/tmp/kfp/outputs/Output"}},
            "artifacts": {
                "grid": {
                    "artifacts": [
                        {
                            "name": "grid",
                            "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
                            "uri": "minio://mlpipeline/v2/artifacts/s2sam-test/grid",
                            "metadata": {},
                        }
                    ]
                }
            },
            "outputFile": "/out/executor_output.json",
        },
    }
    args = [a.replace("{{$}}", json.dumps(executor_input)) for a in container.args]
    podman.run(
        cpu_image,
        *container.command,
        *args,
        extra=("--volume", f"{out}:/out"),
    )
    expected = len(chip_grid(10980, 10980, spatial_overlap=0.5))
    assert expected == 441
    executor_output = json.loads((out / "executor_output.json").read_text())
    assert executor_output["parameterValues"]["Output"] == expected
    grid = executor_output["artifacts"]["grid"]["artifacts"][0]
    assert grid["metadata"]["chips"] == expected
    assert grid["uri"] == "minio://mlpipeline/v2/artifacts/s2sam-test/grid"
