"""Malformed post-aggregators and segmentMetadata queries answer Druid's 400/501, never a last-resort error."""

from __future__ import annotations

import pytest

from .sugo import execute

ALL = "1000/3000"
BASE = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "dimensions": ["event"],
        "aggregations": [{"type": "count", "name": "n"}]}


@pytest.mark.parametrize("posts,status,fragment", [
    (["x"], 400, "postAggregations[0]"),
    ({"type": "constant"}, 400, "postAggregations must be a list"),
    ([{"type": "arithmetic", "name": "a", "fn": "+", "fields": "n"}], 400, "fields"),
    ([{"type": "arithmetic", "name": "a", "fn": "+", "fields": [{"type": "fieldAccess", "fieldName": "n"}]}], 400,
     "at least two"),
    ([{"type": "arithmetic", "name": "a", "fn": "+", "fields": [1, 2]}], 400, "fields[0]"),
    ([{"type": "arithmetic", "name": "a", "fn": "pow", "fields": [
        {"type": "fieldAccess", "fieldName": "n"}, {"type": "constant", "name": "c", "value": 2}]}], 501, "pow"),
    ([{"type": "fieldAccess", "name": "a", "fieldName": "missing"}], 400, "missing"),
    ([{"type": "constant", "name": "a", "value": "x"}], 400, "value must be a number"),
    ([{"type": "constant", "name": "n", "value": 1}], 400, "used twice"),
    ([{"type": "nope", "name": "a"}], 400, "Could not resolve type id"),
])
def test_bad_post_aggregators_are_refused(druid_store, posts, status, fragment):
    got, body = execute({**BASE, "postAggregations": posts}, druid_store.datasources)
    assert got == status and fragment in body["errorMessage"], body
    assert body["errorClass"] != "java.lang.IllegalArgumentException"


def test_post_aggregators_may_read_earlier_ones_and_order_the_rows(druid_store):
    posts = [{"type": "arithmetic", "name": "double", "fn": "*", "fields": [
                 {"type": "fieldAccess", "fieldName": "n"}, {"type": "constant", "name": "two", "value": 2}]},
             {"type": "arithmetic", "name": "minus", "fn": "-", "fields": [
                 {"type": "fieldAccess", "fieldName": "double"}, {"type": "fieldAccess", "fieldName": "n"}]}]
    status, rows = execute({**BASE, "postAggregations": posts, "limitSpec": {
        "type": "default", "columns": [{"dimension": "minus", "direction": "descending"}]}}, druid_store.datasources)
    assert status == 200
    counts = {}
    for event in druid_store.events:
        counts[event["event"]] = counts.get(event["event"], 0) + 1
    assert [(r["event"]["event"], r["event"]["double"], r["event"]["minus"]) for r in rows] == [
        (name, 2.0 * n, float(n)) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def test_segment_metadata_intervals_are_optional(druid_store):
    status, body = execute({"queryType": "segmentMetadata", "dataSource": "tag_bank"}, druid_store.datasources)
    assert status == 200 and body[0]["numRows"] == len(druid_store.users) and "ub_risk" in body[0]["columns"]


@pytest.mark.parametrize("query", [
    {"queryType": "segmentMetadata", "dataSource": "nope"},
    {"queryType": "segmentMetadata"},
    {"queryType": "segmentMetadata", "dataSource": "schedule_desc", "intervals": "x/y"},
])
def test_bad_segment_metadata_queries_are_400s(druid_store, query):
    status, body = execute(query, druid_store.datasources)
    assert status == 400 and body["errorClass"] != "java.lang.IllegalArgumentException"
