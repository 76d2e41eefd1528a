"""Each Ark function, relation and time form, computed by the engine from its translation, equals the brute-force
reference over the same rule written as a native canonical tree (tests/cohort_engine/reference.py).

The native trees are written by hand from docs/dialects/ark.md, in equivalent forms where one exists
(EMPTY as "set and empty", a relative range as "within a, not within b"), so that the translation
and the documented meaning meet only in the member sets.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from cohort_engine.config import EngineConfig
from cohort_engine.definition import parse_definition
from cohort_engine.project import ProjectEngine
from dialects.ark.translate import to_canonical
from tests.cohort_engine.backends.test_conformance import DATASETS, make_dataset
from tests.cohort_engine.reference import EngineRunner, create_project, load_into, reference_outcome

from .test_translate import content, event, user

SEED, ZONE, FIRST_DAY, DAYS = DATASETS["shanghai-leap-day"]
TZ = ZoneInfo(ZONE)
BASE = datetime.combine(FIRST_DAY + timedelta(days=DAYS - 3), time(9, 30), tzinfo=TZ)
EVERYONE = {"op": "not", "child": {"type": "ids", "keys": []}}


@pytest.fixture(scope="module")
def world(database_url, redis_url, tmp_path_factory):
    data = make_dataset(SEED, FIRST_DAY, DAYS, TZ)
    root = tmp_path_factory.mktemp("ark-semantics")
    config = EngineConfig(database_url=database_url, redis_url=redis_url, store_dir=str(root / "store"),
                          key_prefix="cohorts-test", threads=1)
    engine = ProjectEngine(config, create_project(database_url, ZONE))
    load_into(engine, data, root / "input")
    runner = EngineRunner(engine, sorted(data.universe()))
    yield data, runner
    runner.close()


def day(n: int) -> str:
    return (FIRST_DAY + timedelta(days=n)).isoformat()


def p(prop, cmp, values=()):
    return {"type": "profile", "property": prop, "cmp": cmp, "values": list(values)}


def f(prop, cmp, values=()):
    return {"property": prop, "cmp": cmp, "values": list(values)}


def count(window, cmp="gte", values=(1,), event_name="pay", **extra):
    return {"type": "event", "event": event_name, "window": window, "cmp": cmp, "values": list(values), **extra}


def both(*nodes):
    return {"op": "and", "children": list(nodes)}


def not_(node):
    return {"op": "not", "child": node}


LAST_7 = {"last": 7, "offset": 0, "unit": "day"}
# (Ark rule, the same rule as a native tree)
USER_CASES = {
    "EQ": (user("user.city", "EQ", ["alpha", "beta"]), p("city", "eq", ["alpha", "beta"])),
    "NOT_EQ": (user("user.city", "NOT_EQ", ["beta", "Alpha"]), not_(p("city", "eq", ["beta", "Alpha"]))),
    "GT": (user("user.level", "GT", [3]), p("level", "gt", [3])),
    "GTE": (user("user.level", "GTE", ["3"]), p("level", "gte", [3])),
    "LT": (user("user.score", "LT", [1.5]), p("score", "lt", [1.5])),
    "LTE": (user("user.score", "LTE", [1.5]), p("score", "lte", [1.5])),
    "RANGE": (user("user.level", "RANGE", [0, 5]), both(p("level", "gte", [0]), p("level", "lte", [5]))),
    "CONTAIN": (user("user.city", "CONTAIN", ["a"]), p("city", "contains", ["a"])),
    "NOT_CONTAIN": (user("user.city", "NOT_CONTAIN", ["a"]), not_(p("city", "contains", ["a"]))),
    "NULL": (user("user.city", "NULL"), not_(p("city", "is_set"))),
    "NOT_NULL": (user("user.score", "NOT_NULL"), p("score", "is_set")),
    "TRUE": (user("user.vip", "TRUE"), p("vip", "eq", [True])),
    "FALSE": (user("user.vip", "FALSE"), p("vip", "eq", [False])),
    "EMPTY": (user("user.city", "EMPTY"), both(p("city", "is_set"), p("city", "is_empty"))),
    "NOT_EMPTY": (user("user.city", "NOT_EMPTY"), not_(p("city", "is_empty"))),
    "ABSOLUTE_TIME days": (user("user.signup", "ABSOLUTE_TIME", [day(3), day(12)]),
                           p("signup", "date_between", [day(3), day(12)])),
    "ABSOLUTE_TIME minutes": (user("user.signup", "ABSOLUTE_TIME", [day(3).replace("-", "/") + " 06:30",
                                                                   day(12).replace("-", "/") + " 18:00"]),
                              both(p("signup", "gte", [day(3) + "T06:30:00"]),
                                   p("signup", "lt", [day(12) + "T18:01:00"]))),
    "RELATIVE_TIME_OF_CUURENT within": (user("user.signup", "RELATIVE_TIME_OF_CUURENT", ["5", "day", "within"]),
                                        p("signup", "within_last", [5, "day"])),
    "RELATIVE_TIME_OF_CUURENT before": (user("user.signup", "RELATIVE_TIME_OF_CUURENT", ["5", "day", "before"]),
                                        p("signup", "before_last", [5, "day"])),
    "RELATIVE_TIME_RANGE_CUURENT": (user("user.signup", "RELATIVE_TIME_RANGE_CUURENT", ["9", "2", "day"]),
                                    both(p("signup", "within_last", [9, "day"]),
                                         not_(p("signup", "within_last", [2, "day"])))),
    "xwho NOT_NULL": (user("user.xwho", "NOT_NULL"), EVERYONE),
    "xwho EQ": (user("user.xwho", "EQ", ["u03", "u07", "nobody"]), {"type": "ids", "keys": ["u03", "u07"]}),
    "xwho NOT_EQ": (user("user.xwho", "NOT_EQ", ["u03"]), not_({"type": "ids", "keys": ["u03"]})),
}
EVENT_CASES = {
    "6,0,day": (event(relative="6,0,day"), count({"last": 7})),
    "7,1,day": (event(relative="7,1,day"), count({"last": 7, "offset": 1})),
    "0 day": (event(relative="0 day", params=[1]), count({"start": BASE.date().isoformat(),
                                                          "end": BASE.date().isoformat()})),
    "1,1,week": (event(relative="1,1,week"), count({"last": 1, "offset": 1, "unit": "week"})),
    "absolute days win": (event(absolute=[day(2), day(9)], relative="0 day"), count({"start": day(2), "end": day(9)})),
    "GT count of any event": (event("event.$Anything", "GT", ["3"]), count(LAST_7, "gt", [3], "*")),
    "LT count includes users without events": (event(function="LT", params=[1]), count(LAST_7, "lt", [1])),
    "EQ, NOT_EQ, RANGE counts": (event(function="NOT_EQ", params=[0, "1"]), count(LAST_7, "ne", [0, 1])),
    "RANGE count": (event(function="RANGE", params=[1, 2]), count(LAST_7, "between", [1, 2])),
    "REMOVE_DUMPLICATE": (event("event.$Anything.item", "GTE", [3], aggregator="REMOVE_DUMPLICATE",
                                relative="13,0,day"),
                          count({"last": 14}, "gte", [3], "*", agg={"fn": "count_distinct", "property": "item"})),
    "filter AND": (event(relative="20,0,day", filter={"relation": "AND", "conditions": [
        {"expression": "event.pay.paid", "function": "TRUE", "params": []},
        {"expression": "event.$Anything.qty", "function": "RANGE", "params": [1, 6]}]}),
        count({"last": 21}, filter={"op": "and", "children": [f("paid", "is_true"), f("qty", "between", [1, 6])]})),
    "filter OR with times": (event("event.$Anything", relative="20,0,day", filter={"relation": "OR", "conditions": [
        {"expression": "event.$Anything.due", "function": "RELATIVE_TIME_RANGE_CUURENT", "params": [6, 1, "day"]},
        {"expression": "event.$Anything.item", "function": "NOT_EQ", "params": ["alpha", "beta"]}]}),
        count({"last": 21}, event_name="*", filter={"op": "or", "children": [
            {"op": "and", "children": [f("due", "within_last", [6, "day"]), f("due", "before_last", [1, "day"])]},
            f("item", "ne", ["alpha", "beta"])]})),
}


def assert_same(world, ark_content: dict, native: dict) -> set[str]:
    data, runner = world
    expected = reference_outcome(data, TZ, parse_definition(native), BASE)
    got = runner.members(to_canonical(ark_content), BASE)
    assert got == expected
    return expected[1]


@pytest.mark.parametrize("name", sorted(USER_CASES))
def test_user_rule(world, name):
    rule, native = USER_CASES[name]
    members = assert_same(world, content(([rule], "AND")), native)
    # The data make every case pick some users and leave some out, so that none passes by being trivial
    # (but NOT_NULL on the user id, which is everyone by definition).
    assert members and (members != world[0].universe() or name == "xwho NOT_NULL")


@pytest.mark.parametrize("name", sorted(EVENT_CASES))
def test_event_rule(world, name):
    rule, native = EVENT_CASES[name]
    members = assert_same(world, content(([rule], "AND")), native)
    assert members and members != world[0].universe()


def test_groups_relations_and_and_not(world):
    rich, payer, vip = (user("user.level", "GTE", [2]), event(relative="13,0,day"), user("user.vip", "TRUE"))
    ark = content(([rich, vip], "OR"), ([payer], "AND"), ([vip], "AND"), relations=["AND", "AND_NOT"])
    native = both({"op": "or", "children": [p("level", "gte", [2]), p("vip", "is_true")]},
                  count({"last": 14}), not_(p("vip", "is_true")))
    assert assert_same(world, ark, native)


def test_xwho_null_is_nobody(world):
    assert assert_same(world, content(([user("user.xwho", "NULL")], "AND")), {"type": "ids", "keys": []}) == set()
