"""Cron expressions of dynamic cohorts (native and Sensors): syntax, and "fires within the horizon"."""

from __future__ import annotations

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
