"""Shared fixtures: where the real sample data lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE_SHARED_DATA = "S2SAM_REQUIRE_SHARED_DATA"
"""Set to 1 (CI does) so tests of the real sample data fail, not skip, when it is absent."""


def shared_data_dir() -> Path | None:
    """``$S2SAM_SHARED_DATA`` or ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("S2SAM_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def missing_shared_data(what: str) -> NoReturn:
    """Skip a test whose real sample data is absent, or fail it where the data is required."""
    reason = f"{what} not found: set S2SAM_SHARED_DATA or provide ../shared/data"
    if os.environ.get(REQUIRE_SHARED_DATA) == "1":
        pytest.fail(f"{reason} (${REQUIRE_SHARED_DATA}=1: this run must have it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder (see :func:`missing_shared_data` when it is absent)."""
    path = shared_data_dir()
    if path is None:
        missing_shared_data("real sample data folder")
    return path


@pytest.fixture(scope="session")
def shared_file(shared_data: Path):  # type: ignore[no-untyped-def]
    """A file of the sample data, by relative path; absent is a skip or a failure as above."""

    def get(relative: str) -> Path:
        path = shared_data / relative
        if not path.exists():
            missing_shared_data(f"sample file {relative}")
        return path

    return get


# The loopback STAC API and COG host (session fixtures, started on first use); podman
# and the CPU image, built in the background once an image test is collected.
pytest_plugins = ["tests.fixtures.stac", "tests.fixtures.podman"]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vit_tiny with seeded random weights, exported through the real export path."""
    pytest.importorskip("torch", reason="model export needs the [export] extra (torch)")
    pytest.importorskip("segment_anything", reason="model export needs segment-anything")
    from model_export.export import run_export
    from model_export.weights import WeightsSource

    out = tmp_path_factory.mktemp("tiny") / "model"
    run_export("vit_tiny", out, WeightsSource(random_weights=True, seed=0))
    return out


@pytest.fixture(scope="session")
def variants_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vit_tiny with every optional part an export can add: an fp16 and an int8 encoder,
    and external data (vit_h's encoder is over ONNX's 2 GB limit). One export for the
    tests of each part: an export costs over a minute of CI."""
    pytest.importorskip("torch", reason="model export needs the [export] extra (torch)")
    pytest.importorskip("segment_anything", reason="model export needs segment-anything")
    from model_export.export import ExportOptions, run_export
    from model_export.weights import WeightsSource

    out = tmp_path_factory.mktemp("variants") / "model"
    options = ExportOptions(fp16=True, int8=True, force_external_data=True)
    run_export("vit_tiny", out, WeightsSource(random_weights=True, seed=0), options)
    return out


@pytest.fixture(scope="session")
def sam2_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SAM 2.1 Hiera tiny with seeded random weights, through the real export path."""
    pytest.importorskip("torch", reason="model export needs the [export] extra (torch)")
    pytest.importorskip("sam2", reason="SAM 2 export needs the sam2 package ([export] extra)")
    from model_export.export import run_export
    from model_export.weights import WeightsSource

    out = tmp_path_factory.mktemp("sam2") / "model"
    run_export("sam2.1_hiera_tiny", out, WeightsSource(random_weights=True, seed=0))
    return out


@pytest.fixture(scope="session")
def fields_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SAM trained on synthetic fields (tests/data/fields), through the real export path,
    with an int8 encoder calibrated on a training-seed scene (never a held-out one)."""
    pytest.importorskip("torch", reason="model export needs the [export] extra (torch)")
    pytest.importorskip("segment_anything", reason="model export needs segment-anything")
    from model_export.export import ExportOptions, run_export
    from model_export.weights import WeightsSource
    from tests.data.fields.data import make_scene, write_s2_geotiff
    from tests.data.fields.model import CHECKPOINT, MODEL_TYPE

    folder = tmp_path_factory.mktemp("fields")
    calibration = write_s2_geotiff(make_scene(7, 1024, 2048), folder / "calibration.tif")
    options = ExportOptions(int8=True, calibration=(calibration,))
    run_export(MODEL_TYPE, folder / "model", WeightsSource(checkpoint=CHECKPOINT), options)
    return folder / "model"


@pytest.fixture
def local_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh embedded MLflow store (sqlite) and model cache, as on a new laptop."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("S2SAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("S2SAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="session")
def mlflow_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 for the whole session."""
    pytest.importorskip("mlflow")
    from tests.fixtures.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
