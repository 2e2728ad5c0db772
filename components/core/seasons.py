"""Date windows: one search interval, or several seasons of the same place.

Field edges show in some seasons and not in others (two fields of one crop look alike
in June and differ once one is harvested), so a run can name up to
:data:`MAX_WINDOWS` windows, for example a planting and a harvest window; the ingest
picks the clearest acquisition in each, on one grid, and the merge fuses them
(:mod:`components.core.fusion`). Fields of The World takes two windows per place.

A window is ``START/END``: dates (``2024-04-01/2024-05-31``, both days included) or
ISO datetimes, or days before the reference time (``-150d/-90d``; ``0d`` is the
reference time itself), which is what a recurring run needs: each run's windows end
where its own scheduled time puts them. Windows are given in the ``windows`` text
parameter, separated by commas, semicolons or white space; they must not overlap (an
acquisition belongs to one season) and come back sorted by start.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from components.core.limits import MAX_LOOKBACK_DAYS
from components.core.search import TimeRange, parse_instant, resolve_time_range
from components.errors import InputError

MAX_WINDOWS = 4
"""Most windows in one run: seasons of one year; each costs a search and a segmentation."""

_SEPARATORS = re.compile(r"[,;\s]+")
_RELATIVE = re.compile(r"^-?(\d+)d$")


@dataclass(frozen=True)
class DateWindow:
    """The dates searched: dates, a lookback before a time, or several windows."""

    start_date: str = field(
        default="", metadata={"doc": "First day to search (YYYY-MM-DD); with end_date."}
    )
    end_date: str = field(
        default="", metadata={"doc": "Last day to search (YYYY-MM-DD), included."}
    )
    lookback_days: int = field(
        default=0,
        metadata={
            "doc": "Instead of dates: search this many days before the run's (scheduled) "
            "time. For recurring runs."
        },
    )
    reference_time: str = field(
        default="",
        metadata={
            "doc": "End of the lookback window, and the time relative windows count back "
            "from (ISO time); empty: the run's scheduled time, or now."
        },
    )
    windows: str = field(
        default="",
        metadata={
            "doc": "Instead of dates: several seasons, START/END each, comma-separated "
            "(2024-04-01/2024-05-31,2024-08-01/2024-09-30, or -150d/-90d,-30d/0d before "
            "the reference time); the clearest acquisition of each is segmented and the "
            "fields of all are fused into one layer."
        },
    )

    @property
    def relative(self) -> bool:
        """Whether the dates count back from the run's time (a lookback, relative windows)."""
        texts = window_texts(self.windows)
        return bool(self.lookback_days) or any(
            _RELATIVE.match(end) for t in texts for end in t.split("/")
        )


def window_texts(windows: str) -> list[str]:
    """The ``START/END`` items of a ``windows`` parameter (empty: none)."""
    return [t for t in _SEPARATORS.split((windows or "").strip()) if t]


def is_relative_window(text: str) -> bool:
    """Whether both ends of a ``START/END`` window count back from the run's time."""
    ends = text.split("/")
    return len(ends) == 2 and all(_RELATIVE.match(end) for end in ends)


def _end(text: str, reference: datetime, name: str, end_of_day: bool) -> datetime:
    """One end of a window: a date, an ISO time, or ``-Nd`` before ``reference``."""
    relative = _RELATIVE.match(text)
    if relative is None:
        return parse_instant(text, name, end_of_day=end_of_day)
    days = int(relative.group(1))
    if days > MAX_LOOKBACK_DAYS:
        raise InputError(f"{name} {text!r} reaches back more than {MAX_LOOKBACK_DAYS:,} days")
    try:
        return reference - timedelta(days=days)
    except OverflowError:
        raise InputError(f"{name} {text!r} reaches before the year 1") from None


def parse_window(text: str, reference: datetime, index: int) -> TimeRange:
    """One ``START/END`` window, checked; ``index`` (0-based) names it in errors."""
    name = f"windows[{index}]"
    parts = text.split("/")
    if len(parts) != 2 or not all(parts):
        raise InputError(
            f"{name} {text!r} is not START/END (e.g. 2024-04-01/2024-05-31 or -150d/-90d)"
        )
    start = _end(parts[0], reference, f"{name} start", end_of_day=False)
    end = _end(parts[1], reference, f"{name} end", end_of_day=True)
    if start > end:
        raise InputError(f"{name} {text!r} is reversed: its start is after its end")
    return TimeRange(start, end)


def parse_windows(windows: str, reference: datetime) -> tuple[TimeRange, ...]:
    """The windows of a ``windows`` parameter, sorted, none overlapping.

    Raises:
        InputError: A malformed or reversed window, more than :data:`MAX_WINDOWS`, or
            two that overlap (an acquisition would belong to two seasons).
    """
    texts = window_texts(windows)
    if len(texts) > MAX_WINDOWS:
        raise InputError(
            f"windows: {len(texts)} windows given, at most {MAX_WINDOWS} are taken "
            "(each costs a search and a segmentation)"
        )
    ranges = sorted(
        (parse_window(t, reference, i) for i, t in enumerate(texts)), key=lambda r: r.start
    )
    for a, b in itertools.pairwise(ranges):
        if b.start <= a.end:
            raise InputError(
                f"windows overlap: {a.to_stac()} and {b.to_stac()}; an acquisition must "
                "belong to one window"
            )
    return tuple(ranges)


def resolve_windows(
    dates: DateWindow, reference: str | None, now: datetime | None = None
) -> tuple[TimeRange, ...]:
    """The intervals searched: the ``windows``, else the one range of dates or lookback.

    ``reference`` is the time a lookback and relative windows end at (the user's, or
    the run's scheduled time); default ``now``.

    Raises:
        InputError: Windows given together with dates or a lookback, or any bad value.
    """
    if not window_texts(dates.windows):
        return (
            resolve_time_range(
                dates.start_date or None,
                dates.end_date or None,
                dates.lookback_days or None,
                reference,
                now,
            ),
        )
    if dates.start_date or dates.end_date or dates.lookback_days:
        raise InputError(
            "give windows, or start_date and end_date, or lookback_days: not two of them "
            f"(got windows={dates.windows!r}, start_date={dates.start_date!r}, "
            f"end_date={dates.end_date!r}, lookback_days={dates.lookback_days!r})"
        )
    if reference is None:
        at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    else:
        at = parse_instant(reference, "reference_time", end_of_day=True)
    return parse_windows(dates.windows, at)


def describe_windows(ranges: tuple[TimeRange, ...]) -> str:
    """The windows as STAC intervals, for logs and manifests."""
    return ", ".join(r.to_stac() for r in ranges)
