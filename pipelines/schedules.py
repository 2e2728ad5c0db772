"""Recurring runs of a compiled pipeline: when they start and the window each run takes.

``s2sam schedule`` takes a cron expression (converted to KFP's 6 fields) or an
interval, and a relative window: ``lookback_days``, or seasons counted back
(``windows=-150d/-90d,-30d/0d``), never dates; each run ends its windows at its own
scheduled time (the pipelines pass
``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER`` to the ingest).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from components.core.seasons import is_relative_window, window_texts
from components.errors import InputError
from pipelines.compiled_package import PipelinePackage
from pipelines.kfp_client import KfpClient
from pipelines.runs import UploadedVersion

WINDOW_PARAMETER = "lookback_days"
DATE_PARAMETERS = ("start_date", "end_date", "reference_time")

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")
_CRON_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_DURATION = re.compile(r"(\d+)\s*([wdhms])")
_DURATION_S = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def kfp_cron(expression: str) -> str:
    """KFP's 6-field cron (seconds first) from a 6- or 5-field expression or a macro.

    KFP's scheduler (robfig/cron) reads ``second minute hour day-of-month month
    day-of-week``; a standard 5-field expression gets ``0`` seconds in front.
    """
    text = " ".join(expression.split())
    if text.lower() in _CRON_MACROS:
        return _CRON_MACROS[text.lower()]
    fields_ = text.split(" ")
    if len(fields_) == 5:
        fields_ = ["0", *fields_]
    if len(fields_) != 6 or not all(_CRON_FIELD.match(f) for f in fields_):
        raise InputError(
            f"--cron {expression!r} is not a cron expression: give 6 fields "
            "(second minute hour day-of-month month day-of-week, e.g. '0 0 6 * * MON'), "
            "5 standard fields, or @daily/@weekly/@monthly"
        )
    return " ".join(fields_)


def interval_seconds(text: str) -> int:
    """``7d``, ``12h``, ``1w``, ``1d12h``, ``3600`` or ``3600s`` as seconds."""
    compact = text.strip().lower().replace(" ", "")
    if compact.isdigit():
        seconds = int(compact)
    elif compact and _DURATION.sub("", compact) == "":
        seconds = sum(int(n) * _DURATION_S[u] for n, u in _DURATION.findall(compact))
    else:
        raise InputError(f"--interval {text!r} is not a duration like 7d, 12h or 1d12h")
    if seconds < 60:
        raise InputError(f"--interval {text!r} is shorter than a minute")
    return seconds


def parse_time(text: str, flag: str) -> str:
    """An RFC 3339 UTC timestamp from an ISO 8601 date or datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not an ISO 8601 date or datetime") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Schedule:
    """When a recurring run starts runs."""

    cron: str | None = None
    interval_s: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    max_concurrency: int = 1
    catchup: bool = False
    enabled: bool = True
    warnings: list[str] = field(default_factory=list)

    def trigger(self) -> dict[str, Any]:
        """The ``V2beta1Trigger`` JSON."""
        times = {
            k: v for k, v in (("start_time", self.start_time), ("end_time", self.end_time)) if v
        }
        if self.cron is not None:
            return {"cron_schedule": {"cron": self.cron, **times}}
        return {"periodic_schedule": {"interval_second": str(self.interval_s), **times}}

    def describe(self) -> str:
        """One line for people."""
        when = f"cron '{self.cron}' (UTC)" if self.cron else f"every {_human(self.interval_s or 0)}"
        catchup = "on" if self.catchup else "off"
        return f"{when}, max {self.max_concurrency} at a time, catch-up {catchup}"


def windowed_parameters(
    package: PipelinePackage, parameters: Mapping[str, Any], lookback_days: int | None
) -> tuple[dict[str, Any], list[str]]:
    """A schedule's parameters: ``lookback_days`` set, no dates; and warnings.

    Raises:
        InputError: Fixed dates (every run would take the same imagery), a pipeline
            without ``lookback_days`` asked for a window, or no window for one that has it.
    """
    params = dict(parameters)
    fixed = [name for name in DATE_PARAMETERS if params.get(name) not in (None, "")]
    if fixed:
        raise InputError(
            f"a recurring run with {', '.join(fixed)} set would process the same imagery every "
            "time; give --lookback-days instead: each run then takes the days before its "
            "own scheduled time"
        )
    for name in DATE_PARAMETERS:
        params.pop(name, None)
    warnings: list[str] = []
    if _relative_windows(params, lookback_days):
        if not package.uses_schedule_time:
            warnings.append(_NO_PLACEHOLDER.format(package.path.name))
        return params, warnings
    if WINDOW_PARAMETER not in package.parameters:
        if lookback_days is not None:
            raise InputError(
                f"pipeline {package.name} has no {WINDOW_PARAMETER} parameter: it takes no "
                "time window"
            )
        return params, warnings
    if lookback_days is not None:
        params[WINDOW_PARAMETER] = lookback_days
    window = params.get(WINDOW_PARAMETER)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise InputError(
            f"a recurring run of {package.name} needs --lookback-days N (N >= 1): the days "
            "of imagery before each scheduled time"
        )
    if not package.uses_schedule_time:
        warnings.append(_NO_PLACEHOLDER.format(package.path.name))
    return params, warnings


_NO_PLACEHOLDER = (
    "{} does not use the schedule-time placeholder: windows end when a run starts, not at "
    "its scheduled time"
)


def _relative_windows(params: Mapping[str, Any], lookback_days: int | None) -> bool:
    """Whether the schedule takes seasons (``windows``) counted back from each run's time.

    Raises:
        InputError: A window with fixed dates (every run would take the same imagery),
            or windows together with a lookback.
    """
    texts = window_texts(str(params.get("windows") or ""))
    if not texts:
        return False
    fixed = [t for t in texts if not is_relative_window(t)]
    if fixed:
        raise InputError(
            f"a recurring run with the fixed windows {', '.join(fixed)} would process the "
            "same imagery every time; count them back from each run's scheduled time, "
            "e.g. -150d/-90d,-30d/0d"
        )
    if lookback_days is not None or params.get(WINDOW_PARAMETER):
        raise InputError("give --lookback-days or relative windows, not both")
    return True


def recurring_run_body(
    display_name: str,
    experiment_id: str,
    version: UploadedVersion,
    parameters: Mapping[str, Any],
    schedule: Schedule,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A ``V2beta1RecurringRun`` request."""
    body: dict[str, Any] = {
        "display_name": display_name,
        "description": f"s2sam schedule: {schedule.describe()}",
        "experiment_id": experiment_id,
        "pipeline_version_reference": {
            "pipeline_id": version.pipeline_id,
            "pipeline_version_id": version.pipeline_version_id,
        },
        "runtime_config": {"parameters": dict(parameters)},
        "trigger": schedule.trigger(),
        "max_concurrency": str(schedule.max_concurrency),
        "no_catchup": not schedule.catchup,
        "mode": "ENABLE" if schedule.enabled else "DISABLE",
    }
    if namespace:
        body["namespace"] = namespace
    if service_account:
        body["service_account"] = service_account
    return body


def window_gap_warning(interval_s: int | None, lookback_days: int | None) -> str | None:
    """A warning when an interval is longer than the window (days without imagery)."""
    if interval_s is None or lookback_days is None:
        return None
    if lookback_days * 86400 < interval_s:
        days = math.ceil(interval_s / 86400)
        return (
            f"--lookback-days {lookback_days} is shorter than the interval "
            f"({_human(interval_s)}): imagery between windows is never processed; use {days}"
        )
    return None


def find_recurring_run(client: KfpClient, ref: str) -> dict[str, Any]:
    """A recurring run by id or by display name (which must be unique)."""
    runs = client.recurring_runs()
    by_id = [r for r in runs if r.get("recurring_run_id") == ref]
    if by_id:
        return by_id[0]
    by_name = [r for r in runs if r.get("display_name") == ref]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        ids = ", ".join(str(r.get("recurring_run_id")) for r in by_name)
        raise InputError(f"several recurring runs are named {ref!r}: {ids}; give the id")
    raise InputError(f"no recurring run {ref!r} (see `s2sam schedule list`)")


def describe_trigger(trigger: Mapping[str, Any]) -> str:
    """A recurring run's trigger for a table."""
    if cron := (trigger.get("cron_schedule") or {}).get("cron"):
        return f"cron {cron}"
    if interval := (trigger.get("periodic_schedule") or {}).get("interval_second"):
        return f"every {_human(int(interval))}"
    return "-"


def _human(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
