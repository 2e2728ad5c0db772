"""Date windows (seasons): parsing, order, overlap, limits, relative windows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from components.core.search import TimeRange
from components.core.seasons import MAX_WINDOWS, DateWindow, parse_windows, resolve_windows
from components.errors import InputError

NOW = datetime(2024, 10, 1, 12, 0, tzinfo=timezone.utc)


def day(text: str, end: bool = False) -> datetime:
    start = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return start + timedelta(days=1, microseconds=-1) if end else start


def test_two_seasons_sorted_whole_days_included():
    ranges = parse_windows("2024-08-01/2024-09-30; 2024-04-01/2024-05-31", NOW)
    assert ranges == (
        TimeRange(day("2024-04-01"), day("2024-05-31", end=True)),
        TimeRange(day("2024-08-01"), day("2024-09-30", end=True)),
    )


def test_relative_windows_count_back_from_the_reference():
    (early, late) = parse_windows("-150d/-90d,-30d/0d", NOW)
    assert early == TimeRange(NOW - timedelta(days=150), NOW - timedelta(days=90))
    assert late == TimeRange(NOW - timedelta(days=30), NOW)


def test_without_windows_the_one_range_of_dates_or_lookback():
    dates = DateWindow(start_date="2024-04-01", end_date="2024-04-30")
    assert resolve_windows(dates, None, NOW) == (
        TimeRange(day("2024-04-01"), day("2024-04-30", end=True)),
    )
    (lookback,) = resolve_windows(DateWindow(lookback_days=7), None, NOW)
    assert lookback == TimeRange(NOW - timedelta(days=7), NOW)


def test_a_scheduled_reference_time_moves_relative_windows():
    dates = DateWindow(windows="-10d/-5d")
    assert dates.relative and not DateWindow(windows="2024-01-01/2024-01-02").relative
    (window,) = resolve_windows(dates, "2024-06-30T00:00:00Z", NOW)
    assert window.end == datetime(2024, 6, 25, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        ("2024-05-31/2024-04-01", "windows[0] '2024-05-31/2024-04-01' is reversed"),
        ("2024-04-01/2024-05-31,2024-05-15/2024-06-30", "windows overlap"),
        ("2024-04-01/2024-05-31,2024-05-31/2024-06-30", "windows overlap"),
        ("2024-04-01", "windows[0] '2024-04-01' is not START/END"),
        ("2024-04-01/2024-05-01/2024-06-01", "is not START/END"),
        ("2024-04-01/", "is not START/END"),
        ("2024-04-01/june", "windows[0] end 'june' is not a date"),
        ("-90d/-150d", "is reversed"),
        ("-99999999d/0d", "reaches back more than"),
        (
            ",".join(f"2024-0{m}-01/2024-0{m}-10" for m in range(1, MAX_WINDOWS + 2)),
            f"{MAX_WINDOWS + 1} windows given, at most {MAX_WINDOWS}",
        ),
    ],
)
def test_bad_windows_are_named(windows, message):
    with pytest.raises(InputError, match=None) as err:
        parse_windows(windows, NOW)
    assert message in str(err.value)


def test_windows_and_dates_together_are_refused():
    with pytest.raises(InputError, match="give windows, or start_date and end_date"):
        resolve_windows(
            DateWindow(start_date="2024-01-01", end_date="2024-01-31", windows="-5d/0d"), None
        )
    with pytest.raises(InputError, match="not two of them"):
        resolve_windows(DateWindow(lookback_days=3, windows="-5d/0d"), None)
