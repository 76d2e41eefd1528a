"""Time windows and durations resolved against a base time in the project's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta


def to_utc_naive(moment: datetime) -> datetime:
    """The UTC wall time of an aware datetime, without tzinfo (how the store keeps times)."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The aware start of a local calendar day."""
    return datetime.combine(day, time(), tzinfo=tz)


def parse_local(value: str, tz: ZoneInfo) -> datetime:
    """An ISO date or datetime string read as local time in tz (an explicit offset wins)."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def parse_base_time(value, tz: ZoneInfo) -> datetime:
    """A base time given as an aware datetime, ISO string (local if no zone) or epoch seconds."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
    return parse_local(str(value), tz)


def unit_start(day: date, unit: str) -> date:
    """The first day of the day/week(ISO, Monday)/month containing day."""
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def shift_units(day: date, unit: str, n: int) -> date:
    """day moved by n whole units (day, week or month)."""
    if unit == "day":
        return day + timedelta(days=n)
    if unit == "week":
        return day + timedelta(weeks=n)
    return day + relativedelta(months=n)


def resolve_window(window: dict, base_time: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a canonical window, as naive UTC datetimes."""
    if "last" in window:
        unit = window["unit"]
        anchor = unit_start(base_time.astimezone(tz).date(), unit)
        last_unit = shift_units(anchor, unit, -window["offset"])
        start_day = shift_units(last_unit, unit, -(window["last"] - 1))
        end_day = shift_units(last_unit, unit, 1)
        return to_utc_naive(local_midnight(start_day, tz)), to_utc_naive(local_midnight(end_day, tz))
    start, end = window["start"], window["end"]
    if len(start) == 10:
        start_day, end_day = date.fromisoformat(start), date.fromisoformat(end) + timedelta(days=1)
        return to_utc_naive(local_midnight(start_day, tz)), to_utc_naive(local_midnight(end_day, tz))
    return to_utc_naive(parse_local(start, tz)), to_utc_naive(parse_local(end, tz))


def duration_before(base_time: datetime, n: int, unit: str, tz: ZoneInfo) -> datetime:
    """base_time minus n units (calendar arithmetic in local time), as naive UTC."""
    if unit in ("minute", "hour"):
        # Elapsed time, so subtract in UTC: arithmetic on a datetime aware in a DST zone moves
        # its wall clock, which makes "2 hours before 03:30 EDT" 01:30 EST, one hour earlier.
        return to_utc_naive(base_time) - timedelta(**{unit + "s": n})
    local = base_time.astimezone(tz).replace(tzinfo=None)
    shifted = local - relativedelta(**{unit + "s": n})
    return to_utc_naive(shifted.replace(tzinfo=tz))


def day_range(low: str, high: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start of low, start of the day after high) for two local dates, as naive UTC."""
    start = local_midnight(date.fromisoformat(low), tz)
    end = local_midnight(date.fromisoformat(high) + timedelta(days=1), tz)
    return to_utc_naive(start), to_utc_naive(end)
