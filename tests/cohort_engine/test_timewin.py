"""Window and duration resolution against hand-computed UTC bounds (DST days included)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from cohort_engine.timewin import day_range, duration_before, parse_base_time, resolve_window

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC_ZONE = ZoneInfo("UTC")


def naive(text: str) -> datetime:
    """A naive UTC datetime, how the store keeps times."""
    return datetime.fromisoformat(text)


def at(text: str, tz: ZoneInfo) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


@pytest.mark.parametrize("window, base, tz, start, end", [
    # New York springs forward on 2024-03-10: that local day is 23 hours long.
    ({"last": 1, "offset": 0, "unit": "day"}, "2024-03-10T15:00:00", NEW_YORK,
     "2024-03-10T05:00:00", "2024-03-11T04:00:00"),
    ({"last": 7, "offset": 1, "unit": "day"}, "2024-03-12T00:00:00", NEW_YORK,
     "2024-03-05T05:00:00", "2024-03-12T04:00:00"),
    # ...and falls back on 2024-11-03, a 25-hour day.
    ({"last": 1, "offset": 1, "unit": "day"}, "2024-11-04T23:59:59", NEW_YORK,
     "2024-11-03T04:00:00", "2024-11-04T05:00:00"),
    # Weeks start on Monday: 2024-03-13 is a Wednesday, its week is 03-11..03-17.
    ({"last": 1, "offset": 0, "unit": "week"}, "2024-03-13T10:00:00", SHANGHAI,
     "2024-03-10T16:00:00", "2024-03-17T16:00:00"),
    ({"last": 2, "offset": 1, "unit": "week"}, "2024-03-13T10:00:00", SHANGHAI,
     "2024-02-25T16:00:00", "2024-03-10T16:00:00"),
    # A Monday base time is the first day of its week.
    ({"last": 1, "offset": 0, "unit": "week"}, "2024-03-11T00:00:00", UTC_ZONE,
     "2024-03-11T00:00:00", "2024-03-18T00:00:00"),
    # Months: the leap February, and a window crossing the year.
    ({"last": 1, "offset": 1, "unit": "month"}, "2024-03-31T23:30:00", UTC_ZONE,
     "2024-02-01T00:00:00", "2024-03-01T00:00:00"),
    ({"last": 3, "offset": 0, "unit": "month"}, "2024-03-31T23:30:00", UTC_ZONE,
     "2024-01-01T00:00:00", "2024-04-01T00:00:00"),
    ({"last": 2, "offset": 1, "unit": "month"}, "2024-01-15T08:00:00", UTC_ZONE,
     "2023-11-01T00:00:00", "2024-01-01T00:00:00"),
    ({"last": 1, "offset": 0, "unit": "month"}, "2024-11-20T08:00:00", NEW_YORK,
     "2024-11-01T04:00:00", "2024-12-01T05:00:00"),
    # Absolute dates are whole local days, inclusive; datetimes are [start, end) local times.
    ({"start": "2024-11-03", "end": "2024-11-03"}, "2025-01-01T00:00:00", NEW_YORK,
     "2024-11-03T04:00:00", "2024-11-04T05:00:00"),
    ({"start": "2024-02-28", "end": "2024-03-01"}, "2025-01-01T00:00:00", SHANGHAI,
     "2024-02-27T16:00:00", "2024-03-01T16:00:00"),
    ({"start": "2024-03-10T01:30:00", "end": "2024-03-10T03:30:00"}, "2025-01-01T00:00:00", NEW_YORK,
     "2024-03-10T06:30:00", "2024-03-10T07:30:00"),
])
def test_resolve_window(window, base, tz, start, end):
    assert resolve_window(window, at(base, tz), tz) == (naive(start), naive(end))


def test_relative_window_uses_the_local_date_of_the_base_time():
    # 2024-03-31T16:30Z is already April 1st in Shanghai.
    base = datetime(2024, 3, 31, 16, 30, tzinfo=UTC)
    assert resolve_window({"last": 1, "offset": 0, "unit": "month"}, base, SHANGHAI) == (
        naive("2024-03-31T16:00:00"), naive("2024-04-30T16:00:00"))
    assert resolve_window({"last": 1, "offset": 0, "unit": "day"}, base, UTC_ZONE) == (
        naive("2024-03-31T00:00:00"), naive("2024-04-01T00:00:00"))


@pytest.mark.parametrize("base, tz, n, unit, expected", [
    # Minutes and hours are elapsed time: two hours before 03:30 EDT is 00:30 EST.
    ("2024-03-10T03:30:00", NEW_YORK, 2, "hour", "2024-03-10T05:30:00"),
    ("2024-03-10T03:30:00", NEW_YORK, 90, "minute", "2024-03-10T06:00:00"),
    # Days, weeks and months move the local calendar: one "day" before is 23 hours here.
    ("2024-03-10T03:30:00", NEW_YORK, 1, "day", "2024-03-09T08:30:00"),
    ("2024-03-14T12:00:00", NEW_YORK, 1, "week", "2024-03-07T17:00:00"),
    ("2024-03-31T12:00:00", UTC_ZONE, 1, "month", "2024-02-29T12:00:00"),
    ("2024-01-31T08:00:00", SHANGHAI, 2, "month", "2023-11-30T00:00:00"),
    ("2024-01-31T08:00:00", SHANGHAI, 0, "day", "2024-01-31T00:00:00"),
])
def test_duration_before(base, tz, n, unit, expected):
    assert duration_before(at(base, tz), n, unit, tz) == naive(expected)


def test_day_range_covers_whole_local_days():
    assert day_range("2024-11-03", "2024-11-03", NEW_YORK) == (naive("2024-11-03T04:00:00"), naive("2024-11-04T05:00:00"))
    assert day_range("2024-01-01", "2024-01-31", SHANGHAI) == (naive("2023-12-31T16:00:00"), naive("2024-01-31T16:00:00"))


def test_parse_base_time_forms():
    expected = datetime(2024, 3, 1, 4, 0, tzinfo=UTC)
    assert parse_base_time("2024-03-01T12:00:00", SHANGHAI) == expected
    assert parse_base_time("2024-03-01T04:00:00+00:00", SHANGHAI) == expected
    assert parse_base_time(datetime(2024, 3, 1, 12), SHANGHAI) == expected
    assert parse_base_time(expected, NEW_YORK) == expected
    assert parse_base_time(expected.timestamp(), SHANGHAI) == expected
    assert parse_base_time(int(expected.timestamp() * 1000), SHANGHAI) == expected
    # A bare date is local midnight.
    assert parse_base_time("2024-03-01", SHANGHAI) == datetime(2024, 2, 29, 16, 0, tzinfo=UTC)
