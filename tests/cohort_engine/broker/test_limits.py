"""Resource limits of the embedded broker, and malformed queries that must answer a Druid 400, never a 500.

Expected results come from the rows the store was built from (druid_store) or reference.py, never the engine.
"""

from __future__ import annotations

import json
import time

import pytest

from cohort_engine.broker import QueryLimits, encode
from cohort_engine.broker import embedded as embedded_module
from cohort_engine.broker.filters import FilterTranslator

from .reference import matches
from .sugo import execute, respond

ALL = "1000/3000"
HOUR = 3_600_000
DRUID_ERROR = {"error", "errorMessage", "errorClass", "host"}
RESOURCE = ("Resource limit exceeded", "org.apache.druid.query.ResourceLimitExceededException")


def _refused(status, body, fragment, status_code=400):
    assert status == status_code, body
    assert set(body) == DRUID_ERROR
    assert fragment in body["errorMessage"], body["errorMessage"]
    return body


def _resource(status, body, fragment):
    body = _refused(status, body, fragment)
    assert (body["error"], body["errorClass"]) == RESOURCE
    return body


def _hourly(granularity="hour"):
    return {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": ALL, "granularity": granularity,
            "aggregations": [{"type": "count", "name": "n"}]}


def _hours_with_data(store) -> int:
    times = [e["__time"] for e in store.events]
    return max(times) // HOUR - min(times) // HOUR + 1


# -- buckets: counted from intervals x granularity over the data span, before the aggregation -------


def test_bucket_limit_is_exact_for_hours_and_refuses_past_it(druid_store):
    hours = _hours_with_data(druid_store)
    status, rows = execute(_hourly(), druid_store.datasources, QueryLimits(max_buckets=hours))
    assert status == 200 and len(rows) == hours
    expected = {}
    for e in druid_store.events:
        expected[e["__time"] // HOUR] = expected.get(e["__time"] // HOUR, 0) + 1
    assert sum(r["result"]["n"] for r in rows) == len(druid_store.events)
    assert sum(1 for r in rows if r["result"]["n"]) == len(expected)
    status, body = execute(_hourly(), druid_store.datasources, QueryLimits(max_buckets=hours - 1))
    _resource(status, body, f"makes {hours} time buckets")
    assert "COHORTS_DRUID_MAX_BUCKETS" in body["errorMessage"]


@pytest.mark.parametrize("granularity", ["second", {"type": "duration", "duration": 1}, "none",
                                         {"type": "period", "period": "PT1S", "timeZone": "Asia/Shanghai"}])
def test_fine_granularities_are_refused_before_any_aggregation(druid_store, monkeypatch, granularity):
    def no_aggregation(*args, **kwargs):
        raise AssertionError("the aggregation ran before the bucket check")

    monkeypatch.setattr(embedded_module._Plan, "_grouped", no_aggregation)
    started = time.monotonic()
    status, body = execute(_hourly(granularity), druid_store.datasources, QueryLimits(max_buckets=50_000))
    _resource(status, body, "time buckets")
    assert time.monotonic() - started < 2


def test_calendar_bucket_counts_are_upper_bounds_within_two(druid_store):
    for granularity in ("day", "week", "month", {"type": "period", "period": "P1D", "timeZone": "America/New_York"}):
        status, rows = execute(_hourly(granularity), druid_store.datasources)
        assert status == 200
        real = len(rows)
        assert execute(_hourly(granularity), druid_store.datasources, QueryLimits(max_buckets=real + 2))[0] == 200
        status, body = execute(_hourly(granularity), druid_store.datasources, QueryLimits(max_buckets=real - 1))
        _resource(status, body, "time buckets")


def test_skip_empty_buckets_is_bounded_by_rows_not_buckets(druid_store):
    query = {**_hourly("second"), "context": {"skipEmptyBuckets": True}}
    status, rows = execute(query, druid_store.datasources, QueryLimits(max_buckets=10))
    assert status == 200 and len(rows) == len({e["__time"] // 1000 for e in druid_store.events})
    status, body = execute(query, druid_store.datasources, QueryLimits(max_buckets=10, max_rows=10))
    _resource(status, body, "more than 10 rows")


# -- rows ------------------------------------------------------------------------------------------


def _distinct_keys(store, where=lambda e: True):
    return sorted({e["distinct_id"] for e in store.events if where(e)}, key=str.encode)


@pytest.mark.parametrize("query", [
    {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
     "dimensions": ["distinct_id"], "aggregations": [{"type": "count", "name": "n"}]},
    {"queryType": "user_group", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
     "dimension": "distinct_id"},
    {"queryType": "scan", "dataSource": "schedule_desc", "intervals": ALL, "columns": ["distinct_id"],
     "resultFormat": "compactedList"},
    {"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "day",
     "dimension": "distinct_id", "threshold": 1000, "metric": "n", "aggregations": [{"type": "count", "name": "n"}]},
])
def test_row_limit_counts_result_rows_and_refuses_one_more(druid_store, query):
    status, body = execute(query, druid_store.datasources)
    assert status == 200
    if query["queryType"] == "scan":
        rows = sum(len(batch["events"]) for batch in body)
        assert rows == len(druid_store.events)
    elif query["queryType"] == "topN":
        rows = sum(len(entry["result"]) for entry in body)
        assert rows == len({(e["__time"] // 86_400_000, e["distinct_id"]) for e in druid_store.events})
    else:
        rows = len(body)
        assert rows == len(_distinct_keys(druid_store)) - (None in {e["distinct_id"] for e in druid_store.events})
    assert execute(query, druid_store.datasources, QueryLimits(max_rows=rows))[0] == 200
    status, body = execute(query, druid_store.datasources, QueryLimits(max_rows=rows - 1))
    _resource(status, body, f"more than {rows - 1} rows")


def test_a_query_limit_under_the_row_limit_is_answered(druid_store):
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "dimensions": ["distinct_id"],
             "limitSpec": {"type": "default", "limit": 5, "columns": ["distinct_id"]}}
    status, rows = execute(query, druid_store.datasources, QueryLimits(max_rows=5))
    assert status == 200 and [r["event"]["distinct_id"] for r in rows] == _distinct_keys(druid_store)[:5]


# -- response bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 50, 512, 1300])
@pytest.mark.parametrize("pretty", [False, True])
def test_encode_matches_json_dumps_and_stops_at_the_byte_limit(pretty, rows):
    body = [{"timestamp": "2024-03-01T00:00:00.000Z", "result": {"n": i, "省": "广东", "x": [1, None]}}
            for i in range(rows)]
    expected = json.dumps(body, ensure_ascii=False, indent=2 if pretty else None).encode()
    assert encode(body, pretty=pretty) == expected
    assert encode([], pretty=pretty) == json.dumps([], indent=2 if pretty else None).encode()
    assert encode(body, QueryLimits(max_response_bytes=len(expected)), pretty) == expected
    with pytest.raises(embedded_module.DruidQueryError) as caught:
        encode(body, QueryLimits(max_response_bytes=len(expected) // 3), pretty)
    assert (caught.value.error, caught.value.status) == (RESOURCE[0], 400)


def test_respond_answers_resource_limit_for_an_oversized_body(druid_store):
    query = json.dumps({"queryType": "scan", "dataSource": "schedule_desc", "intervals": ALL})
    status, payload = respond(query, druid_store.datasources, QueryLimits(max_response_bytes=10_000))
    _resource(status, json.loads(payload), "byte limit")
    status, payload = respond(query, druid_store.datasources)
    assert status == 200 and sum(len(b["events"]) for b in json.loads(payload)) == len(druid_store.events)


# -- timeout -------------------------------------------------------------------------------------


class _SlowDecode:
    """Wraps a ProjectAccess so that decoding user keys takes `seconds`."""

    def __init__(self, access, seconds):
        self.access, self.seconds = access, seconds

    def snapshot(self):
        return self.access.snapshot()

    def decode(self, uids):
        time.sleep(self.seconds)
        return self.access.decode(uids)


@pytest.fixture
def slow_datasources(druid_store):
    spec, access = druid_store.datasources.resolve("schedule_desc")
    sources = embedded_module.DataSources(lambda project: _SlowDecode(access, 0.3),
                                          {"schedule_desc": spec})
    return sources


@pytest.mark.parametrize("context,limit_ms", [({"timeout": 180000}, 100), ({"timeout": 100}, 60_000),
                                              ({"timeout": "100"}, None), ({}, 100)])
def test_timeout_is_context_timeout_capped_by_the_limit(slow_datasources, context, limit_ms):
    query = {"queryType": "user_group", "dataSource": "schedule_desc", "intervals": ALL, "dimension": "distinct_id",
             "context": context}
    started = time.monotonic()
    status, body = execute(query, slow_datasources, QueryLimits(timeout_ms=limit_ms))
    assert time.monotonic() - started < 1.0
    assert status == 504 and body["error"] == "Query timeout" and set(body) == DRUID_ERROR


def test_without_a_timeout_the_slow_query_answers(slow_datasources, druid_store):
    query = {"queryType": "user_group", "dataSource": "schedule_desc", "intervals": ALL, "dimension": "distinct_id",
             "context": {"timeout": 0}}
    status, ids = execute(query, slow_datasources, QueryLimits(timeout_ms=None))
    assert status == 200 and ids == [k for k in _distinct_keys(druid_store) if k is not None]


@pytest.mark.parametrize("timeout", ["soon", -1, float("nan"), float("inf"), [1], True, -(10**400), 10**400, 2**63])
def test_bad_context_timeouts_are_400(druid_store, timeout):
    query = {**_hourly("all"), "context": {"timeout": timeout}}
    _refused(*execute(query, druid_store.datasources, QueryLimits(timeout_ms=1000)), "context.timeout")


# -- nesting -------------------------------------------------------------------------------------


def _nested_not(depth: int) -> dict:
    node = {"type": "selector", "dimension": "event", "value": "pay"}
    for _ in range(depth):
        node = {"type": "not", "field": node}
    return node


def test_deeply_nested_filters_are_refused_with_the_depth_limit(druid_store):
    status, body = execute({**_hourly("all"), "filter": _nested_not(700)}, druid_store.datasources)
    _resource(status, body, "nests deeper than 64")
    status, body = respond('{"queryType": "groupBy", "filter": ' + "[" * 100_000 + "]" * 100_000 + "}",
                           druid_store.datasources)
    body = json.loads(body)
    assert status == 400 and set(body) == DRUID_ERROR


def test_nested_filters_within_the_limit_match_the_reference(druid_store):
    spec = _nested_not(20)
    status, rows = execute({**_hourly("all"), "filter": spec}, druid_store.datasources)
    assert status == 200
    assert rows[0]["result"]["n"] == sum(matches(spec, e) is True for e in druid_store.events)


# -- malformed names, numbers, periods and type ids: a Druid 400 naming the field ------------------


def _group_by(**fields):
    return {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
            "dimensions": ["event"], "aggregations": [{"type": "count", "name": "n"}], **fields}


@pytest.mark.parametrize("query,fragment", [
    (_group_by(dimensions=[{"type": "default", "dimension": "event", "outputName": 5}]), "dimensions[0].outputName"),
    (_group_by(dimensions=[{"type": "default", "dimension": "event", "outputName": ["x"]}]), "outputName"),
    (_group_by(dimensions=[{"type": "default", "dimension": ""}]), "dimensions[0].dimension must not be empty"),
    (_group_by(aggregations=[{"type": "count", "name": 5}]), "aggregations[0].name must be a string"),
    (_group_by(aggregations=[{"type": "count", "name": ""}]), "aggregations[0].name must not be empty"),
    (_group_by(aggregations=[{"type": "longSum", "name": "s", "fieldName": ""}]), "aggregations[0].fieldName"),
    (_group_by(aggregations=[{"type": "filtered", "name": {"a": 1}, "filter": {"type": "true"},
                              "aggregator": {"type": "count", "name": "c"}}]), "aggregations[0].name"),
    (_group_by(granularity={"type": "period", "period": "PT" + "1" * 400 + "S"}), "granularity.period"),
    (_group_by(granularity={"type": "period", "period": "P" + "9" * 400 + "D"}), "granularity.period"),
    (_group_by(intervals="2024-01-01/P" + "9" * 400 + "Y"), "intervals[0]"),
    (_group_by(granularity={"type": "duration", "duration": 10**30}), "granularity.duration"),
    (_group_by(limitSpec={"type": "default", "limit": 10**30}), "limitSpec.limit"),
    (_group_by(limitSpec={"type": "default", "columns": 5}), "limitSpec.columns"),
    ({"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "dimension": "event",
      "threshold": 10**30, "metric": "n", "aggregations": [{"type": "count", "name": "n"}]}, "threshold"),
    ({"queryType": "scan", "dataSource": "schedule_desc", "intervals": ALL, "columns": [""]}, "columns[0]"),
])
def test_malformed_fields_are_400_naming_the_field(druid_store, query, fragment):
    body = _refused(*execute(query, druid_store.datasources), fragment)
    assert body["error"] == "Json parse failed"


@pytest.mark.parametrize("query,fragment,family", [
    (_group_by(aggregations=[{"type": "longSumm", "name": "s", "fieldName": "age"}]), "aggregations[0].type",
     "AggregatorFactory"),
    (_group_by(aggregations=[{"type": "lucene_nope", "name": "s"}]), "aggregations[0].type", "AggregatorFactory"),
    (_group_by(filter={"type": "selectorr", "dimension": "event", "value": "pay"}), "filter.type", "DimFilter"),
    # Names of the translator's own helpers are not filter types either.
    (_group_by(filter={"type": "column", "dimension": "event"}), "filter.type", "DimFilter"),
    (_group_by(filter={"type": "fields", "fields": []}), "filter.type", "DimFilter"),
    (_group_by(having={"type": "greaterThen", "aggregation": "n", "value": 1}), "having.type", "HavingSpec"),
    (_group_by(dimensions=[{"type": "fancy", "dimension": "event"}]), "dimensions[0].type", "DimensionSpec"),
    (_group_by(dataSource={"type": "tablee", "name": "schedule_desc"}), "dataSource.type", "DataSource"),
    (_group_by(limitSpec={"type": "top"}), "limitSpec.type", "LimitSpec"),
    (_group_by(filter={"type": "bound", "dimension": "age", "lower": "1", "ordering": "bytes"}), "filter.ordering",
     "StringComparator"),
    (_group_by(queryType="groupByy"), "queryType", "Query"),
    ({"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "dimension": "event", "threshold": 2,
      "metric": {"type": "biggest", "metric": "n"}, "aggregations": [{"type": "count", "name": "n"}]},
     "metric.type", "TopNMetricSpec"),
])
def test_unknown_type_ids_are_400_as_druid_answers_them(druid_store, query, fragment, family):
    body = _refused(*execute(query, druid_store.datasources), fragment)
    assert body["error"] == "Json parse failed"
    assert body["errorClass"] == "com.fasterxml.jackson.databind.exc.InvalidTypeIdException"
    assert "Could not resolve type id" in body["errorMessage"] and family in body["errorMessage"]


@pytest.mark.parametrize("query,fragment", [
    (_group_by(aggregations=[{"type": "thetaSketch", "name": "t", "fieldName": "distinct_id"}]), "thetaSketch"),
    (_group_by(filter={"type": "javascript", "dimension": "event", "function": "x"}), "javascript"),
    (_group_by(dataSource={"type": "union", "dataSources": ["a"]}), "union"),
])
def test_druid_types_the_engine_lacks_stay_501(druid_store, query, fragment):
    body = _refused(*execute(query, druid_store.datasources), fragment, status_code=501)
    assert body["error"] == "Unsupported operation"


@pytest.mark.parametrize("ordering", ["NUMERIC", "Numeric", "numeric"])
def test_orderings_are_case_insensitive_as_in_druid(druid_store, ordering):
    spec = {"type": "bound", "dimension": "age", "lower": "30", "ordering": ordering}
    status, rows = execute({**_hourly("all"), "filter": spec}, druid_store.datasources)
    assert status == 200
    assert rows[0]["result"]["n"] == sum(e["age"] is not None and e["age"] >= 30 for e in druid_store.events)


def test_timeseries_without_aggregators_answers_empty_results(druid_store):
    query = {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": "2000/2001",
             "granularity": "all", "context": {"grandTotal": True}}
    status, rows = execute(query, druid_store.datasources)
    assert status == 200 and [r["result"] for r in rows] == [{}, {}]


def test_an_error_that_escapes_validation_is_a_400_and_logged(druid_store, monkeypatch, caplog):
    def broken(self, spec, path):
        raise TypeError("a hole in validation")

    monkeypatch.setattr(FilterTranslator, "_true", broken)
    status, body = execute({**_hourly("all"), "filter": {"type": "true"}}, druid_store.datasources)
    _refused(status, body, "a hole in validation")
    assert body["errorClass"] == "java.lang.IllegalArgumentException"
    assert "escaped validation" in caplog.text


def test_a_slow_statement_is_interrupted_at_the_capped_timeout(druid_store, monkeypatch):
    def slow(self, spec, path):
        # An uncorrelated scalar subquery over billions of rows: seconds of DuckDB work.
        return "((SELECT sum(i % 7) FROM range(5000000000) r(i)) >= 0)"

    monkeypatch.setattr(FilterTranslator, "_true", slow)
    query = {**_hourly("all"), "filter": {"type": "true"}, "context": {"timeout": 180000}}
    started = time.monotonic()
    status, body = execute(query, druid_store.datasources, QueryLimits(timeout_ms=300))
    assert status == 504 and body["error"] == "Query timeout"
    assert time.monotonic() - started < 2
