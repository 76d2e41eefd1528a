"""core.crons: a project's daily refresh time as a cron, and the HH:MM it is given in."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from core.crons import daily_cron, parse_daily_time


@pytest.mark.parametrize("text, canonical", [("04:00", "04:00"), ("4:05", "04:05"), (" 23:59 ", "23:59"),
                                             ("00:00", "00:00")])
def test_daily_times_are_read_as_hh_mm(text, canonical):
    assert parse_daily_time(text) == canonical


@pytest.mark.parametrize("text", ["24:00", "12:60", "12", "12:5", "noon", "", "12:00:00", None])
def test_bad_daily_times_are_refused(text):
    with pytest.raises(ValueError, match="HH:MM"):
        parse_daily_time(text)


def test_daily_cron_fires_once_a_day_at_the_local_refresh_time():
    cron = daily_cron({"daily_refresh_time": "04:30"})
    assert cron == "30 4 * * *"
    zone = ZoneInfo("Asia/Shanghai")
    fires = croniter(cron, datetime(2024, 3, 1, 12, tzinfo=zone))
    assert [fires.get_next(datetime) for _ in range(2)] == [datetime(2024, 3, 2, 4, 30, tzinfo=zone),
                                                           datetime(2024, 3, 3, 4, 30, tzinfo=zone)]


def test_a_project_without_a_time_gets_the_default():
    assert daily_cron({"daily_refresh_time": None}) == daily_cron({}) == "0 4 * * *"
