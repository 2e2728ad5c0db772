"""``s2sam submit`` and ``s2sam schedule``: the compiled pipelines on a Kubeflow cluster.

``submit`` uploads a compiled pipeline (or reuses the identical version), starts a
run in an experiment and prints its URL; ``--wait`` follows it and prints where its
outputs are. ``schedule create`` makes a recurring run over a relative time window;
``schedule list|pause|resume|delete`` manage them.

Credentials: a bearer token from ``--token-file``, ``$KF_PIPELINES_TOKEN``, a kube
config context (``--kube-context``), or ``$KF_PIPELINES_SA_TOKEN_PATH``; none for an
API without authentication (e.g. ``kubectl port-forward``). There is no ``--token
VALUE``: it would stay in the shell history and the process list. Mistakes exit 2,
an unreachable or failing KFP API exits 1, a run that does not succeed exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from components.errors import InputError
from components.io.network import NetworkOptions
from pipelines.commands.options import add_field

DEFAULT_EXPERIMENT = "s2sam"


def register(subparsers: Any) -> None:
    """Add ``submit`` and ``schedule``."""
    _register_submit(subparsers)
    schedule = subparsers.add_parser(
        "schedule",
        help="recurring runs on Kubeflow Pipelines",
        description="Create, list, pause, resume and delete KFP recurring runs.",
    )
    actions = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    _register_schedule_create(actions)
    _register_schedule_management(actions)


def _register_submit(subparsers: Any) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="run a compiled pipeline on Kubeflow Pipelines",
        description=(
            "Upload a compiled pipeline to Kubeflow Pipelines as a version named after the "
            "package version (an identical upload is reused), create the experiment if "
            "needed, start a run and print its URL. --wait follows the run to the end and "
            "prints the URIs of its outputs."
        ),
    )
    _connection_options(submit)
    _pipeline_options(submit)
    submit.add_argument("--run-name", help="display name of the run (default: pipeline + time)")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    submit.add_argument(
        "--poll-interval", type=float, default=10.0, metavar="S", help="seconds between polls"
    )
    submit.add_argument(
        "--wait-timeout", type=float, metavar="S", help="give up waiting after S seconds"
    )
    submit.set_defaults(handler=_submit)


def _register_schedule_create(actions: Any) -> None:
    create = actions.add_parser(
        "create",
        help="run a pipeline on a cron schedule or interval over a moving time window",
        description=(
            "Create a recurring run. Each run searches the --lookback-days days before its "
            "own scheduled time (the pipelines anchor the window with KFP's schedule-time "
            "placeholder), so a run that starts late or is retried still takes its own "
            "week; fixed dates are refused. Catch-up is off unless --catchup: after a "
            "pause only the latest missed run starts."
        ),
    )
    _connection_options(create)
    _pipeline_options(create)
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--cron",
        help="KFP cron, 6 fields with seconds first: '0 0 6 * * MON' = Mondays 06:00 UTC "
        "(5-field crons and @daily/@weekly/@monthly are converted)",
    )
    when.add_argument("--interval", help="a fixed period instead: 7d, 12h, 1d12h")
    create.add_argument(
        "--lookback-days",
        type=int,
        metavar="N",
        help="days of imagery before each scheduled time (sets the lookback_days parameter)",
    )
    create.add_argument("--name", help="display name (default: <pipeline> <schedule>)")
    create.add_argument(
        "--max-concurrency", type=int, default=1, metavar="N", help="runs at a time (default 1)"
    )
    create.add_argument(
        "--catchup", action="store_true", help="after a pause, start every missed run (backfill)"
    )
    create.add_argument("--start-time", metavar="ISO8601", help="first possible run (default now)")
    create.add_argument("--end-time", metavar="ISO8601", help="no runs after this time")
    create.add_argument("--paused", action="store_true", help="create it disabled")
    create.set_defaults(handler=_schedule_create)


def _register_schedule_management(actions: Any) -> None:
    """``list``, ``pause``, ``resume`` and ``delete``: the recurring runs there are."""
    listing = actions.add_parser("list", help="list recurring runs")
    _connection_options(listing)
    listing.add_argument("--experiment", help="only this experiment's recurring runs")
    listing.set_defaults(handler=_schedule_list)
    for action, verb in (
        ("pause", "pause (disable)"),
        ("resume", "resume (enable)"),
        ("delete", "delete (past runs stay)"),
    ):
        parser = actions.add_parser(action, help=f"{verb} a recurring run")
        _connection_options(parser)
        parser.add_argument("recurring_run", metavar="ID_OR_NAME", help="id or unique name")
        parser.set_defaults(handler=partial(_schedule_action, action=action))


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubeflow Pipelines API")
    group.add_argument(
        "--host",
        default=os.environ.get("KF_PIPELINES_ENDPOINT"),
        help="KFP API URL, e.g. https://kubeflow.example.com/pipeline or http://localhost:8080 "
        "(default: $KF_PIPELINES_ENDPOINT)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file with a bearer token (else $KF_PIPELINES_TOKEN, --kube-context, "
        "$KF_PIPELINES_SA_TOKEN_PATH)",
    )
    group.add_argument(
        "--kube-context",
        nargs="?",
        const="",
        metavar="NAME",
        help="use the bearer token of a kube config context (no NAME: the current one)",
    )
    group.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
    group.add_argument(
        "--ui-host",
        default=os.environ.get("KF_PIPELINES_UI_ENDPOINT"),
        help="KFP UI URL for links (default: --host)",
    )
    add_field(group, NetworkOptions, "timeout_s", "--timeout", metavar="S")
    add_field(group, NetworkOptions, "retries", metavar="N")


def _pipeline_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline and parameters")
    group.add_argument(
        "--pipeline",
        required=True,
        help="segment_s2, auto_segment_s2, export_sam (compiled in pipelines/compiled/) or "
        "the path of a compiled pipeline YAML",
    )
    group.add_argument(
        "--pipeline-name", help="name of the pipeline in KFP (default: the compiled name)"
    )
    group.add_argument(
        "--params", type=Path, metavar="FILE", help="parameters from a YAML or JSON mapping"
    )
    group.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one parameter (repeatable; overrides --params); NAME=@FILE reads a file's text",
    )
    group.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help=f"(default: {DEFAULT_EXPERIMENT})"
    )
    group.add_argument("--service-account", help="Kubernetes service account of the run's pods")


# --- handlers ---------------------------------------------------------------------------


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    """A connected client; KFP failures become exit codes and one-line messages."""
    from pipelines.kfp_client import DEFAULT_NETWORK, KfpClient, resolve_token

    if not args.host:
        raise InputError("--host is required (or set $KF_PIPELINES_ENDPOINT)")
    if args.timeout_s <= 0 or args.retries < 0:
        raise InputError("--timeout must be > 0 and --retries >= 0")
    token = resolve_token(args.token_file, args.kube_context)
    client = KfpClient(
        args.host,
        token,
        ui_host=args.ui_host,
        namespace=args.namespace,
        network=replace(DEFAULT_NETWORK, timeout_s=args.timeout_s, retries=args.retries),
    )
    try:
        yield client
    finally:
        client.close()


def _prepare(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The package and its checked parameters, before any request."""
    from pipelines.compiled_package import (
        build_parameters,
        load_package,
        parse_param_flags,
        read_parameter_file,
        refuse_secrets_in_package,
        resolve_package_path,
    )

    package = load_package(resolve_package_path(args.pipeline))
    from_file = read_parameter_file(args.params) if args.params else {}
    parameters = build_parameters(package, from_file, parse_param_flags(args.param))
    refuse_secrets_in_package(package)  # before any request, with the parameters
    return package, parameters


def _submit(args: argparse.Namespace) -> int:
    from pipelines.runs import (
        ensure_experiment,
        ensure_pipeline_version,
        run_body,
        sink_uris,
        wait_for_run,
    )

    if args.poll_interval <= 0:
        raise InputError("--poll-interval must be > 0")
    package, parameters = _prepare(args)
    with _client(args) as client:
        version = ensure_pipeline_version(client, package, args.pipeline_name)
        _say(
            f"pipeline {args.pipeline_name or package.name} version {version.name} "
            f"({'unchanged, reused' if version.reused else 'uploaded'})"
        )
        experiment_id = ensure_experiment(client, args.experiment)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        name = args.run_name or f"{package.name} {stamp}"
        run = client.create_run(
            run_body(name, experiment_id, version, parameters, args.service_account)
        )
        run_id = str(run["run_id"])
        print(client.run_url(run_id))
        if not args.wait:
            return 0
        try:
            final = wait_for_run(
                client,
                run_id,
                poll_s=args.poll_interval,
                timeout_s=args.wait_timeout,
                on_state=lambda state: _say(f"run {run_id}: {state}"),
            )
        except KeyboardInterrupt:
            _say(f"stopped waiting; the run goes on: {client.run_url(run_id)}")
            return 130
        state = final.get("state")
        if state != "SUCCEEDED":
            message = (final.get("error") or {}).get("message") or "see the run page"
            print(f"s2sam submit: run {run_id} {state}: {message}", file=sys.stderr)
            return 1
        for sink in sink_uris(client, package, final):
            print(f"{sink.name}\t{sink.uri}")
        return 0


def _schedule_create(args: argparse.Namespace) -> int:
    from pipelines.runs import ensure_experiment, ensure_pipeline_version
    from pipelines.schedules import (
        Schedule,
        interval_seconds,
        kfp_cron,
        parse_time,
        recurring_run_body,
        window_gap_warning,
        windowed_parameters,
    )

    if args.max_concurrency < 1:
        raise InputError("--max-concurrency must be at least 1")
    package, parameters = _prepare(args)
    schedule = Schedule(
        cron=kfp_cron(args.cron) if args.cron else None,
        interval_s=interval_seconds(args.interval) if args.interval else None,
        start_time=parse_time(args.start_time, "--start-time") if args.start_time else None,
        end_time=parse_time(args.end_time, "--end-time") if args.end_time else None,
        max_concurrency=args.max_concurrency,
        catchup=args.catchup,
        enabled=not args.paused,
    )
    parameters, warnings = windowed_parameters(package, parameters, args.lookback_days)
    gap = window_gap_warning(schedule.interval_s, parameters.get("lookback_days"))
    for warning in [*warnings, *([gap] if gap else [])]:
        _say(f"warning: {warning}")
    with _client(args) as client:
        version = ensure_pipeline_version(client, package, args.pipeline_name)
        experiment_id = ensure_experiment(client, args.experiment)
        name = args.name or f"{package.name} {args.cron or 'every ' + args.interval}"
        created = client.create_recurring_run(
            recurring_run_body(
                name,
                experiment_id,
                version,
                parameters,
                schedule,
                namespace=args.namespace,
                service_account=args.service_account,
            )
        )
        recurring_id = str(created["recurring_run_id"])
        _say(
            f"recurring run {name!r} ({recurring_id}): {schedule.describe()}, pipeline version "
            f"{version.name}, lookback_days={parameters.get('lookback_days', '-')}"
            + ("" if schedule.enabled else ", paused")
        )
        print(client.recurring_run_url(recurring_id))
    return 0


def _schedule_list(args: argparse.Namespace) -> int:
    from pipelines.schedules import describe_trigger

    with _client(args) as client:
        experiment_id = None
        if args.experiment:
            experiment = client.find_experiment(args.experiment)
            if experiment is None:
                raise InputError(f"no experiment {args.experiment!r}")
            experiment_id = str(experiment["experiment_id"])
        runs = client.recurring_runs(experiment_id)
    if not runs:
        print("no recurring runs")
        return 0
    rows = [("ID", "NAME", "STATE", "SCHEDULE", "MAX", "CATCHUP", "LOOKBACK", "CREATED")]
    for r in runs:
        params = (r.get("runtime_config") or {}).get("parameters") or {}
        rows.append(
            (
                str(r.get("recurring_run_id", "")),
                str(r.get("display_name", "")),
                "enabled" if r.get("mode", "ENABLE") == "ENABLE" else "paused",
                describe_trigger(r.get("trigger") or {}),
                str(r.get("max_concurrency", "-")),
                "off" if r.get("no_catchup") else "on",
                _days(params.get("lookback_days")),
                str(r.get("created_at", "-"))[:19],
            )
        )
    print(_table(rows))
    return 0


def _schedule_action(args: argparse.Namespace, action: str) -> int:
    from pipelines.schedules import find_recurring_run

    with _client(args) as client:
        found = find_recurring_run(client, args.recurring_run)
        recurring_id = str(found["recurring_run_id"])
        {
            "pause": client.disable_recurring_run,
            "resume": client.enable_recurring_run,
            "delete": client.delete_recurring_run,
        }[action](recurring_id)
    done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[action]
    print(f"{done} recurring run {found.get('display_name', '')!r} ({recurring_id})")
    return 0


def _days(value: Any) -> str:
    """A lookback as ``7d`` (KFP may give numbers back as floats)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}d"
    return "-"


def _table(rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr)
