import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.inference import backends

pytest.importorskip("torch", reason="model export needs the [export] extra")
pytest.importorskip("mlflow")

S2SAM = Path(sys.executable).parent / "s2sam"


def run(*args, env):
    return subprocess.run([S2SAM, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def fresh_env(tmp_path):
    """A laptop with nothing: no MLflow server, no registry, no cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "S2SAM_"))}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME="", XDG_CACHE_HOME="")
    return env


def test_export_then_list_on_a_fresh_install(fresh_env, tmp_path):
    out = run(
        "export-model",
        "--model-type",
        "vit_tiny",
        "--random-weights",
        "--seed",
        "0",
        "--model-name",
        "sam-vit_tiny-test",
        env=fresh_env,
    )
    assert out.returncode == 0, out.stderr
    assert "registered sam-vit_tiny-test version 1" in out.stdout
    assert "alias 'champion' not set" in out.stdout  # random weights never become champion
    assert "[torch.onnx]" not in out.stdout
    assert (tmp_path / ".local" / "share" / "s2sam" / "mlflow.db").is_file()

    out = run(
        "export-model",
        "--model-type",
        "vit_tiny",
        "--random-weights",
        "--seed",
        "1",
        "--model-name",
        "sam-vit_tiny-test",
        "--alias",
        "candidate",
        "--int8",
        env=fresh_env,
    )
    assert out.returncode == 0, out.stderr
    assert "alias candidate -> version 2" in out.stdout
    out_export = out.stdout

    out = run("models", "list", env=fresh_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:7] == [
        "NAME", "VERSION", "ALIASES", "FAMILY", "TYPE", "WEIGHTS", "SOURCE"
    ]  # fmt: skip
    assert lines[1].split()[:7] == [
        "sam-vit_tiny-test", "2", "candidate", "sam", "vit_tiny", "random", "seed=1"
    ]  # fmt: skip
    assert lines[2].split()[:7] == [
        "sam-vit_tiny-test", "1", "-", "sam", "vit_tiny", "random", "seed=0"
    ]  # fmt: skip
    # the precisions each version may run in, with bf16's agreement measured at export
    assert lines[0].split()[-1] == "PRECISIONS"
    bf16 = backends.openvino_installed() and backends.openvino_bf16()
    for line in lines[1:]:
        assert line.split()[8].rstrip(",") == "fp32"
        # (int8 has its agreement too; on a CPU without bf16 it is the only one listed)
        assert ("bf16 (mask IoU" in line) == bf16, line
    assert ("bf16 vs fp32: embedding RMS error" in out_export) == bf16
    # version 2 was exported with --int8: measured, whether kept or not
    assert "int8 vs fp32: embedding RMS error" in out_export
    assert "int8" in lines[1].split("fp32, ")[-1] and "int8" not in lines[2]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model-type", "vit_x", "--random-weights", "--seed", "0"],
            "unknown model type 'vit_x'",
        ),
        (["--model-type", "vit_tiny", "--checkpoint", "/nope.pth"], "/nope.pth does not exist"),
        (["--model-type", "vit_tiny", "--random-weights"], "needs --seed"),
        (["--model-type", "vit_tiny", "--seed", "1"], "--seed only applies"),
        (["--model-type", "vit_tiny", "--calibration", "a.tif"], "--calibration only applies"),
        (
            ["--model-type", "vit_tiny", "--int8", "--calibration-bands", "4,3,2"],
            "--calibration-bands only applies with --calibration",
        ),
        (["--model-type", "vit_tiny", "--calibration-bands", "4,3"], "three 1-based band"),
        (
            [
                "--model-type",
                "vit_tiny",
                "--random-weights",
                "--seed",
                "0",
                "--int8",
                "--calibration",
                "/nope.tif",
            ],
            "calibration raster /nope.tif does not exist",
        ),
        (["--model-type", "vit_tiny"], "no published checkpoint"),
    ],
)
def test_bad_input_is_one_clear_line(fresh_env, args, message):
    out = run("export-model", *args, env=fresh_env)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_empty_registry_listing(fresh_env):
    out = run("models", "list", env=fresh_env)
    assert out.returncode == 0 and "no SAM models registered" in out.stdout
