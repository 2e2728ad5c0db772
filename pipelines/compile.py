"""Compile the pipelines to the YAML that Kubeflow's UI and API take.

The compiled files are checked in beside the code that makes them
(``pipelines/compiled/``); a test fails when they are stale.
"""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from pipelines.cluster_settings import ClusterSettings
from pipelines.definitions import cluster_pipelines

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def compile_pipelines(
    output_dir: Path = COMPILED_DIR, settings: ClusterSettings | None = None
) -> list[Path]:
    """Write ``<name>.yaml`` for every pipeline; returns the paths written.

    ``settings``: the cluster's Kubernetes settings; default: the defaults, which is
    what the checked-in files hold.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in cluster_pipelines(settings).items():
        path = output_dir / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        written.append(path)
    return written
