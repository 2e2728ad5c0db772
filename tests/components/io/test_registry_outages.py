"""MLflow outages end in one clear line within a bound; a cached version asked for by number
is used while the server is down; a tracking URI's password never reaches a message."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.errors import ModelNotFoundError, ServiceError

pytest.importorskip("mlflow")

from components.io.registry import client, list_models, register_model, resolve_model
from tests.fixtures.mlflow_server import free_port, loopback_server

SECRET = "s3cr3t-pw"
USERINFO = f"ci-user:{SECRET}"
FAST = {  # one retry of 2 s: each outage below ends within a few seconds
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
}
BOUND_S = 20.0
"""Generous for a loaded machine: the settings above need about 4 s at most."""


@pytest.fixture
def fast_mlflow(monkeypatch, tmp_path):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S2SAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def failing(call):
    """(error, seconds) of a call that must raise ServiceError."""
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        call()
    return info.value, time.monotonic() - started


def assert_clear(err, seconds, url, reason):
    message = str(err)
    assert seconds < BOUND_S, (seconds, message)
    assert "\n" not in message and SECRET not in message
    assert f"MLflow at http://<redacted>@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert reason in message, message


@pytest.mark.parametrize(
    "mode,reason",
    [
        ("stopped", "connection refused"),
        ("hang", "timed out"),
        ("close", "connection closed without an answer"),
        ("503", "HTTP 503 on every attempt"),
    ],
)
def test_an_outage_is_one_line_within_the_bound(fast_mlflow, monkeypatch, caplog, mode, reason):
    with loopback_server("hang" if mode == "stopped" else mode) as server:
        if mode == "stopped":
            server.stop()
        url = server.url(USERINFO)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        for call in (
            lambda: resolve_model("models:/sam-down@champion"),
            lambda: resolve_model("models:/sam-down/3"),  # by number, but nothing cached
            list_models,
        ):
            err, seconds = failing(call)
            assert_clear(err, seconds, url, reason)
            assert "gave up after" in str(err)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_the_default_bound_is_under_a_minute(monkeypatch):
    for key in (*FAST, "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    client()
    timeout = int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = int(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    # urllib3: no wait before the first retry, factor * 2**(k-1) (+ <= 1 s jitter) after
    waits = sum(factor * 2 ** (k - 1) + 1 for k in range(2, retries + 1))
    assert (retries + 1) * timeout + waits <= 60


def test_a_cached_version_by_number_is_used_while_the_server_is_down(
    tiny_export, mlflow_server_url, fast_mlflow, monkeypatch, caplog
):
    upstream = mlflow_server_url.removeprefix("http://")
    with loopback_server("forward", upstream) as proxy:
        url = proxy.url(USERINFO)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        reg = register_model(tiny_export, "sam-offline", "champion", alias_explicit=True)
        online = resolve_model(reg.uri)
        assert SECRET not in (online.directory / ".s2sam-registry.json").read_text()
        proxy.stop()  # the same address, now refusing connections

        caplog.set_level(logging.WARNING)
        started = time.monotonic()
        offline = resolve_model(reg.uri)
        assert time.monotonic() - started < BOUND_S
        assert (offline.directory, offline.version, offline.manifest) == (
            online.directory,
            reg.version,
            online.manifest,
        )
        warning = next(r.getMessage() for r in caplog.records if "cached copy" in r.getMessage())
        assert "did not answer (connection refused" in warning and reg.uri in warning
        assert SECRET not in warning and "<redacted>@127.0.0.1" in warning

        # an alias or latest needs the server
        for uri in ("models:/sam-offline@champion", "models:/sam-offline/latest"):
            assert_clear(*failing(lambda u=uri: resolve_model(u)), url, "connection refused")
        # a copy from another registry, or one that no longer verifies, is not used
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        failing(lambda: resolve_model(reg.uri))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        (offline.directory / "decoder.onnx").write_bytes(b"tampered")
        assert_clear(*failing(lambda: resolve_model(reg.uri)), url, "connection refused")


def test_a_password_in_the_tracking_uri_is_never_shown(
    tiny_export, mlflow_server_url, fast_mlflow, monkeypatch, caplog
):
    url = mlflow_server_url.replace("http://", f"http://{USERINFO}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    register_model(tiny_export, "sam-pw", "champion", alias_explicit=True)
    with pytest.raises(ModelNotFoundError, match=r"in http://<redacted>@127\.0\.0\.1") as info:
        resolve_model("models:/sam-nope-pw@champion")  # MLflow's 404, not an outage
    assert SECRET not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="no version 99") as info:
        resolve_model("models:/sam-pw/99")
    assert resolve_model("models:/sam-pw@champion").name == "sam-pw"
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_export_fails_before_exporting_when_the_registry_is_down(
    fast_mlflow, monkeypatch, tmp_path
):
    pytest.importorskip("torch", reason="model export needs the [export] extra")
    from model_export.register import export_and_register
    from model_export.weights import WeightsSource

    url = f"http://{USERINFO}@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    weights = WeightsSource(random_weights=True, seed=0)
    out = tmp_path / "out"
    err, seconds = failing(lambda: export_and_register("vit_tiny", weights, output_dir=out))
    assert_clear(err, seconds, url, "connection refused")
    assert not out.exists()  # nothing exported for nothing


def test_models_list_fails_within_the_bound_as_one_line(tmp_path):
    with loopback_server("hang") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "S2SAM_"))}
        env.update(FAST, MLFLOW_TRACKING_URI=server.url(USERINFO), HOME=str(tmp_path))
        started = time.monotonic()
        out = subprocess.run(
            [Path(sys.executable).parent / "s2sam", "models", "list"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        seconds = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not answer (timed out" in lines[0], out.stderr
    assert seconds < BOUND_S + 30  # the CLI's own start-up on a loaded machine
