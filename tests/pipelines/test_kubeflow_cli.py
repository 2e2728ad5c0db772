# No ``from __future__ import annotations``: KFP reads the components' real types.
import json
import socket
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from kfp import compiler, dsl

from components.errors import InputError
from components.version import __version__
from pipelines import compiled_package
from pipelines.cli import main
from pipelines.schedules import interval_seconds, kfp_cron
from tests.fixtures.kfp_server import API, fake_kfp

TOKEN = "kfp-token-5e1f0a9c2b7d4e38"
PC_KEY = "pc-subscription-key-77aa00bb11cc22dd"
GEOJSON = json.dumps(
    {
        "type": "Polygon",
        "coordinates": [[[16.3, 48.2], [16.31, 48.2], [16.31, 48.21], [16.3, 48.2]]],
    }
)


@dsl.component(base_image="localhost/s2sam-cpu:test", install_kfp_package=False)
def ingest_s2(
    geometry: str,
    scenes: dsl.Output[dsl.Dataset],
    start_date: str = "",
    end_date: str = "",
    lookback_days: int = 0,
    reference_time: str = "",
    windows: str = "",
) -> int:
    return 1


@dsl.component(base_image="localhost/s2sam-cpu:test", install_kfp_package=False)
def segment(
    scenes: dsl.Input[dsl.Dataset],
    mask: dsl.Output[dsl.Dataset],
    points_per_side: int,
    pred_iou_thresh: float,
    in_memory: bool,
):
    pass


class Sinks(NamedTuple):
    s2_raster: dsl.Dataset
    segmentation_mask: dsl.Dataset


@dsl.pipeline(name="auto-segment-s2", description="test stand-in for auto_segment_s2")
def auto_segment_s2(
    geometry: str,
    start_date: str = "",
    end_date: str = "",
    lookback_days: int = 0,
    reference_time: str = "",
    windows: str = "",
    points_per_side: int = 16,
    pred_iou_thresh: float = 0.88,
    in_memory: bool = True,
) -> Sinks:
    """The parameter contract of the real pipelines: a schedule sets only lookback_days."""
    scenes = ingest_s2(
        geometry=geometry,
        start_date=start_date,
        end_date=end_date,
        lookback_days=lookback_days,
        reference_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER,
        windows=windows,
    )
    masks = segment(
        scenes=scenes.outputs["scenes"],
        points_per_side=points_per_side,
        pred_iou_thresh=pred_iou_thresh,
        in_memory=in_memory,
    )
    return Sinks(scenes.outputs["scenes"], masks.outputs["mask"])


@dsl.pipeline(name="no-window")
def no_window(model_type: str = "vit_b") -> None:
    ingest_s2(geometry=model_type)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compiled")
    compiler.Compiler().compile(auto_segment_s2, str(folder / "auto_segment_s2.yaml"))
    compiler.Compiler().compile(no_window, str(folder / "no_window.yaml"))
    return folder


@pytest.fixture
def kfp(monkeypatch, compiled):
    """The fake KFP API with a token, and secrets in this process's environment."""
    monkeypatch.setattr(compiled_package, "COMPILED_DIR", compiled)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", PC_KEY)
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    with fake_kfp() as fake:
        fake.token = TOKEN
        fake.task_outputs = {
            "ingest-s2": {"scenes": "minio://mlpipeline/v2/artifacts/run/ingest-s2/scenes"},
            "segment": {"mask": "minio://mlpipeline/v2/artifacts/run/segment/mask"},
        }
        yield fake


def assert_no_secret_in_bodies(fake):
    assert fake.requests
    for r in fake.requests:
        sent = r.body + json.dumps(r.query).encode() + b"".join(r.files.values())
        assert TOKEN.encode() not in sent, f"token in {r.method} {r.path}"
        assert PC_KEY.encode() not in sent, f"PC key in {r.method} {r.path}"
        assert PC_KEY not in json.dumps(r.headers)
        if "Authorization" in r.headers:
            assert r.headers["Authorization"] == f"Bearer {TOKEN}"


def test_submit_uploads_the_compiled_spec_and_starts_a_typed_run(kfp, compiled, tmp_path, capsys):
    area = tmp_path / "farm.geojson"
    area.write_text(GEOJSON)
    params = tmp_path / "params.yaml"
    params.write_text("start_date: '2023-06-01'\nend_date: '2023-06-30'\npred_iou_thresh: 0.9\n")
    code = main(
        [
            "submit",
            "--host", kfp.url,
            "--pipeline", "auto-segment-s2",
            "--params", str(params),
            "--param", f"geometry=@{area}",
            "--param", "points_per_side=32",
            "--param", "in_memory=false",
            "--experiment", "farms",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    (run_id,) = kfp.runs
    assert out.strip() == f"{kfp.url}/#/runs/details/{run_id}"
    assert f"version {__version__} (uploaded)" in err
    # the compiled spec, byte for byte, as a version named after the package version
    (upload,) = kfp.calls("POST", "/pipelines/upload_version")
    assert upload.files["uploadfile"] == (compiled / "auto_segment_s2.yaml").read_bytes()
    assert upload.query["name"] == [__version__]
    (version,) = kfp.versions.values()
    assert version["display_name"] == __version__
    assert (
        compiled_package.load_package(compiled / "auto_segment_s2.yaml").sha256
        in version["description"]
    )
    (pipeline,) = kfp.pipelines.values()
    assert pipeline["display_name"] == "auto-segment-s2"
    (experiment,) = kfp.experiments.values()
    assert experiment["display_name"] == "farms"
    (create,) = kfp.calls("POST", "/runs")
    body = create.json
    assert body["experiment_id"] == experiment["experiment_id"]
    assert body["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert body["runtime_config"]["parameters"] == {
        "geometry": GEOJSON,
        "start_date": "2023-06-01",
        "end_date": "2023-06-30",
        "pred_iou_thresh": 0.9,
        "points_per_side": 32,
        "in_memory": False,
    }
    assert_no_secret_in_bodies(kfp)


def test_submitting_again_reuses_the_version_and_a_changed_spec_gets_its_own(
    kfp, compiled, tmp_path, capsys
):
    args = ["submit", "--host", kfp.url, "--param", f"geometry={GEOJSON}"]
    assert main([*args, "--pipeline", "auto_segment_s2"]) == 0
    assert main([*args, "--pipeline", "auto_segment_s2"]) == 0
    assert "unchanged, reused" in capsys.readouterr().err
    assert len(kfp.calls("POST", "/pipelines/upload_version")) == 1
    assert len(kfp.pipelines) == 1 and len(kfp.experiments) == 1 and len(kfp.runs) == 2
    changed = tmp_path / "auto_segment_s2.yaml"
    changed.write_bytes((compiled / "auto_segment_s2.yaml").read_bytes() + b"\n# rebuilt\n")
    assert main([*args, "--pipeline", str(changed)]) == 0
    names = sorted(v["display_name"] for v in kfp.versions.values())
    sha = compiled_package.load_package(changed).sha256
    assert names == [__version__, f"{__version__}-{sha[:12]}"]


def test_wait_follows_the_run_and_prints_the_sinks(kfp, capsys):
    code = main(
        [
            "submit", "--host", kfp.url, "--pipeline", "auto_segment_s2",
            "--param", f"geometry={GEOJSON}", "--param", "lookback_days=14",
            "--wait", "--poll-interval", "0.01",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{kfp.url}/#/runs/details/")
    assert lines[1:] == [
        "s2_raster\tminio://mlpipeline/v2/artifacts/run/ingest-s2/scenes",
        "segmentation_mask\tminio://mlpipeline/v2/artifacts/run/segment/mask",
    ]
    assert [line.split(": ")[-1] for line in err.splitlines() if ": " in line][-3:] == [
        "PENDING",
        "RUNNING",
        "SUCCEEDED",
    ]
    assert len(kfp.calls("GET", "/runs/")) == 3
    assert_no_secret_in_bodies(kfp)


def test_wait_on_a_failed_run_exits_1_with_its_error(kfp, capsys):
    kfp.run_states = ["RUNNING", "FAILED"]
    code = main(
        [
            "submit", "--host", kfp.url, "--pipeline", "auto_segment_s2",
            "--param", f"geometry={GEOJSON}", "--wait", "--poll-interval", "0.01",
        ]
    )  # fmt: skip
    assert code == 1
    assert "FAILED: task merge-masks failed: out of memory" in capsys.readouterr().err


def test_wait_without_declared_outputs_or_artifact_api(kfp, capsys):
    kfp.artifact_api = False
    kfp.task_outputs = {"ingest-s2": {"scenes": "minio://x"}}
    code = main(
        [
            "submit", "--host", kfp.url, "--pipeline", "no_window",
            "--wait", "--poll-interval", "0.01",
        ]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert "ingest-s2.scenes\tartifact 1 (this KFP has no artifact API" in out


def test_schedule_weekly_takes_a_relative_window(kfp, tmp_path, capsys):
    params = tmp_path / "farm.json"
    params.write_text(json.dumps({"geometry": GEOJSON, "points_per_side": 24}))
    code = main(
        [
            "schedule", "create", "--host", kfp.url, "--pipeline", "auto_segment_s2",
            "--params", str(params), "--cron", "0 0 6 * * MON", "--lookback-days", "7",
            "--name", "farm weekly",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    (recurring,) = kfp.recurring_runs.values()
    assert out.strip() == f"{kfp.url}/#/recurringrun/details/{recurring['recurring_run_id']}"
    (create,) = kfp.calls("POST", "/recurringruns")
    body = create.json
    assert body["display_name"] == "farm weekly"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 6 * * MON"}}
    assert body["no_catchup"] is True
    assert body["max_concurrency"] == "1"
    assert body["mode"] == "ENABLE"
    parameters = body["runtime_config"]["parameters"]
    assert parameters == {"geometry": GEOJSON, "points_per_side": 24, "lookback_days": 7}
    assert not {"start_date", "end_date", "reference_time"} & set(parameters)
    # the uploaded pipeline anchors the window at the scheduled time
    (upload,) = kfp.uploads.values()
    assert b"{{$.pipeline_job_schedule_time_utc}}" in upload
    assert "warning" not in err
    assert_no_secret_in_bodies(kfp)


def test_schedule_takes_seasons_counted_back_from_each_run(kfp, capsys):
    windows = "-150d/-90d,-30d/0d"
    code = main(
        [
            "schedule", "create", "--host", kfp.url, "--pipeline", "auto_segment_s2",
            "--param", f"geometry={GEOJSON}", "--param", f"windows={windows}",
            "--cron", "@monthly",
        ]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0, err
    parameters = kfp.calls("POST", "/recurringruns")[-1].json["runtime_config"]["parameters"]
    assert parameters == {"geometry": GEOJSON, "windows": windows}
    assert "warning" not in err


def test_schedule_interval_catchup_concurrency_and_five_field_cron(kfp, capsys):
    base = ["schedule", "create", "--host", kfp.url, "--pipeline", "auto_segment_s2"]
    geometry = ["--param", f"geometry={GEOJSON}"]
    code = main(
        [*base, *geometry, "--interval", "7d", "--lookback-days", "3", "--catchup",
         "--max-concurrency", "2", "--paused", "--start-time", "2025-01-06"]
    )  # fmt: skip
    assert code == 0
    body = kfp.calls("POST", "/recurringruns")[-1].json
    assert body["trigger"] == {
        "periodic_schedule": {"interval_second": "604800", "start_time": "2025-01-06T00:00:00Z"}
    }
    assert body["no_catchup"] is False and body["max_concurrency"] == "2"
    assert body["mode"] == "DISABLE"
    assert "imagery between windows is never processed; use 7" in capsys.readouterr().err
    assert main([*base, *geometry, "--cron", "30 5 * * 1", "--lookback-days", "7"]) == 0
    assert kfp.calls("POST", "/recurringruns")[-1].json["trigger"]["cron_schedule"]["cron"] == (
        "0 30 5 * * 1"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "start_date=2025-01-01", "--lookback-days", "7"], "same imagery every time"),
        (
            ["--param", "reference_time=2025-01-01T00:00:00Z", "--lookback-days", "7"],
            "reference_time",
        ),
        ([], "needs --lookback-days N"),
        (["--lookback-days", "0"], "needs --lookback-days N"),
        (["--param", "windows=2025-04-01/2025-05-31,-30d/0d"], "fixed windows 2025-04-01"),
        (["--param", "windows=-30d/0d", "--lookback-days", "7"], "not both"),
    ],
)
def test_schedule_refuses_fixed_or_missing_windows(kfp, capsys, extra, message):
    code = main(
        [
            "schedule", "create", "--host", kfp.url, "--pipeline", "auto_segment_s2",
            "--param", f"geometry={GEOJSON}", "--cron", "@weekly", *extra,
        ]
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not kfp.requests  # refused before any request


def test_schedule_list_pause_resume_delete(kfp, capsys):
    for name in ("farm a", "farm b"):
        assert main(
            [
                "schedule", "create", "--host", kfp.url, "--pipeline", "auto_segment_s2",
                "--param", f"geometry={GEOJSON}", "--cron", "@weekly", "--lookback-days", "7",
                "--name", name,
            ]
        ) == 0  # fmt: skip
    capsys.readouterr()
    a_id, _b_id = list(kfp.recurring_runs)
    assert main(["schedule", "list", "--host", kfp.url]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == [
        "ID",
        "NAME",
        "STATE",
        "SCHEDULE",
        "MAX",
        "CATCHUP",
        "LOOKBACK",
        "CREATED",
    ]
    assert any(a_id in line and "farm a" in line and "cron 0 0 0 * * 0" in line and "7d" in line
               and "off" in line and "enabled" in line for line in listing)  # fmt: skip
    assert main(["schedule", "pause", "--host", kfp.url, "farm a"]) == 0
    assert kfp.recurring_runs[a_id]["mode"] == "DISABLE"
    assert main(["schedule", "resume", "--host", kfp.url, a_id]) == 0
    assert kfp.recurring_runs[a_id]["mode"] == "ENABLE"
    assert main(["schedule", "delete", "--host", kfp.url, "farm b"]) == 0
    assert list(kfp.recurring_runs) == [a_id]
    assert [r.path for r in kfp.calls("POST", "/recurringruns/")] == [
        f"{API}/recurringruns/{a_id}:disable",
        f"{API}/recurringruns/{a_id}:enable",
    ]
    assert main(["schedule", "pause", "--host", kfp.url, "farm z"]) == 2
    assert "no recurring run 'farm z'" in capsys.readouterr().err


def test_no_window_for_a_pipeline_without_lookback(kfp, capsys):
    code = main(
        ["schedule", "create", "--host", kfp.url, "--pipeline", "no_window", "--interval", "1d",
         "--lookback-days", "7"]
    )  # fmt: skip
    assert code == 2
    assert "has no lookback_days parameter" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_host_fails_fast(compiled, monkeypatch, capsys):
    monkeypatch.setattr(compiled_package, "COMPILED_DIR", compiled)
    started = time.monotonic()
    code = main(
        ["submit", "--host", f"http://127.0.0.1:{free_port()}", "--pipeline", "auto_segment_s2",
         "--param", f"geometry={GEOJSON}"]
    )  # fmt: skip
    assert code == 1
    assert time.monotonic() - started < 10
    assert "cannot reach the KFP API at http://127.0.0.1:" in capsys.readouterr().err


def test_a_stalled_api_times_out(kfp, capsys):
    kfp.stall_s = 30
    started = time.monotonic()
    code = main(
        ["schedule", "list", "--host", kfp.url, "--timeout", "0.5", "--retries", "1"]
    )  # fmt: skip
    assert code == 1
    assert time.monotonic() - started < 8
    err = capsys.readouterr().err
    assert "did not answer GET /apis/v2beta1/recurringruns within 0.5 s (tried 2 times)" in err
    assert len(kfp.requests) == 2


def test_missing_or_wrong_credentials(kfp, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KF_PIPELINES_TOKEN")
    assert main(["schedule", "list", "--host", kfp.url]) == 2
    err = capsys.readouterr().err
    assert "refused GET /apis/v2beta1/recurringruns with HTTP 401" in err
    assert "KF_PIPELINES_TOKEN" in err
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token\n")
    assert main(["schedule", "list", "--host", kfp.url, "--token-file", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "not-the-token" not in err
    right = tmp_path / "sa-token"
    right.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(right))
    assert main(["schedule", "list", "--host", kfp.url]) == 0
    assert "no recurring runs" in capsys.readouterr().out


def test_token_from_kube_config(kfp, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KF_PIPELINES_TOKEN")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": TOKEN}}],
                "contexts": [{"name": "kubeflow", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "kubeflow",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["schedule", "list", "--host", kfp.url, "--kube-context"]) == 0
    assert main(["schedule", "list", "--host", kfp.url, "--kube-context", "kubeflow"]) == 0
    assert main(["schedule", "list", "--host", kfp.url, "--kube-context", "nope"]) == 2
    assert "kube config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipeline", "segment-s3"], "unknown pipeline 'segment-s3'; give one of segment_s2"),
        (["--pipeline", "segment_s2"], "pipeline segment_s2 is not compiled here"),
        (["--pipeline", "missing.yaml"], "compiled pipeline missing.yaml does not exist"),
        (["--pipeline", "auto_segment_s2"], "needs parameter(s) geometry"),
        (["--pipeline", "auto_segment_s2", "--param", "geometry=x", "--param", "nms=1"],
         "has no parameter nms; it takes: end_date, geometry"),
        (["--pipeline", "auto_segment_s2", "--param", "geometry=x", "--param", "points_per_side=x"],
         "points_per_side='x' is not a valid NUMBER_INTEGER"),
        (["--pipeline", "auto_segment_s2", "--param", "geometry=x", "--param", "in_memory=maybe"],
         "is not a valid BOOLEAN"),
        (["--pipeline", "auto_segment_s2", "--param", "geometry"], "is not name=value"),
        (["--pipeline", "auto_segment_s2", "--param", f"geometry={PC_KEY}"],
         "contains the value of $PC_SDK_SUBSCRIPTION_KEY"),
    ],
)  # fmt: skip
def test_input_mistakes_are_one_line_before_any_request(kfp, capsys, args, message):
    assert main(["submit", "--host", kfp.url, *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not kfp.requests


def test_parameters_named_like_credentials_are_refused():
    package = compiled_package.PipelinePackage(
        path=Path("p.yaml"),
        content=b"",
        name="p",
        description="",
        parameters={
            "pc_key": compiled_package.Parameter("pc_key", "STRING", required=False, default="")
        },
        sinks=(),
        uses_schedule_time=False,
    )
    assert compiled_package.build_parameters(package, {}, {"pc_key": ""}, environ={}) == {
        "pc_key": ""
    }
    with pytest.raises(InputError, match="pc_key looks like a credential"):
        compiled_package.build_parameters(package, {}, {"pc_key": "abc"}, environ={})


def test_a_package_holding_a_credential_is_not_uploaded(kfp, compiled, tmp_path, capsys):
    leaky = tmp_path / "leaky.yaml"
    leaky.write_bytes((compiled / "no_window.yaml").read_bytes() + f"\n# {PC_KEY}\n".encode())
    assert main(["submit", "--host", kfp.url, "--pipeline", str(leaky)]) == 2
    assert "contains the value of $PC_SDK_SUBSCRIPTION_KEY" in capsys.readouterr().err
    assert not kfp.requests


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 6 * * MON", "0 0 6 * * MON"),
        ("0 6 * * 1", "0 0 6 * * 1"),
        ("@weekly", "0 0 0 * * 0"),
        ("  0  0 6 ? * 1-5 ", "0 0 6 ? * 1-5"),
    ],
)
def test_kfp_cron(expression, expected):
    assert kfp_cron(expression) == expected


@pytest.mark.parametrize("expression", ["", "every monday", "0 0 6 * *  * *", "0 0 6 * * MON;rm"])
def test_bad_cron(expression):
    with pytest.raises(InputError, match="is not a cron expression"):
        kfp_cron(expression)


def test_intervals():
    assert interval_seconds("7d") == 604800
    assert interval_seconds("1w") == 604800
    assert interval_seconds("1d12h") == 129600
    assert interval_seconds("3600") == 3600
    for bad in ("soon", "10s", "1x"):
        with pytest.raises(InputError):
            interval_seconds(bad)


def test_sinks_fall_back_to_every_output_when_task_names_differ(kfp, capsys):
    kfp.task_outputs = {"root-dag": {"segmentation_mask": "minio://mlpipeline/x/mask"}}
    code = main(
        [
            "submit", "--host", kfp.url, "--pipeline", "auto_segment_s2",
            "--param", f"geometry={GEOJSON}", "--wait", "--poll-interval", "0.01",
        ]
    )  # fmt: skip
    assert code == 0
    assert "root-dag.segmentation_mask\tminio://mlpipeline/x/mask" in capsys.readouterr().out
