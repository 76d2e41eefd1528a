"""Cron expressions of dynamic cohorts: syntax, "fires within the horizon", and each project's daily refresh time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter
from marshmallow import ValidationError

# A cron must fire within this long of being submitted; long enough for 29 February (docs/jobs.md).
HORIZON_YEARS = 5
HORIZON = timedelta(days=HORIZON_YEARS * 366)


def next_fire(expression: str, start: datetime) -> datetime | None:
    """The first fire time after start within the horizon, or None when there is none."""
    try:
        fire = croniter(expression, start, max_years_between_matches=HORIZON_YEARS + 1).get_next(datetime)
    except CroniterBadDateError:
        return None  # e.g. 30 February: croniter gives up looking
    return fire if fire - start <= HORIZON else None


def check_fires(expression: str, now: datetime | None = None) -> None:
    """Raise ValidationError unless the (syntactically valid) expression fires within the horizon."""
    if next_fire(expression, now or datetime.now(UTC)) is None:
        raise ValidationError(f"this cron never fires within the next {HORIZON_YEARS} years (e.g. a day that"
                              " does not exist in that month); give a schedule that fires")


# A project's daily refresh time when none was set (the migration's column default, docs/jobs.md).
DEFAULT_DAILY_TIME = "04:00"
_DAILY_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")


def parse_daily_time(text: str) -> str:
    """The canonical "HH:MM" of a local time of day ("4:30" -> "04:30"); ValueError naming the problem."""
    match = _DAILY_TIME.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"a daily refresh time is HH:MM, 00:00 .. 23:59, got {text!r}")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


def daily_cron(project: dict) -> str:
    """"M H * * *": the cron of a cohort recomputed daily at the project's refresh time (read in its zone)."""
    hour, minute = parse_daily_time(project.get("daily_refresh_time") or DEFAULT_DAILY_TIME).split(":")
    return f"{int(minute)} {int(hour)} * * *"
