"""Named edge cases of the cohort semantics, each with a hand-written answer checked against both
the engine (through ProjectEngine.compute over a real store) and the brute-force reference."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pyroaring import BitMap

from cohort_engine.definition import parse_definition
from cohort_engine.evaluate import EngineError
from cohort_engine.project import ProjectEngine

from .reference import Dataset, create_project, load_into, reference_outcome

USER_KINDS = {"city": "string", "level": "number", "vip": "boolean", "signup": "time"}
EVENT_KINDS = {"item": "string", "price": "number"}


class Env:
    """A project loaded with a small Dataset, answering trees from the engine and the reference."""

    def __init__(self, engine_config, tz_name: str, data: Dataset):
        self.tz = ZoneInfo(tz_name)
        self.data = data
        self.engine = ProjectEngine(engine_config, create_project(engine_config.database_url, tz_name))
        load_into(self.engine, data, Path(engine_config.store_dir).parent / "input")

    def engine_members(self, raw: dict, base: datetime, cohorts: dict[int, set[str]] | None = None) -> set[str]:
        cohorts = cohorts or {}

        def load_cohort(cohort_id):
            keys = cohorts.get(cohort_id)
            return None if keys is None else BitMap(self.engine.encode(sorted(keys)).tolist())

        result = self.engine.compute(parse_definition(raw), base_time=base, load_cohort=load_cohort)
        return set(self.engine.iter_keys(result.bitmap))

    def check(self, raw: dict, base: datetime, expected: set[str], cohorts=None) -> None:
        reference = reference_outcome(self.data, self.tz, parse_definition(raw), base, cohorts)
        assert reference == (None, expected), "the reference disagrees with the hand-written answer"
        assert self.engine_members(raw, base, cohorts) == expected

    def error_code(self, raw: dict, base: datetime, cohorts=None) -> str:
        code, _ = reference_outcome(self.data, self.tz, parse_definition(raw), base, cohorts)
        with pytest.raises(EngineError) as caught:
            self.engine_members(raw, base, cohorts)
        assert caught.value.code == code, "engine and reference name different errors"
        return caught.value.code


def local(text: str, tz: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def event(key: str, name: str, moment: datetime, **props) -> dict:
    return {"key": key, "event": name, "time": moment, **props}


BASE = utc("2024-03-10T12:00:00")
WEEK = {"start": "2024-03-04", "end": "2024-03-10"}


@pytest.fixture
def shop(engine_config) -> Env:
    """a, b, c have profiles (c without events); d has events but no profile row."""
    profiles = [
        {"key": "a", "city": "Paris", "level": 1, "vip": True, "signup": utc("2024-03-01T00:00:00")},
        {"key": "b", "city": None, "level": 2, "vip": False, "signup": None},
        {"key": "c", "city": "", "level": 3, "vip": None, "signup": utc("2024-03-10T12:00:00")},
    ]
    events = [
        event("a", "pay", utc("2024-03-05T10:00:00"), item="x", price=5.0),
        event("a", "pay", utc("2024-03-06T10:00:00"), item="y", price=7.0),
        event("a", "view", utc("2024-03-06T10:00:00"), item=None, price=None),
        event("b", "pay", utc("2024-03-07T10:00:00"), item="x", price=None),
        event("d", "view", utc("2024-03-08T10:00:00"), item="x", price=1.0),
        event("d", "pay", utc("2024-03-08T10:00:01"), item="z", price=2.0),
    ]
    return Env(engine_config, "UTC", Dataset(profiles, events, USER_KINDS, EVENT_KINDS))


def pays(cmp: str, values: list, **agg) -> dict:
    return {"type": "event", "event": "pay", "window": WEEK, "agg": agg or {"fn": "count"}, "cmp": cmp, "values": values}


def test_users_without_events_have_count_zero_and_match_count_lt(shop):
    shop.check(pays("lt", [1]), BASE, {"c"})
    shop.check(pays("eq", [0]), BASE, {"c"})
    shop.check(pays("lt", [3]), BASE, {"a", "b", "c", "d"})
    shop.check(pays("eq", [0], fn="sum", property="price"), BASE, {"b", "c"})
    shop.check(pays("lt", [1], fn="days"), BASE, {"c"})
    shop.check(pays("eq", [0], fn="count_distinct", property="price"), BASE, {"b", "c"})


def test_null_and_absent_values_match_negative_comparators_only(shop):
    shop.check({"type": "profile", "property": "city", "cmp": "ne", "values": ["Paris"]}, BASE, {"b", "c", "d"})
    shop.check({"type": "profile", "property": "city", "cmp": "eq", "values": ["Paris"]}, BASE, {"a"})
    shop.check({"type": "profile", "property": "city", "cmp": "not_contains", "values": ["ar"]}, BASE, {"b", "c", "d"})
    shop.check({"type": "profile", "property": "city", "cmp": "is_set", "values": []}, BASE, {"a", "c"})
    shop.check({"type": "profile", "property": "city", "cmp": "not_set", "values": []}, BASE, {"b", "d"})
    shop.check({"type": "profile", "property": "city", "cmp": "is_empty", "values": []}, BASE, {"b", "c", "d"})
    shop.check({"type": "profile", "property": "city", "cmp": "not_empty", "values": []}, BASE, {"a"})
    shop.check({"type": "profile", "property": "vip", "cmp": "is_false", "values": []}, BASE, {"b"})
    shop.check({"type": "profile", "property": "city", "cmp": "lt", "values": ["Z"]}, BASE, {"a", "c"})
    # In an event filter too: `ne` keeps the rows whose item is null.
    shop.check({**pays("gte", [1]), "event": "*", "filter": {"property": "item", "cmp": "ne", "values": ["x"]}},
               BASE, {"a", "d"})


def test_between_is_inclusive_at_both_ends(shop):
    shop.check({"type": "profile", "property": "level", "cmp": "between", "values": [2, 3]}, BASE, {"b", "c"})
    shop.check(pays("between", [2, 2]), BASE, {"a"})
    shop.check(pays("between", [5, 7], fn="max", property="price"), BASE, {"a"})


def test_avg_min_max_of_nothing_is_null_and_never_matches(shop):
    # b paid once with a null price; c never paid: neither has an average, so neither matches,
    # not even `ne` or a range that would include 0.
    for fn in ("avg", "min", "max"):
        shop.check(pays("ne", [6], fn=fn, property="price"), BASE, {"d"} if fn == "avg" else {"a", "d"})
        shop.check(pays("lte", [100], fn=fn, property="price"), BASE, {"a", "d"})
    shop.check(pays("eq", [6], fn="avg", property="price"), BASE, {"a"})


def test_empty_cohort_and_cohort_of_everyone(shop):
    everyone = {"a", "b", "c", "d"}
    shop.check({"type": "ids", "keys": []}, BASE, set())
    shop.check({"op": "not", "child": {"type": "ids", "keys": []}}, BASE, everyone)
    shop.check(pays("gte", [0]), BASE, everyone)
    shop.check({"op": "and", "children": [{"type": "ids", "keys": ["a"]}, {"type": "ids", "keys": ["b"]}]}, BASE, set())
    shop.check({"type": "cohort", "cohort_id": 5}, BASE, set(), cohorts={5: set()})


def test_ids_outside_the_universe_count_but_not_is_within_the_universe(shop):
    shop.check({"type": "ids", "keys": ["a", "stranger"]}, BASE, {"a", "stranger"})
    shop.check({"op": "not", "child": {"type": "ids", "keys": ["a", "stranger"]}}, BASE, {"b", "c", "d"})


def test_sequence_needs_strictly_increasing_times(shop):
    # a viewed and paid at the same instant (03-06 10:00): that is not "view then pay".
    view_then_pay = {"type": "sequence", "window": WEEK, "steps": [{"event": "view"}, {"event": "pay"}]}
    shop.check(view_then_pay, BASE, {"d"})
    pay_then_pay = {"type": "sequence", "window": WEEK, "steps": [{"event": "pay"}, {"event": "pay"}]}
    shop.check(pay_then_pay, BASE, {"a"})
    filtered = {"type": "sequence", "window": WEEK,
                "steps": [{"event": "pay", "filter": {"property": "item", "cmp": "eq", "values": ["y"]}},
                          {"event": "pay"}]}
    shop.check(filtered, BASE, set())


def test_within_last_includes_the_base_time_and_before_last_is_strict(shop):
    # c signed up exactly at the base time, a 9.5 days before it.
    shop.check({"type": "profile", "property": "signup", "cmp": "within_last", "values": [0, "minute"]}, BASE, {"c"})
    shop.check({"type": "profile", "property": "signup", "cmp": "before_last", "values": [0, "minute"]}, BASE, {"a"})
    shop.check({"type": "profile", "property": "signup", "cmp": "within_last", "values": [10, "day"]}, BASE, {"a", "c"})
    shop.check({"type": "profile", "property": "signup", "cmp": "before_last", "values": [228, "hour"]}, BASE, set())
    shop.check({"type": "profile", "property": "signup", "cmp": "before_last", "values": [227, "hour"]}, BASE, {"a"})


def test_unknown_property_is_reported(shop):
    assert shop.error_code({"type": "profile", "property": "age", "cmp": "eq", "values": [1]}, BASE) == "unknown_property"
    assert shop.error_code({**pays("gte", [1]), "filter": {"property": "age", "cmp": "is_set"}}, BASE) == "unknown_property"
    assert shop.error_code(pays("gte", [1], fn="sum", property="age"), BASE) == "unknown_property"


def test_string_comparators_on_other_types_are_type_mismatch(shop):
    for cmp in ("regex", "contains", "starts_with", "ends_with", "not_contains"):
        tree = {"type": "profile", "property": "level", "cmp": cmp, "values": ["1"]}
        assert shop.error_code(tree, BASE) == "type_mismatch"
    assert shop.error_code({"type": "profile", "property": "city", "cmp": "is_true", "values": []}, BASE) == "type_mismatch"
    assert shop.error_code({"type": "profile", "property": "vip", "cmp": "gt", "values": [0]}, BASE) == "type_mismatch"
    assert shop.error_code(
        {"type": "profile", "property": "level", "cmp": "within_last", "values": [1, "day"]}, BASE) == "type_mismatch"
    assert shop.error_code(pays("gte", [1], fn="sum", property="item"), BASE) == "type_mismatch"


def test_values_that_do_not_fit_the_column_are_bad_value(shop):
    assert shop.error_code({"type": "profile", "property": "level", "cmp": "eq", "values": ["abc"]}, BASE) == "bad_value"
    assert shop.error_code({"type": "profile", "property": "vip", "cmp": "eq", "values": ["maybe"]}, BASE) == "bad_value"
    assert shop.error_code({"type": "profile", "property": "signup", "cmp": "gt", "values": ["soon"]}, BASE) == "bad_value"


def test_values_are_coerced_to_the_column_type(shop):
    shop.check({"type": "profile", "property": "level", "cmp": "eq", "values": ["2", 3.0]}, BASE, {"b", "c"})
    shop.check({"type": "profile", "property": "vip", "cmp": "eq", "values": ["true"]}, BASE, {"a"})
    shop.check({"type": "profile", "property": "vip", "cmp": "eq", "values": [0]}, BASE, {"b"})
    shop.check({"type": "profile", "property": "signup", "cmp": "gte", "values": ["2024-03-10T12:00:00"]}, BASE, {"c"})


def test_missing_cohort_version_is_cohort_not_ready(shop):
    assert shop.error_code({"type": "cohort", "cohort_id": 9}, BASE) == "cohort_not_ready"


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Shanghai"])
def test_day_boundaries_are_local_midnight(engine_config, zone):
    events = [
        event("late", "pay", local("2024-11-02T23:59:59", zone)),
        event("early", "pay", local("2024-11-03T00:00:00", zone)),
        event("both", "pay", local("2024-11-02T23:59:59", zone)),
        event("both", "pay", local("2024-11-03T00:00:00", zone)),
    ]
    env = Env(engine_config, zone, Dataset([], events, {}, {}))
    base = local("2024-11-03T08:00:00", zone)

    def paid(window, cmp="gte", values=(1,), fn="count"):
        return {"type": "event", "event": "pay", "window": window, "agg": {"fn": fn}, "cmp": cmp, "values": list(values)}

    env.check(paid({"start": "2024-11-02", "end": "2024-11-02"}), base, {"late", "both"})
    env.check(paid({"start": "2024-11-03", "end": "2024-11-03"}), base, {"early", "both"})
    env.check(paid({"start": "2024-11-02T23:59:59", "end": "2024-11-03T00:00:00"}), base, {"late", "both"})
    env.check(paid({"start": "2024-11-03T00:00:00", "end": "2024-11-03T00:00:01"}), base, {"early", "both"})
    env.check(paid({"last": 1, "unit": "day"}), base, {"early", "both"})
    env.check(paid({"last": 1, "offset": 1, "unit": "day"}), base, {"late", "both"})
    env.check(paid({"last": 2, "unit": "day"}, fn="days", cmp="eq", values=(2,)), base, {"both"})
    # 2024-11-02 is a Saturday, 11-03 a Sunday: one ISO week; November starts on the 1st.
    env.check(paid({"last": 1, "unit": "week"}, cmp="eq", values=(2,)), base, {"both"})
    env.check(paid({"last": 1, "unit": "month"}), base, {"late", "early", "both"})


def test_datetime_window_across_the_dst_fold(engine_config):
    """New York falls back at 2024-11-03 02:00 EDT: 01:30 local happens twice; the window reads the first."""
    zone = "America/New_York"
    events = [
        event("edt", "pay", utc("2024-11-03T05:30:00")),  # 01:30 EDT
        event("est", "pay", utc("2024-11-03T06:30:00")),  # 01:30 EST, an hour later
    ]
    env = Env(engine_config, zone, Dataset([], events, {}, {}))
    window = {"start": "2024-11-03T01:00:00", "end": "2024-11-03T01:45:00"}
    leaf = {"type": "event", "event": "pay", "window": window, "cmp": "gte", "values": [1]}
    env.check(leaf, local("2024-11-04T00:00:00", zone), {"edt"})
    day = {"type": "event", "event": "pay", "window": {"start": "2024-11-03", "end": "2024-11-03"}, "cmp": "gte",
           "values": [1]}
    env.check(day, local("2024-11-04T00:00:00", zone), {"edt", "est"})


def test_hours_are_elapsed_time_across_the_spring_forward(engine_config):
    """03:30 EDT on 2024-03-10 is only 1.5 hours after 01:00 EST, though the clock moved 2.5 hours."""
    zone = "America/New_York"
    profiles = [{"key": "early", "signup": utc("2024-03-10T05:45:00")},  # 00:45 EST
                {"key": "late", "signup": utc("2024-03-10T06:45:00")}]  # 01:45 EST
    env = Env(engine_config, zone, Dataset(profiles, [], {"signup": "time"}, {}))
    base = local("2024-03-10T03:30:00", zone)
    signed_up = {"type": "profile", "property": "signup", "cmp": "within_last"}
    env.check({**signed_up, "values": [1, "hour"]}, base, {"late"})
    env.check({**signed_up, "values": [100, "minute"]}, base, {"late"})
    env.check({**signed_up, "values": [2, "hour"]}, base, {"early", "late"})
    env.check({**signed_up, "cmp": "before_last", "values": [90, "minute"]}, base, {"early"})
