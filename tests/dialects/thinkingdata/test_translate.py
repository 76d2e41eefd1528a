"""ThinkingData qp -> canonical tree: each mapping checked against the brute-force reference.

A translated qp must select the same users as the rule written by hand as a native canonical tree
(tests/cohort_engine/reference.py evaluates both over the sample data), and bad bodies name the field.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from marshmallow import ValidationError

from cohort_engine.definition import flatten_errors
from dialects.thinkingdata.answers import resolved_qp
from dialects.thinkingdata.translate import (
    load_cluster,
    load_list,
    load_qp,
    recent_days,
    resolved_days,
    tag_definition,
    window,
)
from tests.cohort_engine.reference import Reference
from tests.dialects.thinkingdata.sample import seed_request, write_dataset


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    _, data = write_dataset(tmp_path_factory.mktemp("td-sample"))
    return Reference(data, UTC, datetime.now(UTC)), data


def user(column, comparator, *ftv, **extra):
    return {"columnName": column, "comparator": comparator, "ftv": list(ftv), "tableType": "user", **extra}


def prop(column, comparator, *ftv):
    return {"columnName": column, "comparator": comparator, "ftv": list(ftv), "tableType": "event"}


def event(name, comparator, num, recent="0-30", analysis="TIMES", quota="", filts=(), relation="and", **extra):
    return {"eventName": name, "comparator": comparator, "num": num, "recentDay": recent,
            "taPropQuota": {"analysis": analysis, "quota": quota}, "filts": list(filts), "relation": relation,
            **extra}


def users_qp(*filts, relation="and"):
    return {"events": [], "filts": list(filts), "relation": relation}


def events_qp(*events, relation="and"):
    return {"events": list(events), "event_relation": relation, "filts": []}


def profile(property, cmp, *values):
    return {"type": "profile", "property": property, "cmp": cmp, "values": list(values)}


def count(name, cmp, *values, last=31, offset=0, agg=None, filter=None):
    leaf = {"type": "event", "event": name, "agg": agg or {"fn": "count"},
            "window": {"last": last, "offset": offset, "unit": "day"}, "cmp": cmp, "values": list(values)}
    if filter:
        leaf["filter"] = filter
    return leaf


def cond(property, cmp, *values):
    return {"property": property, "cmp": cmp, "values": list(values)}


CASES = {
    "equal is IN": (users_qp(user("user_level", "equal", "2", "3")), profile("user_level", "eq", 2, 3)),
    "notEqual is NOT IN, nulls included": (users_qp(user("#account_id", "notEqual", "acc0000001")),
                                           {"op": "not", "child": profile("#account_id", "eq", "acc0000001")}),
    "isNull": (users_qp(user("#account_id", "isNull")), {"op": "not", "child": profile("#account_id", "is_set")}),
    "notNull": (users_qp(user("#account_id", "notNull", "stale")), profile("#account_id", "is_set")),
    "include": (users_qp(user("#os", "include", "OS")), profile("#os", "contains", "OS")),
    "include any of several": (users_qp(user("#os", "include", "iOS", "mac")),
                               {"op": "or", "children": [profile("#os", "eq", "iOS", "macOS")]}),
    "notInclude": (users_qp(user("#os", "notInclude", "OS")), {"op": "not", "child": profile("#os", "contains", "OS")}),
    "less and greater": (users_qp(user("age", "less", "30"), user("age", "greater", "20")),
                         profile("age", "between", 21, 29)),
    "range is inclusive": (users_qp(user("age", "range", "30", "40")),
                           {"op": "or", "children": [profile("age", "between", 30, 40)]}),
    "isTrue, relation or": (users_qp(user("is_vip", "isTrue"), user("user_level", "equal", "2"), relation="or"),
                            {"op": "or", "children": [profile("is_vip", "is_true"), profile("user_level", "eq", 2)]}),
    "isFalse ignores ftv": (users_qp(user("is_vip", "isFalse", "true")), profile("is_vip", "is_false")),
    "calcuSymbol codes": (users_qp({"columnName": "age", "calcuSymbol": "C030", "ftv": ["60"]},
                                   {"columnName": "age", "calcuSymbol": "C020", "ftv": ["65"]}),
                          profile("age", "between", 60, 65)),
    "TIMES with an event filter": (events_qp(event("pay", "greater", "1", filts=[prop("#os", "equal", "Android")])),
                                   count("pay", "gte", 2, filter=cond("#os", "eq", "Android"))),
    "filters joined by or": (events_qp(event("pay", "greater", "0", relation="or",
                                             filts=[prop("#os", "equal", "iOS"), prop("price", "greater", "90")])),
                             count("pay", "gt", 0, filter={"op": "or", "children": [
                                 cond("#os", "eq", "iOS"), cond("price", "gt", 90)]})),
    "DISTINCT counts distinct quota values": (events_qp(event("consume_item", "greater", "2", analysis="DISTINCT",
                                                              quota="item_name")),
                                              count("consume_item", "gte", 3,
                                                    agg={"fn": "count_distinct", "property": "item_name"})),
    "SUM": (events_qp(event("pay", "greater", "150", analysis="SUM", quota="price")),
            count("pay", "gt", 150, agg={"fn": "sum", "property": "price"})),
    "AVG, MAX, MIN": (events_qp(event("pay", "greater", "60", analysis="AVG", quota="price"),
                                event("pay", "less", "150", analysis="MAX", quota="price"),
                                event("pay", "greater", "5", analysis="MIN", quota="price")),
                      {"op": "and", "children": [count("pay", "gt", 60, agg={"fn": "avg", "property": "price"}),
                                                 count("pay", "lt", 150, agg={"fn": "max", "property": "price"}),
                                                 count("pay", "gt", 5, agg={"fn": "min", "property": "price"})]}),
    "range on a count": (events_qp(event("login", "range", "2,3")), count("login", "between", 2, 3)),
    "uceCalcuSymbol alias": (events_qp({**event("login", None, "1"), "uceCalcuSymbol": "greater"}),
                             count("login", "gt", 1)),
    "notEqual on a count includes zero": (events_qp(event("share", "notEqual", "0")), count("share", "gt", 0)),
    "recentDay 1-7 is the 7 days before today": (events_qp(event("login", "greater", "0", recent="1-7")),
                                                 count("login", "gt", 0, last=7, offset=1)),
    "recentDay 0-0 is today": (events_qp(event("login", "greater", "0", recent="0-0")),
                               count("login", "gt", 0, last=1)),
    "events or, then and with users": (
        {"events": [event("pay", "greater", "2"), event("share", "greater", "1")], "event_relation": "or",
         "filts": [user("#os", "equal", "Android")], "event_user_relation": "and"},
        {"op": "and", "children": [{"op": "or", "children": [count("pay", "gt", 2), count("share", "gt", 1)]},
                                   profile("#os", "eq", "Android")]}),
    "event_user_relation or": ({"events": [event("pay", "greater", "3")], "filts": [user("user_level", "equal", "9")],
                                "event_user_relation": "or"},
                               {"op": "or", "children": [count("pay", "gt", 3), profile("user_level", "eq", 9)]}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_translation_selects_what_the_native_rule_selects(reference, name):
    ref, data = reference
    qp, native = CASES[name]
    expected = ref.members(native)
    assert 0 < len(expected) < len(ref.universe), "the case should split the sample users"
    assert ref.members(load_qp(qp)) == expected


def test_seed_condition_cluster_translates_as_written(reference):
    ref, _ = reference
    tree = load_qp(seed_request("add_condition_cluster")["qp"])
    native = {"op": "and", "children": [count("consume_item", "gt", 4, last=7, offset=1),
                                        profile("user_level", "eq", 3)]}
    assert ref.members(tree) == ref.members(native)


def test_absolute_times_win_over_recent_day(reference):
    ref, _ = reference
    today = datetime.now(UTC).date()
    start, end = (today - timedelta(days=20)).isoformat(), (today - timedelta(days=10)).isoformat()
    dated = event("login", "greater", "1", recent="1-7", startTime=f"{start} 00:00:00", endTime=f"{end} 00:00:00")
    native = {"type": "event", "event": "login", "agg": {"fn": "count"}, "window": {"start": start, "end": end},
              "cmp": "gt", "values": [1]}
    assert 0 < len(ref.members(native)) and ref.members(load_qp(events_qp(dated))) == ref.members(native)
    timed = {**dated, "startTime": f"{start} 12:00:00", "endTime": f"{end} 11:59:59"}
    native["window"] = {"start": f"{start}T12:00:00", "end": f"{end}T12:00:00"}
    assert ref.members(load_qp(events_qp(timed))) == ref.members(native)


def test_seed_update_bodies_carry_absolute_times():
    assert window(seed_request("update")["qp"]["events"][0]) == {"start": "2020-01-03", "end": "2020-01-09"}


def test_recent_day_reading_and_its_resolution():
    assert recent_days("1-7") == (1, 7) and recent_days(" 0 - 1 ") == (0, 1)
    # The seed's detail: recentDay 1-7 refreshed on 2020-01-10 is 01-03 .. 01-09.
    assert resolved_days("1-7", date(2020, 1, 10)) == ("2020-01-03 00:00:00", "2020-01-09 00:00:00")
    qp = resolved_qp(seed_request("add_condition_cluster")["qp"], datetime(2020, 1, 10, 10, 51, 14))
    assert (qp["events"][0]["startTime"], qp["events"][0]["endTime"]) == ("2020-01-03 00:00:00", "2020-01-09 00:00:00")


def errors_of(qp) -> dict:
    with pytest.raises(ValidationError) as caught:
        load_qp(qp)
    return flatten_errors(caught.value.messages)


@pytest.mark.parametrize("qp, path, words", [
    (events_qp(event("pay", "bigger", "1")), "qp.events[0].comparator", "unknown comparator 'bigger'"),
    (events_qp(event("pay", None, "1")), "qp.events[0].comparator", "missing comparator"),
    (events_qp(event("pay", "greater", None)), "qp.events[0].num", "give the number"),
    (events_qp(event("pay", "greater", "many")), "qp.events[0].num", "must be a number"),
    (events_qp(event("pay", "range", "5")), "qp.events[0].num", "range takes two numbers"),
    (events_qp(event("pay", "greater", "1", recent="7-1")), "qp.events[0].recentDay", "must not exceed"),
    (events_qp(event("pay", "greater", "1", recent="last week")), "qp.events[0].recentDay", '"a-b"'),
    (events_qp(event("pay", "greater", "1", recent="0-99999")), "qp.events[0].recentDay", "at most"),
    (events_qp(event("pay", "greater", "1", recent=None)), "qp.events[0].recentDay", "give recentDay"),
    (events_qp(event("pay", "greater", "1", startTime="2024-01-01 00:00:00")), "qp.events[0].endTime", "both"),
    (events_qp(event("pay", "greater", "1", analysis="SUM")), "qp.events[0].taPropQuota.quota", "needs quota"),
    (events_qp(event("pay", "greater", "1", analysis="MEDIAN")), "qp.events[0].taPropQuota.analysis", "one of"),
    (events_qp(event("pay", "greater", "1", filts=[user("age", "equal", "3")])), "qp.events[0].filts[0].tableType",
     "user properties go in qp.filts"),
    (users_qp(prop("#os", "equal", "iOS")), "qp.filts[0].tableType", "event properties go in an event's filts"),
    (users_qp(user("age", "equal")), "qp.filts[0].ftv", "at least one value"),
    (users_qp(user("age", "range", "1")), "qp.filts[0].ftv", "two values"),
    (users_qp(user("age", "less", "1", "2")), "qp.filts[0].ftv", "exactly one"),
    ({"events": [], "filts": []}, "qp.events", "at least one"),
    ({"events": [], "filts": [user("age", "equal", "1")], "relation": "xor"}, "qp.relation", "one of"),
])
def test_bad_qp_names_the_field(qp, path, words):
    errors = errors_of(qp)
    assert path in errors and words in " ".join(errors[path]), errors


def body_errors(body, creating=True) -> dict:
    with pytest.raises(ValidationError) as caught:
        load_cluster(body, creating=creating)
    return flatten_errors(caught.value.messages)


@pytest.mark.parametrize("change, path", [
    ({"clusterName": "has space"}, "clusterName"),
    ({"clusterName": "a" * 25}, "clusterName"),
    ({"displayName": "x" * 51}, "displayName"),
    ({"displayName": ""}, "displayName"),
    ({"clusterType": "cluster_by_magic"}, "clusterType"),
    ({"clusterCatalog": "catalog_tag"}, "clusterType"),
    ({"projectId": "one"}, "projectId"),
    ({"projectId": None}, "projectId"),
])
def test_bad_settings_name_the_field(change, path):
    assert path in body_errors({**seed_request("add_condition_cluster"), **change})


def test_settings_defaults_and_every_seed_body_loads():
    for name in ("add_condition_cluster", "add_condition_tag", "add_first_last_tag", "add_metric_tag"):
        data = load_cluster(seed_request(name), creating=True)
        assert data["clusterType"] == seed_request(name)["clusterType"]
    assert {"clusterName", "displayName"} <= set(body_errors({"projectId": 1}))
    data = load_cluster({"projectId": 1, "clusterName": "a", "displayName": "b", "clusterCatalog": "catalog_tag"},
                        creating=True)
    assert data["clusterType"] == "tag_by_static_condition"
    assert load_cluster(seed_request("update"), creating=False)["clusterType"] == "cluster_by_static_condition"
    listed = load_list(seed_request("list"))
    assert (listed["pageNum"], listed["pageSize"], listed["clusterName"]) == (1, 10, "test001")
    assert load_list({"projectId": 1})["clusterTypes"] == []


# -- tags ---------------------------------------------------------------------------------------------


def seed_tag(name):
    body = seed_request(name)
    return tag_definition(body["subConditionTabType"], body["tagQp"])


ANDROID = {"property": "#os", "cmp": "eq", "values": ["android"]}
TWO_DAYS = {"last": 2, "offset": 0, "unit": "day"}


def test_seed_condition_tag_is_an_ordered_values_tag(reference):
    ref, _ = reference
    tag = seed_tag("add_condition_tag")
    assert tag["kind"] == "values" and [v["value"] for v in tag["values"]] == ["标签值1", "标签值2"]
    natives = [count("player_register", "gt", 4, last=30, offset=1), count("fight_success", "gt", 0, last=30, offset=1)]
    for value, native in zip(tag["values"], natives, strict=True):
        assert ref.members(value["definition"]) == ref.members(native)
    assert ref.members(natives[1])  # the second value (uceCalcuSymbol) selects someone


def test_seed_first_last_and_metric_tags():
    assert seed_tag("add_first_last_tag") == {"kind": "first_last", "which": "first", "event": "pay",
                                               "window": TWO_DAYS, "filter": ANDROID, "property": "#vp@test_num"}
    assert seed_tag("add_metric_tag") == {"kind": "metric", "event": "activity_attend", "window": TWO_DAYS,
                                          "filter": ANDROID,
                                          "agg": {"fn": "count_distinct", "property": "activity_reward"}}
    last = seed_request("add_first_last_tag")["tagQp"]
    last["userTagConFirstLastEventDef"]["userTagConFirstLastEvent"]["isFirstEvent"] = False
    assert tag_definition("tag_condition_by_firstlast_event", last)["which"] == "last"


@pytest.mark.parametrize("kind, tag_qp, path", [
    ("tag_condition_default", {"userTagValueDefs": []}, "tagQp.userTagValueDefs"),
    ("tag_condition_default", {"userTagValueDefs": [{"tagValue": "a"}]}, "tagQp.userTagValueDefs[0].userClusterDef"),
    ("tag_condition_default", {"userTagValueDefs": [{"tagValue": "a", "userClusterDef": {"events": []}}]},
     "tagQp.userTagValueDefs[0].userClusterDef.events"),
    ("tag_condition_by_firstlast_event", {}, "tagQp.userTagConFirstLastEventDef"),
    ("tag_condition_by_firstlast_event", {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
        "eventName": "pay", "isFirstEvent": "yes", "recentDay": "0-1", "calcPropVo": {"property": {
            "columnName": "x"}}}}}, "tagQp.userTagConFirstLastEventDef.userTagConFirstLastEvent.isFirstEvent"),
    ("tag_condition_by_quotation", {"userTagConQuotaDef": {"userTagConQuotaEvent": {
        "eventName": "pay", "analysis": "SUM", "recentDay": "0-1"}}},
     "tagQp.userTagConQuotaDef.userTagConQuotaEvent.quota"),
])
def test_bad_tag_bodies_name_the_field(kind, tag_qp, path):
    with pytest.raises(ValidationError) as caught:
        tag_definition(kind, tag_qp)
    assert path in flatten_errors(caught.value.messages), flatten_errors(caught.value.messages)
