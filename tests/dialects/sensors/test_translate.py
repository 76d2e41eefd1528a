import copy
import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from croniter import croniter
from marshmallow import ValidationError
from pyroaring import BitMap

from cohort_engine.definition import flatten_errors, parse_definition
from cohort_engine.project import ProjectEngine
from dialects.sensors.translate import load_partitions, load_rule, quartz_to_cron, to_canonical

COHORTS = {"vip": 7, "churned": 8}


def content(*rules, relation="and"):
    return {"type": "rules_relation", "relation": relation, "rules": list(rules)}


def profile_rule(field, function, params=None):
    rule = {"type": "profile_rule", "field": field, "function": function}
    if params is not None:
        rule["params"] = params
    return rule


def event_rule(event="pay", aggregator="count", field=None, time=("relative_within", [7, "day"]),
               function="greater", params=(0,), filters=()):
    measure = {"type": "event_measure", "event_name": event, "aggregator": aggregator}
    if field is not None:
        measure["field"] = field
    return {"type": "event_rule", "measure": measure, "time_function": time[0], "time_params": list(time[1]),
            "function": function, "params": list(params), "filters": list(filters)}


def flt(field, function, params=()):
    return {"type": "filter", "field": field, "function": function, "params": list(params)}


def translate(*rules, relation="and"):
    """The canonical tree of one rule (unwrapped from its single-child group)."""
    tree = to_canonical(content(*rules, relation=relation), COHORTS.get)
    assert tree == parse_definition(tree)
    return tree["children"][0] if len(rules) == 1 else tree


def errors_of(call, *args):
    with pytest.raises(ValidationError) as info:
        call(*args)
    return flatten_errors(info.value.messages)


# -- property functions -----------------------------------------------------------------------

PROPERTY_CASES = [
    ("equal", ["bj", "sh"], [("eq", ["bj", "sh"])]),
    ("notEqual", ["bj"], [("ne", ["bj"])]),
    ("isTrue", [], [("is_true", [])]),
    ("isFalse", [], [("is_false", [])]),
    ("isSet", [], [("is_set", [])]),
    ("notSet", [], [("not_set", [])]),
    ("include", ["apple", "pear"], [("eq", ["apple", "pear"])]),
    ("notInclude", ["apple"], [("ne", ["apple"])]),
    ("isEmpty", [], [("is_empty", [])]),
    ("isNotEmpty", [], [("not_empty", [])]),
    ("less", [5], [("lt", [5])]),
    ("greater", ["5"], [("gt", ["5"])]),
    ("between", [1, 9], [("between", [1, 9])]),
    ("contain", ["abc"], [("contains", ["abc"])]),
    ("notContain", ["abc"], [("not_contains", ["abc"])]),
    ("absolute_between", ["2024-03-01", "2024-03-05"], [("date_between", ["2024-03-01", "2024-03-05"])]),
    ("absolute_between", ["2024-03-01 06:00:00", "2024-03-05 18:00:00"],
     [("between", ["2024-03-01T06:00:00", "2024-03-05T18:00:00.999999"])]),
    ("absolute_between", ["2024-03-01", "2024-03-05 18:00:00"],
     [("between", ["2024-03-01T00:00:00", "2024-03-05T18:00:00.999999"])]),
    ("absolute_between", ["2024-03-01 06:00:00", "2024-03-05"],
     [("between", ["2024-03-01T06:00:00", "2024-03-05T23:59:59.999999"])]),
    ("relative_within", [3, "day"], [("within_last", [3, "day"])]),
    ("relative_within", ["12", "HOUR"], [("within_last", [12, "hour"])]),
    ("relative_before", [2, "week"], [("before_last", [2, "week"])]),
    ("relative_between", [1, 3, "day"], [("within_last", [3, "day"]), ("before_last", [1, "day"])]),
    ("relative_between", [3, 1, "month"], [("within_last", [3, "month"]), ("before_last", [1, "month"])]),
]


@pytest.mark.parametrize("function, params, parts", PROPERTY_CASES)
def test_profile_rule_function_translates(function, params, parts):
    leaves = [{"type": "profile", "property": "city", "cmp": cmp, "values": values} for cmp, values in parts]
    expected = leaves[0] if len(leaves) == 1 else {"op": "and", "children": leaves}
    assert translate(profile_rule("user.city", function, params)) == expected


@pytest.mark.parametrize("function, params, parts", PROPERTY_CASES)
def test_filter_function_translates(function, params, parts):
    conditions = [{"property": "$os", "cmp": cmp, "values": values} for cmp, values in parts]
    expected = conditions[0] if len(conditions) == 1 else {"op": "and", "children": conditions}
    leaf = translate(event_rule(filters=[flt("event.pay.$os", function, params)]))
    assert leaf["filter"] == expected


def test_no_value_functions_accept_missing_params():
    assert translate(profile_rule("user.vip", "isTrue")) == {
        "type": "profile", "property": "vip", "cmp": "is_true", "values": []}


def test_nested_filters_relation_and_any_event_field():
    leaf = translate(event_rule(filters=[{"type": "filters_relation", "relation": "or", "subfilters": [
        flt("event.pay.os", "equal", ["iOS"]),
        {"type": "filters_relation", "relation": "and", "subfilters": [
            flt("event.$Anything.amount", "greater", [10]), flt("event.pay.item", "contain", ["gold"])]},
    ]}]))
    assert leaf["filter"] == {"op": "or", "children": [
        {"property": "os", "cmp": "eq", "values": ["iOS"]},
        {"op": "and", "children": [
            {"property": "amount", "cmp": "gt", "values": [10]},
            {"property": "item", "cmp": "contains", "values": ["gold"]}]},
    ]}


# -- cohort references ------------------------------------------------------------------------


def test_cohort_reference_is_true_and_false():
    assert translate(profile_rule("user.segmenter_vip", "isTrue", [])) == {"type": "cohort", "cohort_id": 7}
    assert translate(profile_rule("user.user_group_churned", "isFalse")) == {
        "op": "not", "child": {"type": "cohort", "cohort_id": 8}}


def test_cohort_and_property_combination():
    assert translate(profile_rule("user.segmenter_vip.age", "greater", [30])) == {"op": "and", "children": [
        {"type": "cohort", "cohort_id": 7}, {"type": "profile", "property": "age", "cmp": "gt", "values": [30]}]}


@pytest.mark.parametrize("rule, path, message", [
    (profile_rule("user.segmenter_nobody", "isTrue"), "content.rules[0].field", "no cohort named 'nobody'"),
    (profile_rule("user.segmenter_vip", "equal", [1]), "content.rules[0].function", "isTrue or isFalse"),
    (profile_rule("user.segmenter_vip", "isTrue", [1]), "content.rules[0].params", "takes no params"),
    (profile_rule("user.age.years", "equal", [1]), "content.rules[0].field", "not a cohort reference"),
    (profile_rule("age", "equal", [1]), "content.rules[0].field", "must be user.<property>"),
    (profile_rule("event.pay.amount", "equal", [1]), "content.rules[0].field", "must be user.<property>"),
])
def test_bad_profile_fields_name_the_node(rule, path, message):
    errors = errors_of(to_canonical, content(rule), COHORTS.get)
    assert list(errors) == [path]
    assert message in errors[path][0]


def test_cohort_reference_without_resolver_is_an_error():
    errors = errors_of(to_canonical, content(profile_rule("user.segmenter_vip", "isTrue")))
    assert "no cohort named 'vip'" in errors["content.rules[0].field"][0]


# -- tags -------------------------------------------------------------------------------------


def test_user_tag_fields_become_tag_leaves():
    # Cohorts and tags share names and ids: the resolver names both (the save checks which it is).
    assert translate(profile_rule("user.user_tag_vip", "equal", ["gold", "silver"])) == {
        "type": "tag", "tag_id": 7, "cmp": "eq", "values": ["gold", "silver"]}
    assert translate(profile_rule("user.user_tag_churned", "notEqual", [3])) == {
        "type": "tag", "tag_id": 8, "cmp": "ne", "values": [3]}
    assert translate(profile_rule("user.user_tag_vip", "relative_between", [1, 3, "day"])) == {
        "op": "and", "children": [{"type": "tag", "tag_id": 7, "cmp": "within_last", "values": [3, "day"]},
                                  {"type": "tag", "tag_id": 7, "cmp": "before_last", "values": [1, "day"]}]}
    errors = errors_of(to_canonical, content(profile_rule("user.user_tag_nobody", "isSet")), COHORTS.get)
    assert "no tag named 'nobody'" in errors["content.rules[0].field"][0]


# -- event rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregator, field, agg", [
    ("count", None, {"fn": "count"}),
    ("count", "", {"fn": "count"}),
    ("sum", "event.pay.amount", {"fn": "sum", "property": "amount"}),
    ("avg", "event.pay.amount", {"fn": "avg", "property": "amount"}),
    ("max", "event.pay.amount", {"fn": "max", "property": "amount"}),
    ("min", "event.pay.amount", {"fn": "min", "property": "amount"}),
    ("uniq", "event.pay.item", {"fn": "count_distinct", "property": "item"}),
])
def test_aggregators_translate(aggregator, field, agg):
    leaf = translate(event_rule(aggregator=aggregator, field=field))
    assert leaf == {"type": "event", "event": "pay", "agg": agg, "window": {"last": 7, "offset": 0, "unit": "day"},
                    "cmp": "gt", "values": [0]}


@pytest.mark.parametrize("function, params, cmp, values", [
    ("equal", [3, "4"], "eq", [3, 4]),
    ("notEqual", [0], "ne", [0]),
    ("less", ["2.5"], "lt", [2.5]),
    ("greater", [1], "gt", [1]),
    ("between", ["1", 5], "between", [1, 5]),
])
def test_metric_functions_translate(function, params, cmp, values):
    leaf = translate(event_rule(function=function, params=params))
    assert (leaf["cmp"], leaf["values"]) == (cmp, values)


@pytest.mark.parametrize("time, window", [
    (("relative_within", [7, "day"]), {"last": 7, "offset": 0, "unit": "day"}),
    (("relative_within", ["2", "week"]), {"last": 2, "offset": 0, "unit": "week"}),
    (("relative_between", [1, 7, "day"]), {"last": 7, "offset": 1, "unit": "day"}),
    (("relative_between", [7, 1, "day"]), {"last": 7, "offset": 1, "unit": "day"}),
    (("relative_between", [0, 0, "month"]), {"last": 1, "offset": 0, "unit": "month"}),
    (("absolute_between", ["2018-08-01", "2018-08-31"]), {"start": "2018-08-01", "end": "2018-08-31"}),
    (("absolute_between", ["2018-08-28 10:00:00", "2018-08-28 11:59:59"]),
     {"start": "2018-08-28T10:00:00", "end": "2018-08-28T12:00:00"}),
    (("absolute_between", ["2018-08-01", "2018-08-28 11:59:59"]),
     {"start": "2018-08-01T00:00:00", "end": "2018-08-28T12:00:00"}),
    (("absolute_between", ["2018-08-28 10:00:00", "2018-08-31"]),
     {"start": "2018-08-28T10:00:00", "end": "2018-09-01T00:00:00"}),
])
def test_time_forms_translate(time, window):
    assert translate(event_rule(time=time))["window"] == window


def test_any_event_measure_and_filter():
    leaf = translate(event_rule(event="$Anything", aggregator="sum", field="event.$Anything.amount",
                                filters=[flt("event.$Anything.os", "isSet")]))
    assert (leaf["event"], leaf["agg"], leaf["filter"]) == (
        "*", {"fn": "sum", "property": "amount"}, {"property": "os", "cmp": "is_set", "values": []})


def test_sequence_rule_translates():
    rule = {"type": "event_sequence_rule", "time_function": "relative_between", "time_params": [1, 3, "day"],
            "steps": [{"event": "view", "filters": [flt("event.view.page", "equal", ["home"])]},
                      {"event": "pay", "filters": []}, {"event": "$Anything"}]}
    assert translate(rule) == {"type": "sequence", "window": {"last": 3, "offset": 1, "unit": "day"}, "steps": [
        {"event": "view", "filter": {"property": "page", "cmp": "eq", "values": ["home"]}},
        {"event": "pay"}, {"event": "*"}]}


def test_nested_rules_relation():
    tree = translate(profile_rule("user.a", "isSet"), content(
        profile_rule("user.b", "isTrue"), event_rule(), relation="or"), relation="and")
    assert tree["op"] == "and"
    assert tree["children"][1]["op"] == "or"
    assert [c["type"] for c in tree["children"][1]["children"]] == ["profile", "event"]


# -- errors name the bad node -----------------------------------------------------------------


BAD_NODES = [
    (content(content(profile_rule("user.a", "isSet"), profile_rule("user.a", "fuzzy", [1]))),
     "content.rules[0].rules[1].function"),
    (content(event_rule(aggregator="median", field="event.pay.x")), "content.rules[0].measure.aggregator"),
    (content(event_rule(time=("relative_before", [1, "day"]))), "content.rules[0].time_function"),
    (content(event_rule(time=("since", [1, "day"]))), "content.rules[0].time_function"),
    (content(event_rule(time=("relative_within", [1, "hour"]))), "content.rules[0].time_params"),
    (content(event_rule(time=("relative_within", [0, "day"]))), "content.rules[0].time_params"),
    (content(event_rule(time=("relative_within", ["x", "day"]))), "content.rules[0].time_params"),
    (content(event_rule(time=("relative_between", [1, "day"]))), "content.rules[0].time_params"),
    (content(event_rule(time=("absolute_between", ["2018-08-31", "2018-08-01"]))), "content.rules[0].time_params"),
    (content(event_rule(time=("absolute_between", ["yesterday", "2018-08-01"]))), "content.rules[0].time_params"),
    (content(event_rule(function="contain", params=["x"])), "content.rules[0].function"),
    (content(event_rule(params=["lots"])), "content.rules[0].params"),
    (content(event_rule(function="between", params=[5, 1])), "content.rules[0].params"),
    (content(event_rule(function="less", params=[1, 2])), "content.rules[0].params"),
    (content(event_rule(aggregator="sum")), "content.rules[0].measure.field"),
    (content(event_rule(aggregator="sum", field="event.view.amount")), "content.rules[0].measure.field"),
    (content(event_rule(filters=[flt("event.pay.os", "equal", ["a"]), flt("event.pay.os", "isSet")])),
     "content.rules[0].filters"),
    (content(event_rule(filters=[{"type": "filters_relation", "relation": "or", "subfilters": [
        flt("event.pay.os", "isSet"), flt("event.pay.os", "regex", ["."])]}])),
     "content.rules[0].filters[0].subfilters[1].function"),
    (content(event_rule(filters=[{"type": "filters_relation", "relation": "xor", "subfilters": [
        flt("event.pay.os", "isSet")]}])), "content.rules[0].filters[0].relation"),
    (content(event_rule(filters=[flt("event.view.os", "isSet")])), "content.rules[0].filters[0].field"),
    (content(event_rule(filters=[flt("user.city", "isSet")])), "content.rules[0].filters[0].field"),
    (content(event_rule(filters=[flt("event.pay.os", "less", [1, 2])])), "content.rules[0].filters[0].params"),
    (content(event_rule(filters=[{"type": "condition"}])), "content.rules[0].filters[0].type"),
    (content(profile_rule("user.a", "relative_within", [3, "year"])), "content.rules[0].params"),
    (content(profile_rule("user.a", "relative_between", [3, "day"])), "content.rules[0].params"),
    (content(profile_rule("user.a", "absolute_between", ["2024-03-05", "2024-03-01"])), "content.rules[0].params"),
    (content(profile_rule("user.a", "contain", [])), "content.rules[0].params"),
    (content(profile_rule("user.a", "isSet", ["x"])), "content.rules[0].params"),
    (content(profile_rule("user.a", "equal", [None])), "content.rules[0].params"),
    (content({**profile_rule("user.a", "isSet"), "extra": 1}), "content.rules[0].extra"),
    (content({"type": "event_sequence_rule", "time_function": "relative_within", "time_params": [3, "day"],
              "steps": []}), "content.rules[0].steps"),
    (content({"type": "event_sequence_rule", "time_function": "relative_within", "time_params": [3, "day"],
              "steps": [{"event": "a", "filters": [flt("event.b.x", "isSet")]}]}),
     "content.rules[0].steps[0].filters[0].field"),
    (content({"type": "tag_rule"}), "content.rules[0].type"),
    (content(), "content.rules"),
    ({"type": "profile_rule", "field": "user.a", "function": "isSet"}, "content.type"),
    ({**content(profile_rule("user.a", "isSet")), "relation": "AND"}, "content.relation"),
    ([profile_rule("user.a", "isSet")], "content"),
]


@pytest.mark.parametrize("bad, path", BAD_NODES)
def test_bad_node_error_names_its_path(bad, path):
    errors = errors_of(to_canonical, bad, COHORTS.get)
    assert path in errors, errors
    assert all(message for message in errors[path])


def test_deep_nesting_is_refused_before_loading():
    node = profile_rule("user.a", "isSet")
    for _ in range(2000):
        node = content(node)
    assert "nested deeper" in errors_of(to_canonical, node)["content"][0]


def test_error_messages_use_sensors_names():
    errors = errors_of(to_canonical, content(profile_rule("user.a", "equal", [])))
    assert errors == {"content.rules[0].params": ["equal needs at least one value"]}


# -- request bodies ---------------------------------------------------------------------------

SEED_RULE_BODY = {
    "id": 0,
    "name": "last_30_days_apply",
    "cname": "last_30_days_apply",
    "type": 0,
    "app_push_list": [0],
    "scheduler": {"running": True, "cron": "0 0 3 2,3,4 * ? *"},
    "content": {"type": "rules_relation", "relation": "and", "rules": [
        {"type": "event_rule", "measure": {"type": "event_measure", "event_name": "apply", "aggregator": "count"},
         "time_function": "relative_within", "time_params": [30, "day"], "function": "greater", "params": [0],
         "filters": []},
    ]},
}


def test_seed_rule_body_is_accepted_unchanged():
    body = copy.deepcopy(SEED_RULE_BODY)
    loaded = load_rule(body, COHORTS.get)
    assert body == SEED_RULE_BODY
    assert loaded["content"] == SEED_RULE_BODY["content"]
    assert loaded["definition"] == {"op": "and", "children": [
        {"type": "event", "event": "apply", "agg": {"fn": "count"}, "window": {"last": 30, "offset": 0, "unit": "day"},
         "cmp": "gt", "values": [0]}]}
    assert loaded["scheduler"] == {"running": True, "cron": "0 0 3 2,3,4 * ? *", "cron_expression": "0 3 2,3,4 * *"}
    assert (loaded["id"], loaded["name"], loaded["type"], loaded["app_push_list"]) == (0, "last_30_days_apply", 0, [0])


def test_routine_rule_and_optional_fields():
    body = {**SEED_RULE_BODY, "type": 1, "dir_id": 3}
    del body["app_push_list"]
    loaded = load_rule(body)
    assert loaded["app_push_list"] == [] and loaded["dir_id"] == 3
    assert loaded["scheduler"]["cron_expression"] == "0 3 2,3,4 * *"


def test_rule_posted_back_from_the_listing_is_accepted():
    listed = {**SEED_RULE_BODY, "user_name": "admin", "create_time": "2018-08-28 10:00:00", "dir_id": 0,
              "failed_partition_count": 0,
              "scheduler": {"running": True, "cron": "0 0 3 2,3,4 * ? *", "execute_cron": "0 0 3 2,3,4 * ? *"},
              "last_partition": {"base_time": "2018-08-28 11:00:00", "status": "finish", "count": 0}}
    loaded = load_rule(listed)
    assert "user_name" not in loaded and "last_partition" not in loaded
    assert loaded["scheduler"]["execute_cron_expression"] == "0 3 2,3,4 * *"


def test_run_once_rule_may_carry_an_empty_schedule():
    loaded = load_rule({**SEED_RULE_BODY, "scheduler": {"running": False, "cron": ""}})
    assert "cron_expression" not in loaded["scheduler"]
    assert load_rule({k: v for k, v in SEED_RULE_BODY.items() if k != "scheduler"})["definition"]


@pytest.mark.parametrize("kind", [5, 6])
def test_import_types_need_no_rules(kind):
    body = {k: v for k, v in SEED_RULE_BODY.items() if k != "content"}
    assert load_rule({**body, "type": kind})["definition"] is None
    empty = {"type": "rules_relation", "relation": "and", "rules": []}
    assert load_rule({**body, "type": kind, "content": empty})["definition"] is None
    assert "content" in errors_of(load_rule, {**body, "type": kind, "content": SEED_RULE_BODY["content"]})


@pytest.mark.parametrize("kind, words", [(2, "cannot compute query-result (2) cohorts"),
                                          (7, "cannot compute SQL (7) cohorts"),
                                          (3, "must be one of: 0 (run once)")])
def test_refused_types_name_type(kind, words):
    errors = errors_of(load_rule, {**SEED_RULE_BODY, "type": kind})
    assert list(errors) == ["type"] and words in errors["type"][0]


@pytest.mark.parametrize("change, path", [
    ({"type": 1, "scheduler": None}, "scheduler"),
    ({"type": 1, "scheduler": {"running": True, "cron": ""}}, "scheduler.cron"),
    ({"scheduler": {"running": True, "cron": "0 0 3 2,3,4"}}, "scheduler.cron"),
    ({"scheduler": {"cron": "0 3 * * *"}}, "scheduler.running"),
    ({"name": "1st"}, "name"),
    ({"name": "with space"}, "name"),
    ({"cname": ""}, "cname"),
    ({"id": -1}, "id"),
    ({"id": "0"}, "id"),
    ({"app_push_list": ["a"]}, "app_push_list[0]"),
    ({"content": None}, "content"),
    ({"owner": "me"}, "owner"),
])
def test_bad_rule_body_fields(change, path):
    body = {**SEED_RULE_BODY, **change}
    body = {k: v for k, v in body.items() if v is not None}
    assert path in errors_of(load_rule, body)


def test_every_bad_field_is_reported_at_once():
    body = {**SEED_RULE_BODY, "type": 7, "content": content(profile_rule("user.a", "fuzzy"))}
    assert set(errors_of(load_rule, body)) == {"type", "content.rules[0].function"}


def test_seed_execute_and_status_bodies():
    body = [{"id": 1, "base_time_list": ["2018-08-28 10:00:00"]}]
    assert load_partitions(body) == body
    assert load_partitions([{"id": 2, "base_time_list": ["2018-08-28T10:00:00", "2018-08-28 10:00:00",
                                                         "2018-08-29 10:00:00"]}]) == [
        {"id": 2, "base_time_list": ["2018-08-28 10:00:00", "2018-08-29 10:00:00"]}]


@pytest.mark.parametrize("body, path", [
    ([{"id": 1, "base_time_list": ["2018-08-28 10:00:00", "2018-08-28"]}], "[0].base_time_list[1]"),
    ([{"id": 1, "base_time_list": ["2018-02-30 10:00:00"]}], "[0].base_time_list[0]"),
    ([{"id": 1, "base_time_list": []}], "[0].base_time_list"),
    ([{"id": 1}, {"id": 0, "base_time_list": ["2018-08-28 10:00:00"]}], "[1].id"),
    ([{"id": 1, "base_time_list": ["2018-08-28 10:00:00"], "extra": 1}], "[0].extra"),
    ([], "_root"),
    ({"id": 1, "base_time_list": ["2018-08-28 10:00:00"]}, "_root"),
])
def test_bad_partition_bodies(body, path):
    assert path in errors_of(load_partitions, body)


# -- cron ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quartz, cron", [
    ("0 0 3 2,3,4 * ? *", "0 3 2,3,4 * *"),
    ("0 30 9 ? * 2-6", "30 9 * * 1-5"),
    ("0 0 12 ? * 1", "0 12 * * 0"),
    ("0 0 12 ? * 1,7", "0 12 * * 0,6"),
    ("0 0 0 ? * 6#3", "0 0 * * 5#3"),
    ("0 0 0 ? * MON-FRI", "0 0 * * MON-FRI"),
    ("0 0/15 * * * ?", "0/15 * * * *"),
    ("0 0 8 L * ?", "0 8 L * *"),
    ("0 0 8 * * ? *", "0 8 * * *"),
    ("15 4 * * 1", "15 4 * * 1"),
    ("*/2 * * * * ?", "* * * * * */2"),
    ("30 0 3 * * ?", "0 3 * * * 30"),
])
def test_quartz_to_cron(quartz, cron):
    assert quartz_to_cron(quartz) == cron


def test_seed_cron_fires_at_three_on_the_second_to_fourth():
    it = croniter(quartz_to_cron("0 0 3 2,3,4 * ? *"), datetime(2024, 1, 31, 12))
    fires = [it.get_next(datetime) for _ in range(4)]
    assert fires == [datetime(2024, 2, 2, 3), datetime(2024, 2, 3, 3), datetime(2024, 2, 4, 3),
                     datetime(2024, 3, 2, 3)]


def test_quartz_weekdays_fire_on_the_right_days():
    it = croniter(quartz_to_cron("0 30 9 ? * 2-6"), datetime(2024, 3, 1, 10))  # a Friday
    fires = [it.get_next(datetime) for _ in range(2)]
    assert [f.strftime("%a %H:%M") for f in fires] == ["Mon 09:30", "Tue 09:30"]


@pytest.mark.parametrize("bad, words", [
    ("? 0 3 * * ?", "? is allowed only"),
    ("0 0 3 * * ? 2030", "year field"),
    ("0 0 3 5 * 2", "not both"),
    ("0 0 3 ? * 8", "1-7"),
    ("0 0 3 *", "must have 5 fields"),
    ("0 3 * * * * * *", "must have 5 fields"),
    ("0 0 25 * * ?", "not a valid cron expression"),
    ("0 0 3 ? * 6L", "not a valid cron expression"),
    ("0 ? 3 * * ?", "? is allowed only"),
    ("", "must be a cron expression"),
    ("0 0 0 30 2 ?", "never fires"),
    ("0 0 0 31 4 ?", "never fires"),
])
def test_bad_cron_expressions(bad, words):
    with pytest.raises(ValidationError) as info:
        quartz_to_cron(bad)
    assert words in info.value.messages[0]


# -- end to end: translated trees evaluated over a tiny store vs brute force --------------------

BASE = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def _dataset():
    rnd = random.Random(13)
    users = []
    for i in range(40):
        if i % 9 == 8:
            continue  # event-only users: no profile row
        users.append({
            "distinct_id": f"u{i:02d}",
            "gender": rnd.choice(["f", "m", None]),
            "age": rnd.choice([None, *range(15, 60)]),
            "signup": BASE - timedelta(hours=rnd.randint(0, 24 * 10)),
        })
    users.append({"distinct_id": "p99", "gender": "f", "age": 30, "signup": BASE})  # profile only
    events = []
    for _ in range(500):
        events.append({
            "distinct_id": f"u{rnd.randrange(40):02d}",
            "event": rnd.choice(["pay", "view", "login"]),
            "time": BASE - timedelta(seconds=rnd.randint(0, 14 * 86400)),
            "amount": float(rnd.randint(1, 20)),
            "os": rnd.choice(["iOS", "Android", None]),
            "item": rnd.choice(["gold", "gem", "goldbar"]),
        })
    # Boundary rows: the first and last instants of the 7-day window ending today.
    events.append({"distinct_id": "u01", "event": "pay", "time": datetime(2024, 3, 4, tzinfo=UTC),
                   "amount": 3.0, "os": "iOS", "item": "gem"})
    events.append({"distinct_id": "u02", "event": "pay", "time": datetime(2024, 3, 3, 23, 59, 59, tzinfo=UTC),
                   "amount": 3.0, "os": "iOS", "item": "gem"})
    # Edges of an absolute datetime range [2024-03-01 06:00:00, 2024-03-05 17:59:59] (end inclusive to the second).
    for key, moment in (("u03", datetime(2024, 3, 5, 17, 59, 59, 500000)), ("u04", datetime(2024, 3, 5, 18)),
                        ("u05", datetime(2024, 3, 1, 6)), ("u06", datetime(2024, 3, 1, 5, 59, 59, 900000))):
        events.append({"distinct_id": key, "event": "login", "time": moment.replace(tzinfo=UTC),
                       "amount": 1.0, "os": None, "item": "edge"})
    return users, events


@pytest.fixture
def loaded(engine_config, project, tmp_path):
    users, events = _dataset()
    engine = ProjectEngine(engine_config, project[0])
    pq.write_table(pa.table({
        "distinct_id": [u["distinct_id"] for u in users],
        "gender": pa.array([u["gender"] for u in users], pa.string()),
        "age": pa.array([u["age"] for u in users], pa.int64()),
        "signup": pa.array([u["signup"] for u in users], pa.timestamp("us", tz="UTC")),
    }), tmp_path / "users.parquet")
    pq.write_table(pa.table({
        "distinct_id": [e["distinct_id"] for e in events],
        "event": [e["event"] for e in events],
        "time": pa.array([e["time"] for e in events], pa.timestamp("us", tz="UTC")),
        "amount": [e["amount"] for e in events],
        "os": pa.array([e["os"] for e in events], pa.string()),
        "item": [e["item"] for e in events],
    }), tmp_path / "events.parquet")
    engine.ingest_users(tmp_path / "users.parquet")
    engine.ingest_events(tmp_path / "events.parquet")
    everyone = {u["distinct_id"] for u in users} | {e["distinct_id"] for e in events}
    return engine, {u["distinct_id"]: u for u in users}, events, everyone


def _members(engine, rules, load_cohort=None, resolve=None):
    tree = to_canonical(content(*rules), resolve)
    return set(engine.iter_keys(engine.compute(tree, base_time=BASE, load_cohort=load_cohort).bitmap))


def _day(d):
    return datetime(2024, 3, d, tzinfo=UTC)


def _in(moment, start, end):
    return start <= moment < end


def test_e2e_profile_and_event_count_in_recent_days(loaded):
    engine, profiles, events, everyone = loaded
    got = _members(engine, [profile_rule("user.gender", "equal", ["f"]),
                            event_rule(function="greater", params=[1])])
    counts = {}
    for e in events:
        if e["event"] == "pay" and _in(e["time"], _day(4), _day(11)):
            counts[e["distinct_id"]] = counts.get(e["distinct_id"], 0) + 1
    expected = {k for k, p in profiles.items() if p["gender"] == "f" and counts.get(k, 0) > 1}
    assert expected and got == expected


def test_e2e_window_boundaries(loaded):
    engine, profiles, events, everyone = loaded
    got = _members(engine, [event_rule(filters=[flt("event.pay.item", "equal", ["gem"])], function="greater",
                                       params=[0])])
    expected = {e["distinct_id"] for e in events
                if e["event"] == "pay" and e["item"] == "gem" and _in(e["time"], _day(4), _day(11))}
    assert "u01" in expected and got == expected


def test_e2e_not_equal_includes_users_without_the_property(loaded):
    engine, profiles, events, everyone = loaded
    got = _members(engine, [content(profile_rule("user.age", "between", [20, 30]),
                                    profile_rule("user.gender", "notEqual", ["m"]), relation="or")])
    expected = {k for k in everyone
                if (k in profiles and profiles[k]["age"] is not None and 20 <= profiles[k]["age"] <= 30)
                or profiles.get(k, {}).get("gender") != "m"}
    assert got == expected and expected - set(profiles)


def test_e2e_sum_with_filters_between_days_ago(loaded):
    engine, profiles, events, everyone = loaded
    rule = event_rule(aggregator="sum", field="event.pay.amount", time=("relative_between", [1, 3, "day"]),
                      function="less", params=[15], filters=[{"type": "filters_relation", "relation": "or", "subfilters": [
                          flt("event.pay.os", "equal", ["iOS"]), flt("event.pay.item", "contain", ["bar"])]}])
    sums = dict.fromkeys(everyone, 0.0)
    for e in events:
        if e["event"] == "pay" and _in(e["time"], _day(7), _day(10)) and (e["os"] == "iOS" or "bar" in e["item"]):
            sums[e["distinct_id"]] += e["amount"]
    expected = {k for k, s in sums.items() if s < 15}
    assert _members(engine, [rule]) == expected and set(profiles) - expected


def test_e2e_uniq_and_absolute_datetimes(loaded):
    engine, profiles, events, everyone = loaded
    rule = event_rule(event="$Anything", aggregator="uniq", field="event.$Anything.item",
                      time=("absolute_between", ["2024-03-01 06:00:00", "2024-03-05 17:59:59"]),
                      function="equal", params=[2, 3])
    items = {}
    for e in events:
        if _in(e["time"], datetime(2024, 3, 1, 6, tzinfo=UTC), datetime(2024, 3, 5, 18, tzinfo=UTC)):
            items.setdefault(e["distinct_id"], set()).add(e["item"])
    expected = {k for k, s in items.items() if len(s) in (2, 3)}
    assert expected and _members(engine, [rule]) == expected


def test_e2e_sequence_in_recent_days(loaded):
    engine, profiles, events, everyone = loaded
    rule = {"type": "event_sequence_rule", "time_function": "relative_within", "time_params": [5, "day"],
            "steps": [{"event": "view", "filters": [flt("event.view.os", "notEqual", ["iOS"])]},
                      {"event": "pay", "filters": []}]}
    expected = set()
    for user in everyone:
        rows = [e for e in events if e["distinct_id"] == user and _in(e["time"], _day(6), _day(11))]
        views = [e["time"] for e in rows if e["event"] == "view" and e["os"] != "iOS"]
        pays = [e["time"] for e in rows if e["event"] == "pay"]
        if any(p > v for v in views for p in pays):
            expected.add(user)
    assert expected and _members(engine, [rule]) == expected


def test_e2e_relative_profile_times_and_cohort_reference(loaded):
    engine, profiles, events, everyone = loaded
    signed_recently = _members(engine, [profile_rule("user.signup", "relative_between", [1, 3, "day"])])
    expected = {k for k, p in profiles.items() if BASE - timedelta(days=3) <= p["signup"] < BASE - timedelta(days=1)}
    assert expected and signed_recently == expected
    within = _members(engine, [profile_rule("user.signup", "relative_within", [2, "day"])])
    assert within == {k for k, p in profiles.items() if BASE - timedelta(days=2) <= p["signup"] <= BASE}

    bitmap = BitMap(engine.encode(sorted(signed_recently)))
    outside = _members(engine, [profile_rule("user.segmenter_recent", "isFalse")],
                       load_cohort={5: bitmap}.get, resolve={"recent": 5}.get)
    assert outside == everyone - signed_recently


def test_e2e_absolute_ranges_edges_and_users_without_events(loaded):
    engine, profiles, events, everyone = loaded
    edge = [flt("event.login.item", "equal", ["edge"])]
    got = _members(engine, [event_rule(event="login", filters=edge, function="greater", params=[0], time=(
        "absolute_between", ["2024-03-01 06:00:00", "2024-03-05 17:59:59"]))])
    assert got == {"u03", "u05"}
    rule = event_rule(event="view", time=("absolute_between", ["2024-03-01", "2024-03-02"]), function="less",
                      params=[1])
    seen = {e["distinct_id"] for e in events if e["event"] == "view" and _in(e["time"], _day(1), _day(3))}
    assert seen and _members(engine, [rule]) == everyone - seen


# -- input that must be refused at save, never a 500 or a failing job (issue 8) --------------------


@pytest.mark.parametrize(("rule", "path"), [
    ({"type": {"x": 1}}, "content.rules[0].type"),
    ({"type": ["profile_rule"]}, "content.rules[0].type"),
    (event_rule(filters=[{"type": {"x": 1}}]), "content.rules[0].filters[0].type"),
])
def test_unhashable_node_types_are_errors(rule, path):
    assert path in errors_of(load_rule, {**SEED_RULE_BODY, "content": content(rule)})


@pytest.mark.parametrize(("rule", "path"), [
    (event_rule(time=("relative_within", [10**12, "day"])), "content.rules[0].time_params"),
    (event_rule(time=("relative_within", ["9" * 5000, "day"])), "content.rules[0].time_params"),
    (event_rule(time=("relative_between", [0, 10**15, "day"])), "content.rules[0].time_params"),
    (event_rule(time=("absolute_between", ["0001-01-01", "9999-12-31"])), "content.rules[0].time_params"),
    (event_rule(time=("absolute_between", ["2024-01-01 00:00:00", "9999-12-31 23:59:59"])),
     "content.rules[0].time_params"),
    (event_rule(params=["1e400"]), "content.rules[0].params"),
    (event_rule(params=["nan"]), "content.rules[0].params"),
    (event_rule(params=["9" * 5000]), "content.rules[0].params"),
    (profile_rule("user.birthday", "relative_within", [10**15, "day"]), "content.rules[0].params"),
])
def test_out_of_range_values_are_refused_at_save(rule, path):
    errors = errors_of(load_rule, {**SEED_RULE_BODY, "content": content(rule)})
    assert any(p.startswith(path) for p in errors), errors


@pytest.mark.parametrize("text", ["0001-01-01 00:00:00", "0999-12-31 23:59:59", "9999-12-31 23:00:00"])
def test_base_times_outside_the_calendar_bounds_are_refused(text):
    errors = errors_of(load_partitions, [{"id": 1, "base_time_list": [text]}])
    assert "1000-01-01" in errors["[0].base_time_list[0]"][0], errors


@pytest.mark.parametrize("running", ["yes", "true", 1, None])
def test_scheduler_running_must_be_a_json_boolean(running):
    body = {**SEED_RULE_BODY, "scheduler": {"running": running, "cron": "0 0 3 * * ?"}}
    assert "scheduler.running" in errors_of(load_rule, body)


def test_ids_beyond_postgres_integers_are_refused():
    assert "id" in errors_of(load_rule, {**SEED_RULE_BODY, "id": 2**31})
    assert "[0].id" in errors_of(load_partitions, [{"id": 2**63, "base_time_list": ["2024-01-01 00:00:00"]}])
