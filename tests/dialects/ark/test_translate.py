"""Ark rules -> canonical trees, without Flask: every function, relation and time form, and refusals naming the field."""

from __future__ import annotations

import copy

import pytest
from marshmallow import ValidationError

from cohort_engine.definition import flatten_errors, parse_definition
from dialects.ark.translate import load_cohort, to_canonical

from .seed import SEED_BODY

EVERYONE = {"op": "not", "child": {"type": "ids", "keys": []}}


def user(expression, function, params=()):
    return {"type": "user", "expression": expression, "function": function, "params": list(params)}


def event(expression="event.pay", function="GTE", params=(1,), aggregator="TOTAL_COUNT", absolute=None,
          relative="6,0,day", filter=None):
    rule = {"type": "event", "expression": expression, "aggregator": aggregator, "function": function,
            "params": list(params)}
    if absolute is not None:
        rule["eventAbsoluteTimeParams"] = absolute
    if relative is not None:
        rule["eventRelativeTimeParam"] = relative
    if filter is not None:
        rule["filter"] = filter
    return rule


def content(*groups, relations=()):
    return {"ruleGroup": [{"rules": list(rules), "relation": relation} for rules, relation in groups],
            "relations": list(relations)}


def one(rule):
    """The canonical tree of a single rule."""
    tree = to_canonical(content(([rule], "AND")))
    assert tree == parse_definition(tree)
    return tree


def errors_of(value, call=to_canonical):
    with pytest.raises(ValidationError) as info:
        call(value)
    return flatten_errors(info.value.messages)


# Ark function and params -> the canonical conditions they stand for (docs/dialects/ark.md).
FUNCTION_CASES = [
    ("EQ", ["bj", "sh"], [("eq", ["bj", "sh"])]),
    ("NOT_EQ", ["bj"], [("ne", ["bj"])]),
    ("GT", [5], [("gt", [5])]),
    ("GTE", ["5"], [("gte", ["5"])]),
    ("LT", [2.5], [("lt", [2.5])]),
    ("LTE", [7], [("lte", [7])]),
    ("RANGE", [1, 9], [("between", [1, 9])]),
    ("CONTAIN", ["ab"], [("contains", ["ab"])]),
    ("NOT_CONTAIN", ["ab"], [("not_contains", ["ab"])]),
    ("NULL", [], [("not_set", [])]),
    ("NOT_NULL", [], [("is_set", [])]),
    ("TRUE", [], [("is_true", [])]),
    ("FALSE", [], [("is_false", [])]),
    ("EMPTY", [], [("eq", [""])]),
    ("NOT_EMPTY", [], [("not_empty", [])]),
    ("ABSOLUTE_TIME", ["2019-05-01", "2019-05-31"], [("date_between", ["2019-05-01", "2019-05-31"])]),
    ("ABSOLUTE_TIME", ["2019/05/01 00:00", "2019/05/31 00:00"],
     [("between", ["2019-05-01T00:00:00", "2019-05-31T00:00:59.999999"])]),
    ("ABSOLUTE_TIME", ["2019-05-01 06:30:00", "2019-05-31"],
     [("between", ["2019-05-01T06:30:00", "2019-05-31T23:59:59.999999"])]),
    ("RELATIVE_TIME_OF_CUURENT", ["4", "day", "within"], [("within_last", [4, "day"])]),
    ("RELATIVE_TIME_OF_CUURENT", [12, "HOUR", "before"], [("before_last", [12, "hour"])]),
    ("RELATIVE_TIME_RANGE_CUURENT", ["3", "1", "day"], [("within_last", [3, "day"]), ("before_last", [1, "day"])]),
    ("RELATIVE_TIME_RANGE_CUURENT", [1, 3, "week"], [("within_last", [3, "week"]), ("before_last", [1, "week"])]),
    ("eq", ["lower-case function names work"], [("eq", ["lower-case function names work"])]),
]


def _conjunction(nodes):
    return nodes[0] if len(nodes) == 1 else {"op": "and", "children": nodes}


@pytest.mark.parametrize("function, params, parts", FUNCTION_CASES)
def test_user_rule_functions(function, params, parts):
    assert one(user("user.city", function, params)) == _conjunction(
        [{"type": "profile", "property": "city", "cmp": cmp, "values": values} for cmp, values in parts])


@pytest.mark.parametrize("function, params, parts", FUNCTION_CASES)
def test_filter_condition_functions(function, params, parts):
    leaf = one(event(filter={"conditions": [{"expression": "event.pay.$os", "function": function, "params": params}],
                             "relation": "AND"}))
    assert leaf["filter"] == _conjunction([{"property": "$os", "cmp": cmp, "values": values} for cmp, values in parts])


def test_user_xwho_is_the_user_key():
    assert one(user("user.xwho", "NOT_NULL")) == EVERYONE
    assert one(user("user.xwho", "NULL")) == {"type": "ids", "keys": []}
    assert one(user("user.xwho", "EQ", ["u2", "u1"])) == {"op": "and", "children": [
        {"type": "ids", "keys": ["u1", "u2"]}, EVERYONE]}
    assert one(user("user.xwho", "NOT_EQ", ["u1"])) == {"op": "not", "child": {"type": "ids", "keys": ["u1"]}}


@pytest.mark.parametrize("relative, window", [
    ("6,0,day", {"last": 7, "offset": 0, "unit": "day"}),
    ("7,1,day", {"last": 7, "offset": 1, "unit": "day"}),
    ("0 day", {"last": 1, "offset": 0, "unit": "day"}),
    ("1 day", {"last": 1, "offset": 1, "unit": "day"}),
    ("2, 0, WEEK", {"last": 3, "offset": 0, "unit": "week"}),
    ("1,1,month", {"last": 1, "offset": 1, "unit": "month"}),
])
def test_relative_event_times(relative, window):
    assert one(event(relative=relative))["window"] == window


def test_absolute_event_days_win_over_relative():
    assert one(event(absolute=["2019-09-12", "2019-09-18"]))["window"] == {"start": "2019-09-12", "end": "2019-09-18"}


def test_event_aggregators_and_numeric_params():
    assert one(event("event.$Anything", "RANGE", ["1", 3])) == {
        "type": "event", "event": "*", "agg": {"fn": "count"}, "window": {"last": 7, "offset": 0, "unit": "day"},
        "cmp": "between", "values": [1, 3]}
    leaf = one(event("event.pay.item", "EQ", ["2", 3.5], aggregator="REMOVE_DUMPLICATE"))
    assert (leaf["agg"], leaf["cmp"], leaf["values"]) == ({"fn": "count_distinct", "property": "item"}, "eq", [2, 3.5])


def test_filter_relations_and_any_event_properties():
    leaf = one(event(filter={"relation": "or", "conditions": [
        {"expression": "event.$Anything.$platform", "function": "EQ", "params": ["JS", "iOS"]},
        {"expression": "event.pay.due", "function": "RELATIVE_TIME_RANGE_CUURENT", "params": [3, 1, "day"]}]}))
    assert leaf["filter"] == {"op": "or", "children": [
        {"property": "$platform", "cmp": "eq", "values": ["JS", "iOS"]},
        {"op": "and", "children": [{"property": "due", "cmp": "within_last", "values": [3, "day"]},
                                   {"property": "due", "cmp": "before_last", "values": [1, "day"]}]}]}
    assert "filter" not in one(event(filter={"conditions": [], "relation": "AND"}))


A, B, C = user("user.a", "TRUE"), user("user.b", "TRUE"), user("user.c", "TRUE")


def leaf(name):
    return {"type": "profile", "property": name, "cmp": "is_true", "values": []}


@pytest.mark.parametrize("relations, expected", [
    ([], {"op": "and", "children": [leaf("a"), leaf("b"), leaf("c")]}),
    (["AND_NOT"], {"op": "and", "children": [leaf("a"), {"op": "not", "child": leaf("b")},
                                             {"op": "not", "child": leaf("c")}]}),
    (["AND_NOT", "and"], {"op": "and", "children": [leaf("a"), {"op": "not", "child": leaf("b")}, leaf("c")]}),
])
def test_relations_between_rule_groups(relations, expected):
    assert to_canonical(content(([A], "AND"), ([B], "AND"), ([C], "AND"), relations=relations)) == expected


def test_rules_of_a_group_join_by_its_relation():
    assert to_canonical(content(([A, B], "OR"))) == {"op": "or", "children": [leaf("a"), leaf("b")]}


def test_the_seed_body_translates():
    data = load_cohort(copy.deepcopy(SEED_BODY))
    assert data["definition"] == {"op": "and", "children": [
        {"op": "and", "children": [
            EVERYONE,
            {"type": "profile", "property": "$email", "cmp": "ne", "values": ["xx1", "xx2"]},
            {"type": "profile", "property": "$signup_time", "cmp": "within_last", "values": [30, "day"]}]},
        {"type": "event", "event": "$startup", "agg": {"fn": "count"},
         "window": {"start": "2019-09-09", "end": "2019-09-15"}, "cmp": "gte", "values": [0]}]}


# -- refusals: a 400 naming the field, never a job that fails later --------------------------------

G = "content.ruleGroup[0].rules[0]"


@pytest.mark.parametrize("rule, path, message", [
    (user("city", "EQ", ["x"]), f"{G}.expression", "user.<property id>"),
    (user("user.city", "LIKE", ["x"]), f"{G}.function", "must be one of"),
    (user("user.city", "RELATIVE_TIME_OF_EVENT", ["after", "3", "day"]), f"{G}.function", "not supported"),
    (user("user.city", "EQ"), f"{G}.params", "at least one param"),
    (user("user.city", "GT", [1, 2]), f"{G}.params", "exactly one param"),
    (user("user.city", "CONTAIN", [5]), f"{G}.params", "a string param"),
    (user("user.city", "NULL", ["x"]), f"{G}.params", "no params"),
    (user("user.city", "EQ", [None]), f"{G}.params", "strings, numbers or booleans"),
    (user("user.t", "ABSOLUTE_TIME", ["2019-05-31", "2019-05-01"]), f"{G}.params", "before the start"),
    (user("user.t", "ABSOLUTE_TIME", ["2019-02-30", "2019-05-01"]), f"{G}.params", "not a time"),
    (user("user.t", "ABSOLUTE_TIME", ["0001-01-01", "2019-05-01"]), f"{G}.params", "outside"),
    (user("user.t", "RELATIVE_TIME_OF_CUURENT", ["4", "day", "after"]), f"{G}.params", "within"),
    (user("user.t", "RELATIVE_TIME_OF_CUURENT", ["4", "second", "within"]), f"{G}.params", "unit"),
    (user("user.t", "RELATIVE_TIME_OF_CUURENT", ["-4", "day", "within"]), f"{G}.params", ">= 0"),
    (user("user.t", "RELATIVE_TIME_RANGE_CUURENT", ["1", "1", "day"]), f"{G}.params", "must differ"),
    (user("user.xwho", "CONTAIN", ["u"]), f"{G}.function", "EQ, NOT_EQ, NULL or NOT_NULL"),
    ({**user("user.a", "TRUE"), "extra": 1}, f"{G}.extra", "unknown field"),
    ({"type": "tag", "expression": "tag.x"}, f"{G}.type", "user"),
    ({"type": [], "expression": None, "function": None}, f"{G}.type", "user"),
    ({"type": {"x": 1}}, f"{G}.type", "user"),
    (user("user.city", ["EQ"], ["x"]), f"{G}.function", "must be a string"),
    (user("user.t", "RELATIVE_TIME_OF_CUURENT", [["4"], ["day"], "within"]), f"{G}.params", "whole number"),
    (event(relative=["6,0,day"]), f"{G}.eventRelativeTimeParam", "must be a string"),
    (event(function="NOT_NULL", params=()), f"{G}.function", "not NULL or NOT_NULL"),
    (event(params=("many",)), f"{G}.params", "numbers"),
    (event(function="RANGE", params=(5, 1)), f"{G}.params", "low <= high"),
    (event(aggregator="SUM"), f"{G}.aggregator", "TOTAL_COUNT"),
    (event("event.pay.amount"), f"{G}.expression", "TOTAL_COUNT counts events"),
    (event("event.pay", aggregator="REMOVE_DUMPLICATE"), f"{G}.expression", "event.<event id>.<property id>"),
    (event(relative=None), f"{G}.eventAbsoluteTimeParams", "needs eventAbsoluteTimeParams"),
    (event(relative="0,6,day"), f"{G}.eventRelativeTimeParam", "a >= b"),
    (event(relative="last week"), f"{G}.eventRelativeTimeParam", "whole number"),
    (event(relative="1 year"), f"{G}.eventRelativeTimeParam", "unit must be one of: day, week, month"),
    (event(relative="7 days ago"), f"{G}.eventRelativeTimeParam", "\"a,b,unit\""),
    (event(absolute=["2019-09-12 10:00", "2019-09-18"]), f"{G}.eventAbsoluteTimeParams", "days"),
    (event(absolute=["2019-09-12"]), f"{G}.eventAbsoluteTimeParams", "[first day, last day]"),
    (event(relative="100000,0,day"), "content.window.last", ""),
    (event(filter={"conditions": [{"expression": "user.city", "function": "EQ", "params": ["x"]}]}),
     f"{G}.filter.conditions[0].expression", "a user rule of its own"),
    (event(filter={"conditions": [{"expression": "event.view.os", "function": "EQ", "params": ["x"]}]}),
     f"{G}.filter.conditions[0].expression", "this rule counts 'pay'"),
    (event(filter={"conditions": [], "relation": "XOR"}), f"{G}.filter.relation", "AND or OR"),
    (event(filter=["x"]), f"{G}.filter", "must be an object"),
])
def test_bad_rules_name_the_field(rule, path, message):
    errors = errors_of(content(([rule], "AND")))
    assert path in errors, errors
    assert message in " ".join(errors[path])


@pytest.mark.parametrize("value, path, message", [
    ({"ruleGroup": []}, "content.ruleGroup", "1 to 100"),
    ({"ruleGroup": [{"rules": []}]}, "content.ruleGroup[0].rules", "1 to 100"),
    ({"ruleGroup": [{"rules": [A, B]}]}, "content.ruleGroup[0].relation", "AND or OR"),
    (content(([A], "AND"), ([B], "AND"), ([C], "AND"), relations=["AND", "AND", "AND"]), "content.relations",
     "3 relations for 3 rule groups"),
    (content(([A], "AND"), ([B], "AND"), relations=["OR"]), "content.relations[0]", "AND or AND_NOT"),
    ({"ruleGroup": [{"rules": [A]}], "extra": 1}, "content.extra", "unknown field"),
    ([], "content", "must be an object"),
])
def test_bad_content_names_the_field(value, path, message):
    errors = errors_of(value)
    assert path in errors, errors
    assert message in " ".join(errors[path])


@pytest.mark.parametrize("change, path", [
    ({"dynamic": 2}, "dynamic"), ({"dynamic": "1"}, "dynamic"), ({"name": ""}, "name"), ({"name": "  "}, "name"),
    ({"name": "x" * 201}, "name"), ({"other": 1}, "other"),
])
def test_bad_bodies_name_the_field(change, path):
    assert path in errors_of({**copy.deepcopy(SEED_BODY), **change}, load_cohort)


def test_a_body_must_be_an_object():
    assert "_root" in errors_of(["x"], load_cohort)
