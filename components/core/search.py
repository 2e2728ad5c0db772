"""What the ingest searches for: a time range of UTC instants and Sentinel-2 L2A bands.

Dates are whole UTC days, both ends included; a lookback of ``lookback_days`` ends at a
reference time (default now), which is what a scheduled run needs. A date Python
cannot hold in UTC (``9999-12-31T23:59:59-01:00``) or a lookback reaching before year 1
is an input error, and a lookback is at most
:data:`~components.core.limits.MAX_LOOKBACK_DAYS`. Band names are
normalised (``"b4, B8A"`` -> ``("B04", "B8A")``) and checked against the 10 and 20 m
bands before any request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from components.core.limits import MAX_LOOKBACK_DAYS
from components.errors import InputError

BAND_RESOLUTION: Mapping[str, int] = {
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B08": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B8A": 20,
    "B11": 20,
    "B12": 20,
}
"""The 10 and 20 m L2A bands and their native pixel size in metres."""

DEFAULT_BANDS = ("B04", "B03", "B02")
"""Red, green, blue: what SAM's RGB encoder takes."""

_BAND = re.compile(r"^B(\d{1,2}|8A)$")


# --- time range ------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeRange:
    """A closed interval of UTC instants."""

    start: datetime
    end: datetime

    def to_stac(self) -> str:
        """The interval as a STAC API ``datetime`` parameter."""
        return f"{format_instant(self.start)}/{format_instant(self.end)}"


def format_instant(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z``; microseconds only when there are any."""
    utc = value.astimezone(timezone.utc)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    # Written out: strftime's %Y drops the leading zeros of years before 1000 on glibc.
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}{fraction}Z"


def parse_instant(value: str | date | datetime, name: str, end_of_day: bool = False) -> datetime:
    """A date or datetime as an aware UTC datetime.

    A bare date is the start of that UTC day, or its last microsecond with
    ``end_of_day`` (so an end date includes its own day). Naive datetimes are UTC.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time.max if end_of_day else time.min)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                parsed = datetime.combine(day, time.max if end_of_day else time.min)
            else:
                parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
        except ValueError:
            raise InputError(
                f"{name} {value!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime"
            ) from None
    else:
        raise InputError(f"{name} must be a date (YYYY-MM-DD), got {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise InputError(
            f"{name} {value!r} is out of range: in UTC it falls outside the years 1 to 9999"
        ) from None


def resolve_time_range(
    start_date: str | date | None = None,
    end_date: str | date | None = None,
    lookback_days: int | None = None,
    reference_time: str | datetime | None = None,
    now: datetime | None = None,
) -> TimeRange:
    """The search interval, from explicit dates or a lookback before a reference time.

    Args:
        start_date: First day (or instant) searched; needs ``end_date``.
        end_date: Last day searched, included.
        lookback_days: Days before ``reference_time`` searched, instead of dates.
        reference_time: End of a lookback; default ``now``.
        now: The current time (for tests); default the clock.

    Raises:
        ValueError: Both or neither forms given, a missing end, a bad value, or a
            start after the end.
    """
    explicit = start_date is not None or end_date is not None
    if explicit and lookback_days is not None:
        raise InputError(
            "give either start_date and end_date, or lookback_days, not both "
            f"(got start_date={start_date!r}, end_date={end_date!r}, "
            f"lookback_days={lookback_days!r})"
        )
    if explicit:
        if reference_time is not None:
            raise InputError("reference_time only applies to lookback_days, not to dates")
        if start_date is None or end_date is None:
            missing = "start_date" if start_date is None else "end_date"
            raise InputError(f"{missing} is missing: explicit dates need both ends")
        start = parse_instant(start_date, "start_date")
        end = parse_instant(end_date, "end_date", end_of_day=True)
        if start > end:
            raise InputError(f"start_date {start_date} is after end_date {end_date}")
        return TimeRange(start, end)
    if lookback_days is None:
        raise InputError("no time range: give start_date and end_date, or lookback_days")
    return _lookback(lookback_days, reference_time, now)


def _lookback(
    lookback_days: int, reference_time: str | datetime | None, now: datetime | None
) -> TimeRange:
    """``lookback_days`` days up to ``reference_time`` (default ``now``), checked."""
    if isinstance(lookback_days, bool) or not isinstance(lookback_days, int) or lookback_days < 1:
        raise InputError(f"lookback_days must be a positive integer, got {lookback_days!r}")
    if lookback_days > MAX_LOOKBACK_DAYS:
        raise InputError(
            f"lookback_days {lookback_days:,} is more than the limit of {MAX_LOOKBACK_DAYS:,} "
            "(100 years, MAX_LOOKBACK_DAYS); Sentinel-2 data start in 2015"
        )
    if reference_time is None:
        end = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    else:
        end = parse_instant(reference_time, "reference_time", end_of_day=True)
    try:
        return TimeRange(end - timedelta(days=lookback_days), end)
    except OverflowError:
        raise InputError(
            f"lookback_days {lookback_days} before reference_time {format_instant(end)} "
            "reaches before the year 1"
        ) from None


# --- bands -----------------------------------------------------------------------------


def parse_bands(bands: str | Sequence[str]) -> tuple[str, ...]:
    """Band names in order, normalised (``"b4, B8A"`` -> ``("B04", "B8A")``).

    Raises:
        ValueError: Empty, duplicated, or not one of the 10/20 m bands.
    """
    raw = bands.split(",") if isinstance(bands, str) else list(bands)
    names = []
    for item in raw:
        text = str(item).strip().upper()
        match = _BAND.match(text)
        name = f"B{match.group(1).zfill(2)}" if match else text
        if name not in BAND_RESOLUTION:
            raise InputError(
                f"band {str(item).strip()!r} is not a 10 or 20 m Sentinel-2 L2A band; "
                f"choose from {', '.join(sorted(BAND_RESOLUTION))}"
            )
        if name in names:
            raise InputError(f"band {name} is listed twice in {bands!r}")
        names.append(name)
    if not names:
        raise InputError("bands is empty: name at least one band, e.g. B04,B03,B02")
    return tuple(names)
