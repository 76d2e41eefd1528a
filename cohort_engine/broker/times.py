"""Druid time handling: ISO-8601 instants and intervals as epoch milliseconds, and granularities.

Instants are kept as integer milliseconds so that Druid's extreme values ("1000/3000", ETERNITY's
year -146136543) parse and print exactly; only SQL parameters are clamped to datetime's range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.relativedelta import relativedelta

from .errors import BadQuery, UnknownType, Unsupported

DAY_MS = 86_400_000
MIN_DATETIME_MS = -62135596800000  # 0001-01-01T00:00:00Z
MAX_DATETIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
JAVA_INT_MAX = 2**31 - 1  # Joda keeps each period field in an int
JAVA_LONG_MAX = 2**63 - 1

_INSTANT = re.compile(
    r"^(?P<y>[+-]?\d{1,9})(?:-(?P<mo>\d\d)(?:-(?P<d>\d\d))?)?"
    r"(?:T(?P<h>\d\d)(?::?(?P<mi>\d\d)(?::?(?P<s>\d\d)(?:[.,](?P<f>\d{1,9}))?)?)?)?"
    r"(?P<z>Z|[+-]\d\d(?::?\d\d)?)?$"
)
_PERIOD = re.compile(
    r"^P(?:(?P<Y>\d+)Y)?(?:(?P<M>\d+)M)?(?:(?P<W>\d+)W)?(?:(?P<D>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, for any year."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number since 1970-01-01."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def parse_instant(text: str, path: str) -> int:
    """Epoch ms of an ISO-8601 instant; a value without a zone is UTC, as on a default Druid."""
    m = _INSTANT.match(text.strip())
    if not m:
        raise BadQuery(f"{path}: {text!r} is not an ISO-8601 time")
    year = int(m["y"])
    month, day = int(m["mo"] or 1), int(m["d"] or 1)
    hour, minute, second = int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 24 and minute < 60 and second < 60):
        raise BadQuery(f"{path}: {text!r} is not a valid time")
    millis = int((m["f"] or "0").ljust(3, "0")[:3])
    ms = (days_from_civil(year, month, day) * DAY_MS + ((hour * 60 + minute) * 60 + second) * 1000 + millis)
    zone = m["z"]
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        ms -= sign * offset * 60_000
    return ms


@dataclass(frozen=True)
class Period:
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    millis: int = 0

    @property
    def fixed_ms(self) -> int | None:
        """Its length in ms when it has no calendar part, else None."""
        if self.years or self.months:
            return None
        return (self.weeks * 7 + self.days) * DAY_MS + self.millis

    def add_to(self, ms: int, sign: int = 1) -> int:
        """ms moved by this period in UTC (month ends clamp, as in Joda)."""
        if self.years or self.months:
            days, rest = divmod(ms, DAY_MS)
            y, m, d = civil_from_days(days)
            total = y * 12 + (m - 1) + sign * (self.years * 12 + self.months)
            y, m = divmod(total, 12)
            m += 1
            last = days_from_civil(y + (m == 12), m % 12 + 1, 1) - days_from_civil(y, m, 1)
            ms = days_from_civil(y, m, min(d, last)) * DAY_MS + rest
        return ms + sign * ((self.weeks * 7 + self.days) * DAY_MS + self.millis)


def parse_period(text: str, path: str) -> Period:
    m = _PERIOD.match(text) if isinstance(text, str) else None
    if not m or text in ("P", "PT"):
        raise BadQuery(f"{path}: {text!r} is not an ISO-8601 period")
    g = {k: (v or "0") for k, v in m.groupdict().items()}
    if any(float(digits) > JAVA_INT_MAX for digits in g.values()):
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-8:]}"
        raise BadQuery(f"{path}: period {shown!r} has a field above {JAVA_INT_MAX} (Joda periods hold ints)")
    millis = (int(g["h"]) * 3600 + int(g["m"]) * 60) * 1000 + round(float(g["s"]) * 1000)
    return Period(int(g["Y"]), int(g["M"]), int(g["W"]), int(g["D"]), millis)


def parse_interval(text: str, path: str) -> tuple[int, int]:
    """[start, end) in epoch ms of "start/end", "start/period" or "period/end"."""
    if not isinstance(text, str) or text.count("/") != 1:
        raise BadQuery(f"{path}: {text!r} is not an ISO-8601 interval 'start/end'")
    left, right = text.split("/")
    if left.startswith("P") and right.startswith("P"):
        raise BadQuery(f"{path}: {text!r} needs at least one instant")
    if left.startswith("P"):
        end = parse_instant(right, path)
        start = parse_period(left, path).add_to(end, -1)
    else:
        start = parse_instant(left, path)
        end = parse_period(right, path).add_to(start) if right.startswith("P") else parse_instant(right, path)
    if end < start:
        raise BadQuery(f"{path}: interval {text!r} ends before it starts")
    return start, end


def parse_intervals(spec, path: str = "intervals") -> list[tuple[int, int]]:
    """The query's intervals: a string, a list of strings, or {"type": "intervals", "intervals": [...]}."""
    if spec is None:
        raise BadQuery(f"{path} is required")
    if isinstance(spec, dict):
        kind = spec.get("type")
        if kind == "segments":
            raise Unsupported(f"{path}.type 'segments' is not supported (use a list of intervals)")
        if kind not in ("intervals", None):
            raise UnknownType(f"{path}.type", kind, "QuerySegmentSpec", {"intervals", "segments"})
        spec = spec.get("intervals")
        path = f"{path}.intervals"
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise BadQuery(f"{path} must be an interval string or a non-empty list of them")
    return [parse_interval(s, f"{path}[{i}]") for i, s in enumerate(spec)]


def clamp_long(ms: int) -> int:
    """ms within a signed 64-bit integer, as SQL parameters need (a 9-digit year overflows it)."""
    return min(max(ms, -JAVA_LONG_MAX - 1), JAVA_LONG_MAX)


def clamp_datetime(ms: int) -> datetime:
    """A naive UTC datetime for ms, clamped to datetime's range (stored times all lie inside it)."""
    ms = min(max(ms, MIN_DATETIME_MS), MAX_DATETIME_MS)
    return datetime(1970, 1, 1) + timedelta(milliseconds=ms)


def format_ms(ms: int, zone: ZoneInfo | None = None) -> str:
    """Druid's timestamp text: 2024-03-01T00:00:00.000Z, or with the zone's offset."""
    offset = ""
    if zone is not None and MIN_DATETIME_MS + DAY_MS <= ms <= MAX_DATETIME_MS - DAY_MS:
        delta = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone).utcoffset()
        minutes = int(delta.total_seconds() // 60)
        if minutes:
            ms += minutes * 60_000
            sign = "-" if minutes < 0 else "+"
            offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    days, rest = divmod(ms, DAY_MS)
    y, m, d = civil_from_days(days)
    secs, millis = divmod(rest, 1000)
    year = f"{y:04d}" if y >= 0 else f"-{-y:04d}"
    return (f"{year}-{m:02d}-{d:02d}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{millis:03d}"
            + (offset or "Z"))


_SIMPLE = {
    "second": ("second", 1000), "minute": ("minute", 60_000), "five_minute": (None, 300_000),
    "ten_minute": (None, 600_000), "fifteen_minute": (None, 900_000), "thirty_minute": (None, 1_800_000),
    "hour": ("hour", 3_600_000), "six_hour": (None, 21_600_000), "eight_hour": (None, 28_800_000),
    "day": ("day", DAY_MS), "week": ("week", None), "month": ("month", None), "quarter": ("quarter", None),
    "year": ("year", None),
}
_CALENDAR_PERIODS = {
    Period(years=1): "year", Period(months=3): "quarter", Period(months=1): "month", Period(weeks=1): "week",
    Period(days=1): "day", Period(millis=3_600_000): "hour", Period(millis=60_000): "minute",
    Period(millis=1000): "second",
}
_STEPS = {"year": relativedelta(years=1), "quarter": relativedelta(months=3), "month": relativedelta(months=1),
          "week": relativedelta(weeks=1), "day": relativedelta(days=1)}


_UNIT_MS = {"second": 1000, "minute": 60_000, "hour": 3_600_000, "day": DAY_MS, "week": 7 * DAY_MS}
_MONTHS_PER_UNIT = {"month": 1, "quarter": 3, "year": 12}


def _month_index(ms: int) -> int:
    y, m, _ = civil_from_days(ms // DAY_MS)
    return y * 12 + m - 1


@dataclass(frozen=True)
class Granularity:
    """How rows are bucketed in time: everything (`all`), a calendar unit in a zone, or fixed ms."""

    kind: str  # all | none | unit | fixed
    unit: str | None = None
    fixed_ms: int | None = None
    zone: ZoneInfo | None = None

    @property
    def is_all(self) -> bool:
        return self.kind == "all"

    def bucket_sql(self, time_sql: str) -> str:
        """SQL for a naive-UTC TIMESTAMP expression's bucket start, as epoch ms."""
        if self.kind == "none":
            return f"epoch_ms({time_sql})"
        if self.kind == "fixed":
            d = int(self.fixed_ms)
            return f"(epoch_ms({time_sql}) - (((epoch_ms({time_sql}) % {d}) + {d}) % {d}))"
        if self.zone is None:
            return f"epoch_ms(date_trunc('{self.unit}', {time_sql}))"
        zone = "'" + self.zone.key.replace("'", "''") + "'"
        return (f"epoch_ms(timezone({zone}, date_trunc('{self.unit}', "
                f"timezone({zone}, timezone('UTC', {time_sql})))))")

    def next_bucket(self, ms: int) -> int:
        if self.kind == "none":
            return ms + 1
        if self.kind == "fixed":
            return ms + int(self.fixed_ms)
        if self.unit in ("hour", "minute", "second"):
            return ms + {"hour": 3_600_000, "minute": 60_000, "second": 1000}[self.unit]
        zone = self.zone or UTC
        local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone).replace(tzinfo=None)
        nxt = (local + _STEPS[self.unit]).replace(tzinfo=zone)
        return int(nxt.timestamp() * 1000)

    def format(self, ms: int) -> str:
        return format_ms(ms, self.zone)

    def bucket_count(self, lo: int, hi: int) -> int:
        """Buckets meeting [lo, hi): exact for UTC sub-day units, at most 2 over for calendar ones."""
        if hi <= lo or self.is_all:
            return 1 if hi > lo else 0
        if self.kind == "none":
            return hi - lo
        if self.kind == "fixed":
            d = int(self.fixed_ms)
            return (hi - 1) // d - lo // d + 1
        if self.unit in _MONTHS_PER_UNIT:
            # Months counted in UTC over the span widened by the largest zone offset (14 h).
            n = _MONTHS_PER_UNIT[self.unit]
            first, last = _month_index(lo - 14 * 3_600_000), _month_index(hi - 1 + 14 * 3_600_000)
            return (last - first) // n + 2
        length = _UNIT_MS[self.unit]
        if self.zone is None and self.unit in ("second", "minute", "hour", "day"):
            return (hi - 1) // length - lo // length + 1
        # Zone offsets and DST moves shift boundaries by hours; they do not add up over a span.
        return (hi - lo) // length + 2


def parse_granularity(spec, path: str = "granularity") -> Granularity:
    if spec is None:
        return Granularity("all")
    if isinstance(spec, str):
        name = spec.lower()
        if name == "all":
            return Granularity("all")
        if name == "none":
            return Granularity("none")
        if name not in _SIMPLE:
            raise BadQuery(f"{path}: unknown granularity {spec!r}")
        unit, fixed = _SIMPLE[name]
        return Granularity("unit", unit=unit) if unit else Granularity("fixed", fixed_ms=fixed)
    if not isinstance(spec, dict):
        raise BadQuery(f"{path} must be a string or an object")
    kind = spec.get("type")
    if kind in ("all", "none"):
        return Granularity(kind)
    if kind == "duration":
        if spec.get("origin") not in (None, "1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00Z"):
            raise Unsupported(f"{path}.origin is not supported")
        duration = spec.get("duration")
        if not isinstance(duration, int) or isinstance(duration, bool) or not 0 < duration <= JAVA_LONG_MAX:
            raise BadQuery(f"{path}.duration must be a positive number of ms (a Java long)")
        return Granularity("fixed", fixed_ms=duration)
    if kind != "period":
        raise BadQuery(f"{path}.type {kind!r} is not a granularity type")
    if spec.get("origin") is not None:
        raise Unsupported(f"{path}.origin is not supported")
    period = parse_period(spec.get("period"), f"{path}.period")
    zone = None
    if spec.get("timeZone") not in (None, "UTC", "Etc/UTC"):
        try:
            zone = ZoneInfo(spec["timeZone"])
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise BadQuery(f"{path}.timeZone {spec['timeZone']!r} is not a time zone") from None
    if period in _CALENDAR_PERIODS:
        return Granularity("unit", unit=_CALENDAR_PERIODS[period], zone=zone)
    fixed = period.fixed_ms
    if fixed and zone is None and fixed <= DAY_MS and DAY_MS % fixed == 0:
        return Granularity("fixed", fixed_ms=fixed)
    raise Unsupported(f"{path}: period {spec.get('period')!r} is not supported"
                      " (single calendar units, or UTC periods that divide a day)")
