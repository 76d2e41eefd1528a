"""The embedded Druid executor against a brute-force Python computation over the same rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from cohort_engine.bitmaps import to_bitmap

from .reference import aggregate, matches
from .sugo import execute, user_group_uids

ALL = "1000/3000"

FILTERS = [
    {"type": "selector", "dimension": "sugo_province", "value": "广东省"},
    {"type": "selector", "dimension": "sugo_province", "value": None},
    {"type": "selector", "dimension": "age", "value": "30"},
    {"type": "selector", "dimension": "age", "value": "abc"},
    {"type": "selector", "dimension": "no_such_column", "value": None},
    {"type": "equals", "column": "age", "matchValueType": "LONG", "matchValue": 30},
    {"type": "equals", "column": "sugo_province", "matchValueType": "STRING", "matchValue": "北京市"},
    {"type": "null", "column": "age"},
    {"type": "in", "dimension": "sugo_province", "values": ["广东省", "北京市", None]},
    {"type": "in", "dimension": "sugo_province", "values": ["上海市"]},
    {"type": "in", "dimension": "distinct_id", "values": ["u01", "用户7", "nobody"]},
    {"type": "in", "dimension": "age", "values": ["18", 60]},
    {"type": "bound", "dimension": "age", "lower": "20", "upper": "41", "lowerStrict": True, "ordering": "numeric"},
    {"type": "bound", "dimension": "item", "lower": "S", "upper": "s"},
    {"type": "bound", "dimension": "distinct_id", "upper": "u10", "upperStrict": True},
    {"type": "bound", "dimension": "price", "lower": "10", "ordering": "numeric"},
    {"type": "range", "column": "price", "matchValueType": "DOUBLE", "lower": 10, "upper": 50, "upperOpen": True},
    {"type": "range", "column": "item", "matchValueType": "STRING", "lower": "a"},
    {"type": "like", "dimension": "item", "pattern": "s%"},
    {"type": "like", "dimension": "item", "pattern": "50!%!_%", "escape": "!"},
    {"type": "like", "dimension": "distinct_id", "pattern": "u0_"},
    {"type": "regex", "dimension": "item", "pattern": "^[Ss]w"},
    {"type": "search", "dimension": "item", "query": {"type": "insensitive_contains", "value": "OR"}},
    {"type": "search", "dimension": "item", "query": {"type": "contains", "value": "Sw", "caseSensitive": True}},
    {"type": "search", "dimension": "item", "query": {"type": "contains", "value": "sw"}},
    {"type": "search", "dimension": "item", "query": {"type": "fragment", "values": ["o", "T"]}},
    {"type": "interval", "dimension": "__time", "intervals": ["2024-03-02T00:00:00Z/2024-03-02T12:00:00Z",
                                                              "2024-03-05T06:00:00Z/2024-03-06T00:00:00Z"]},
    {"type": "and", "fields": [{"type": "selector", "dimension": "event", "value": "pay"},
                               {"type": "not", "field": {"type": "selector", "dimension": "sugo_province",
                                                         "value": "广东省"}}]},
    {"type": "or", "fields": [{"type": "selector", "dimension": "age", "value": "18"},
                              {"type": "like", "dimension": "item", "pattern": "%o%"}]},
    {"type": "true"},
]


def _groups(store, query):
    status, body = execute(query, store.datasources)
    assert status == 200, body
    return body


def _filter_id(spec):
    return spec["type"] + ":" + str(spec.get("dimension", spec.get("column", ""))) + ":" + str(
        spec.get("value", spec.get("values", spec.get("pattern", spec.get("lower", "")))))


@pytest.mark.parametrize("negate", [False, True], ids=["plain", "not"])
@pytest.mark.parametrize("spec", FILTERS, ids=[_filter_id(f) for f in FILTERS])
def test_filters_match_the_reference(druid_store, spec, negate):
    spec = {"type": "not", "field": spec} if negate else spec
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
             "filter": spec, "dimensions": ["distinct_id", "event"], "aggregations": [{"type": "count", "name": "n"}]}
    got = {(r["event"]["distinct_id"], r["event"]["event"]): r["event"]["n"] for r in _groups(druid_store, query)}
    expected = Counter((e["distinct_id"], e["event"]) for e in druid_store.events if matches(spec, e) is True)
    assert got == dict(expected)
    assert expected or negate or spec["type"] == "selector" and spec["value"] == "abc"


AGGREGATIONS = [
    {"type": "count", "name": "count"},
    {"type": "lucene_count", "name": "lucene_count"},
    {"type": "longSum", "name": "age_sum", "fieldName": "age"},
    {"type": "longSum", "name": "price_long_sum", "fieldName": "price"},
    {"type": "doubleSum", "name": "price_sum", "fieldName": "price"},
    {"type": "lucene_doubleSum", "name": "lucene_age", "fieldName": "age"},
    {"type": "floatSum", "name": "price_float", "fieldName": "price"},
    {"type": "longMin", "name": "age_min", "fieldName": "age"},
    {"type": "longMax", "name": "age_max", "fieldName": "age"},
    {"type": "doubleMin", "name": "price_min", "fieldName": "price"},
    {"type": "doubleMax", "name": "price_max", "fieldName": "price"},
    {"type": "cardinality", "name": "users", "fields": ["distinct_id"]},
    {"type": "filtered", "filter": {"type": "selector", "dimension": "event", "value": "pay"},
     "aggregator": {"type": "count", "name": "pays"}},
    {"type": "filtered", "filter": {"type": "bound", "dimension": "age", "lower": "30", "ordering": "numeric"},
     "aggregator": {"type": "doubleSum", "name": "older_price", "fieldName": "price"}},
]


def test_group_by_aggregators_match_the_reference(druid_store):
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": [ALL], "granularity": "all",
             "dimensions": [{"type": "default", "dimension": "sugo_province", "outputName": "province"}],
             "aggregations": AGGREGATIONS}
    rows = _groups(druid_store, query)
    by_province = defaultdict(list)
    for e in druid_store.events:
        by_province[e["sugo_province"]].append(e)
    assert [r["event"]["province"] for r in rows] == [None, *sorted((p for p in by_province if p), key=str.encode)]
    for row in rows:
        assert row["version"] == "v1" and row["timestamp"] == "2024-03-01T00:00:00.000Z"
        members = by_province[row["event"]["province"]]
        for spec in AGGREGATIONS:
            expected = aggregate(spec, members)
            name = spec.get("name") or spec["aggregator"]["name"]
            assert row["event"][name] == pytest.approx(expected), name


def test_lucene_group_by_answers_rows_in_tindex_form(druid_store):
    query = {"queryType": "lucene_groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
             "dimensions": ["event"], "aggregations": [{"type": "lucene_count", "name": "n"}]}
    rows = _groups(druid_store, query)
    assert all(set(r) == {"v", "timestamp", "event"} for r in rows)
    assert {r["event"]["event"]: r["event"]["n"] for r in rows} == Counter(e["event"] for e in druid_store.events)


def test_numeric_dimensions_group_as_strings_by_default(druid_store):
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
             "dimensions": ["age", {"type": "default", "dimension": "age", "outputName": "age_long",
                                    "outputType": "LONG"}],
             "aggregations": [{"type": "count", "name": "n"}]}
    rows = _groups(druid_store, query)
    counts = Counter(e["age"] for e in druid_store.events)
    assert {(r["event"]["age"], r["event"]["age_long"]): r["event"]["n"] for r in rows} == {
        (None if a is None else str(a), a): n for a, n in counts.items()}
    # Lexicographic order of the string output: None first, then "18" < "25" < ... as text.
    assert [r["event"]["age"] for r in rows] == [None, *sorted(str(a) for a in counts if a is not None)]


def _per_user(store, having=None, limit_spec=None):
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
             "dimensions": ["distinct_id"],
             "aggregations": [{"type": "count", "name": "n"},
                              {"type": "filtered", "filter": {"type": "selector", "dimension": "event", "value": "pay"},
                               "aggregator": {"type": "count", "name": "pays"}},
                              {"type": "doubleSum", "name": "spent", "fieldName": "price"}]}
    if having:
        query["having"] = having
    if limit_spec:
        query["limitSpec"] = limit_spec
    return [r["event"] for r in _groups(store, query)]


def _reference_per_user(store):
    users = defaultdict(list)
    for e in store.events:
        users[e["distinct_id"]].append(e)
    return {k: {"distinct_id": k, "n": len(v), "pays": sum(e["event"] == "pay" for e in v),
                "spent": aggregate({"type": "doubleSum", "fieldName": "price"}, v)} for k, v in users.items()}


HAVINGS = [
    ({"type": "greaterThan", "aggregation": "n", "value": 15}, lambda r: r["n"] > 15),
    ({"type": "equalTo", "aggregation": "pays", "value": 4}, lambda r: r["pays"] == 4),
    ({"type": "lessThan", "aggregation": "pays", "value": 3}, lambda r: r["pays"] < 3),
    ({"type": "filter", "filter": {"type": "bound", "dimension": "spent", "lower": "300", "ordering": "numeric"}},
     lambda r: r["spent"] is not None and r["spent"] >= 300),
    ({"type": "and", "havingSpecs": [{"type": "greaterThan", "aggregation": "n", "value": 10},
                                     {"type": "not", "havingSpec": {"type": "equalTo", "aggregation": "pays",
                                                                    "value": 0}}]},
     lambda r: r["n"] > 10 and r["pays"] != 0),
    ({"type": "or", "havingSpecs": [{"type": "dimSelector", "dimension": "distinct_id", "value": "用户7"},
                                    {"type": "lessThan", "aggregation": "n", "value": 12}]},
     lambda r: r["distinct_id"] == "用户7" or r["n"] < 12),
]


@pytest.mark.parametrize("having,keep", HAVINGS, ids=[h[0]["type"] for h in HAVINGS])
def test_having_specs_match_the_reference(druid_store, having, keep):
    got = _per_user(druid_store, having)
    expected = sorted((r for r in _reference_per_user(druid_store).values() if keep(r)),
                      key=lambda r: r["distinct_id"].encode())
    assert [r["distinct_id"] for r in got] == [r["distinct_id"] for r in expected]
    assert got == [pytest.approx(r) for r in expected]
    assert 0 < len(expected) < len(_reference_per_user(druid_store))


def test_limit_spec_orders_pages_and_offsets(druid_store):
    ordered = sorted(_reference_per_user(druid_store).values(), key=lambda r: r["distinct_id"].encode())
    ordered.sort(key=lambda r: r["pays"])  # stable: ties stay in key order
    ordered.sort(key=lambda r: r["n"], reverse=True)
    spec = {"type": "default", "columns": [{"dimension": "n", "direction": "descending"}, "pays"]}
    assert [r["distinct_id"] for r in _per_user(druid_store, limit_spec=spec)] == [r["distinct_id"] for r in ordered]
    pages = []
    for offset in range(0, len(ordered), 7):
        pages += _per_user(druid_store, limit_spec=dict(spec, limit=7, offset=offset))
    assert [r["distinct_id"] for r in pages] == [r["distinct_id"] for r in ordered]
    by_key = _per_user(druid_store, limit_spec={"type": "default", "columns": [
        {"dimension": "distinct_id", "direction": "descending"}], "limit": 3})
    assert [r["distinct_id"] for r in by_key] == sorted(_reference_per_user(druid_store), key=str.encode,
                                                        reverse=True)[:3]


def _day(ms: int, zone=timezone.utc) -> str:
    moment = datetime.fromtimestamp(ms / 1000, timezone.utc).astimezone(zone)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def test_timeseries_by_day_zero_fills_interior_buckets(druid_store):
    query = {"queryType": "timeseries", "dataSource": "schedule_desc", "granularity": "day",
             "intervals": ["2024-02-20/2024-04-01"], "filter": {"type": "selector", "dimension": "event", "value": "pay"},
             "aggregations": [{"type": "count", "name": "n"}, {"type": "longSum", "name": "age", "fieldName": "age"}]}
    rows = _groups(druid_store, query)
    pays = [e for e in druid_store.events if e["event"] == "pay"]
    by_day = defaultdict(list)
    for e in pays:
        by_day[_day(e["__time"])].append(e)
    expected = []
    for day in range(1, 7):
        members = by_day.get(datetime(2024, 3, day, tzinfo=timezone.utc), [])
        expected.append({"timestamp": f"2024-03-0{day}T00:00:00.000Z",
                         "result": {"n": len(members), "age": aggregate({"type": "longSum", "fieldName": "age"}, members)}})
    assert rows == expected
    assert expected[2]["result"] == {"n": 0, "age": None}
    skipped = _groups(druid_store, dict(query, context={"skipEmptyBuckets": True}))
    assert skipped == [r for r in expected if r["result"]["n"]]
    descending = _groups(druid_store, dict(query, descending=True, limit=2))
    assert descending == expected[::-1][:2]


def test_timeseries_period_granularity_in_a_time_zone(druid_store):
    zone = ZoneInfo("Asia/Shanghai")
    query = {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": ALL,
             "granularity": {"type": "period", "period": "P1D", "timeZone": "Asia/Shanghai"},
             "aggregations": [{"type": "count", "name": "n"}], "context": {"skipEmptyBuckets": True}}
    rows = _groups(druid_store, query)
    counts = Counter(_day(e["__time"], zone) for e in druid_store.events)
    assert rows == [{"timestamp": day.strftime("%Y-%m-%dT%H:%M:%S.000+08:00"), "result": {"n": n}}
                    for day, n in sorted(counts.items())]


def test_timeseries_all_and_grand_total(druid_store):
    query = {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
             "aggregations": [{"type": "count", "name": "n"},
                              {"type": "cardinality", "name": "users", "fields": ["distinct_id"], "round": True}],
             "context": {"grandTotal": True}}
    rows = _groups(druid_store, query)
    expected = {"n": len(druid_store.events), "users": len({e["distinct_id"] for e in druid_store.events})}
    assert rows == [{"timestamp": "2024-03-01T00:00:00.000Z", "result": expected},
                    {"timestamp": None, "result": expected}]
    nothing = _groups(druid_store, dict(query, context={}, filter={"type": "selector", "dimension": "event",
                                                                    "value": "none"}))
    assert nothing[0]["result"] == {"n": 0, "users": 0}


def test_top_n_metrics_match_the_reference(druid_store):
    base = {"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
            "dimension": "distinct_id", "threshold": 5,
            "aggregations": [{"type": "count", "name": "n"}, {"type": "doubleSum", "name": "spent", "fieldName": "price"}]}
    reference = _reference_per_user(druid_store).values()

    def top(key, reverse):
        ranked = sorted(reference, key=lambda r: r["distinct_id"].encode())
        ranked.sort(key=key, reverse=reverse)
        return [{"distinct_id": r["distinct_id"], "n": r["n"], "spent": pytest.approx(r["spent"])} for r in ranked[:5]]

    rows = _groups(druid_store, dict(base, metric="n"))
    assert rows == [{"timestamp": "2024-03-01T00:00:00.000Z", "result": top(lambda r: r["n"], True)}]
    rows = _groups(druid_store, dict(base, metric={"type": "inverted", "metric": {"type": "numeric", "metric": "n"}}))
    assert rows[0]["result"] == top(lambda r: r["n"], False)
    rows = _groups(druid_store, dict(base, metric={"type": "dimension", "ordering": "lexicographic",
                                                   "previousStop": "u05"}))
    expected = sorted((r for r in reference if r["distinct_id"].encode() > b"u05"), key=lambda r: r["distinct_id"].encode())
    assert [r["distinct_id"] for r in rows[0]["result"]] == [r["distinct_id"] for r in expected[:5]]


def test_top_n_by_day(druid_store):
    query = {"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "day",
             "dimension": "event", "metric": "n", "threshold": 2, "aggregations": [{"type": "count", "name": "n"}]}
    rows = _groups(druid_store, query)
    per_day = defaultdict(Counter)
    for e in druid_store.events:
        per_day[_day(e["__time"])][e["event"]] += 1
    expected = []
    for day, counts in sorted(per_day.items()):
        ranked = sorted(sorted(counts.items()), key=lambda kv: kv[1], reverse=True)[:2]
        expected.append({"timestamp": day.strftime("%Y-%m-%dT00:00:00.000Z"),
                         "result": [{"event": k, "n": n} for k, n in ranked]})
    assert rows == expected


def test_scan_formats_columns_and_pages(druid_store):
    spec = {"type": "selector", "dimension": "event", "value": "login"}
    query = {"queryType": "scan", "dataSource": "schedule_desc", "intervals": ALL, "filter": spec,
             "columns": ["__time", "distinct_id", "price"], "order": "ascending", "batchSize": 50}
    batches = _groups(druid_store, query)
    assert all(set(b) == {"segmentId", "columns", "events"} and b["columns"] == ["__time", "distinct_id", "price"]
               for b in batches)
    assert all(len(b["events"]) <= 50 for b in batches) and len(batches) > 1
    got = [e for b in batches for e in b["events"]]
    logins = [e for e in druid_store.events if matches(spec, e)]
    assert [e["__time"] for e in got] == sorted(e["__time"] for e in logins)
    assert sorted((e["__time"], e["distinct_id"], e["price"]) for e in got) == sorted(
        (e["__time"], e["distinct_id"], e["price"]) for e in logins)

    compact = _groups(druid_store, dict(query, resultFormat="compactedList"))
    assert [row for b in compact for row in b["events"]] == [[e["__time"], e["distinct_id"], e["price"]] for e in got]

    unordered = dict(query, order="none")
    whole = [e for b in _groups(druid_store, dict(unordered, batchSize=10_000)) for e in b["events"]]
    paged = []
    for offset in range(0, len(logins), 40):
        paged += [e for b in _groups(druid_store, dict(unordered, limit=40, offset=offset)) for e in b["events"]]
    assert len(paged) == len(logins)
    assert sorted(map(tuple, (e.values() for e in paged))) == sorted(map(tuple, (e.values() for e in whole)))


def test_scan_default_columns_cover_the_table(druid_store):
    batches = _groups(druid_store, {"queryType": "scan", "dataSource": "tag_bank", "intervals": ALL,
                                    "resultFormat": "list"})
    rows = [e for b in batches for e in b["events"]]
    assert batches[0]["columns"][:2] == ["__time", "distinct_id"]
    assert sorted(rows, key=lambda r: r["distinct_id"]) == sorted(druid_store.users, key=lambda r: r["distinct_id"])


def test_user_group_returns_the_distinct_dimension_values(druid_store):
    query = {"queryType": "user_group", "dataSource": "tag_bank", "granularity": "all", "intervals": ALL,
             "filter": {"type": "selector", "dimension": "ub_risk", "value": "R4"}, "dimension": "distinct_id",
             "dataConfig": {"hostAndPorts": "127.0.0.1:6379", "clusterMode": False, "groupId": "g"}}
    ids = _groups(druid_store, query)
    expected = sorted((u["distinct_id"] for u in druid_store.users if u["ub_risk"] == "R4"), key=str.encode)
    assert ids == expected and expected
    assert user_group_uids(query, druid_store.datasources) == to_bitmap(druid_store.engine.encode(expected, create=False))

    events = dict(query, dataSource="schedule_desc", filter={"type": "selector", "dimension": "sugo_province",
                                                             "value": "广东省"})
    expected = sorted({e["distinct_id"] for e in druid_store.events if e["sugo_province"] == "广东省"}, key=str.encode)
    assert _groups(druid_store, events) == expected
    assert _groups(druid_store, dict(events, dimension="item")) == sorted(
        {e["item"] for e in druid_store.events if e["sugo_province"] == "广东省" and e["item"]}, key=str.encode)


def test_intervals_restrict_rows(druid_store):
    def count(intervals, datasource="schedule_desc"):
        rows = _groups(druid_store, {"queryType": "timeseries", "dataSource": datasource, "granularity": "all",
                                     "intervals": intervals, "aggregations": [{"type": "count", "name": "n"}]})
        return rows[0]["result"]["n"]

    def reference(start, end):
        return sum(start <= e["__time"] < end for e in druid_store.events)

    day2 = int(datetime(2024, 3, 2, tzinfo=timezone.utc).timestamp() * 1000)
    assert count("2024-03-02/P1D") == reference(day2, day2 + 86_400_000) > 0
    assert count(["2024-03-02T00:00:00+08:00/2024-03-02T06:00:00.000+08:00"]) == reference(
        day2 - 8 * 3_600_000, day2 - 2 * 3_600_000)
    assert count({"type": "intervals", "intervals": ["P2D/2024-03-03"]}) == reference(day2 - 86_400_000,
                                                                                        day2 + 86_400_000)
    assert count(ALL, "tag_bank") == len(druid_store.users)
    assert count("2000/2001", "tag_bank") == 0


@pytest.mark.parametrize("query,status,fragment", [
    ({"queryType": "nope"}, 400, "queryType"),
    ({"queryType": "groupBy", "dataSource": "missing", "intervals": ALL}, 400, "missing"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc"}, 400, "intervals"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": "2024-13-01/2025"}, 400, "intervals[0]"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL,
      "aggregations": [{"type": "hyperUnique", "name": "h", "fieldName": "x"}]}, 501, "hyperUnique"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL,
      "filter": {"type": "selector", "dimension": "item", "value": "a", "extractionFn": {"type": "upper"}}},
     501, "extractionFn"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL,
      "filter": {"type": "regex", "dimension": "item", "pattern": "(?=s)"}}, 501, "Java regex"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL,
      "filter": {"type": "bound", "dimension": "age", "lower": "x", "ordering": "numeric"}}, 400, "filter.lower"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL,
      "filter": {"type": "bound", "dimension": "age", "lower": "1", "ordering": "strlen"}}, 501, "strlen"),
    ({"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": ALL,
      "postAggregations": [{"type": "arithmetic"}]}, 501, "postAggregations"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL,
      "postAggregations": [{"type": "arithmetic"}]}, 400, "postAggregations[0].name"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "postAggregations": [
        {"type": "javascript", "name": "j"}]}, 501, "javascript"),
    ({"queryType": "scan", "dataSource": "schedule_desc", "intervals": ALL, "resultFormat": "valueVector"},
     501, "valueVector"),
    ({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "dimensions": ["event"],
      "limitSpec": {"type": "default", "columns": ["nope"]}}, 400, "limitSpec.columns[0]"),
    ({"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": ALL,
      "granularity": {"type": "period", "period": "P2D", "timeZone": "Asia/Shanghai"}}, 501, "P2D"),
    ({"queryType": "search", "dataSource": "schedule_desc", "intervals": ALL}, 501, "search"),
])
def test_unsupported_and_bad_queries_answer_druid_errors(druid_store, query, status, fragment):
    got_status, body = execute(query, druid_store.datasources)
    assert got_status == status
    assert set(body) == {"error", "errorMessage", "errorClass", "host"} and body["host"] is None
    assert fragment in body["errorMessage"]
    assert body["error"] == ("Unsupported operation" if status == 501 else "Json parse failed")


def test_post_aggregations_having_and_array_rows_follow_druids_groupby(druid_store):
    """avg as quotient(sum, non-null count), a having over the post-aggregator, rows as arrays (resultAsArray)."""
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
             "dimensions": ["distinct_id"],
             "aggregations": [{"type": "doubleSum", "name": "s", "fieldName": "price"},
                              {"type": "filtered", "name": "n", "aggregator": {"type": "count", "name": "n"},
                               "filter": {"type": "not", "field": {"type": "selector", "dimension": "price",
                                                                   "value": None}}}],
             "postAggregations": [{"type": "arithmetic", "name": "avg", "fn": "quotient", "fields": [
                 {"type": "fieldAccess", "fieldName": "s"}, {"type": "fieldAccess", "fieldName": "n"}]},
                 {"type": "arithmetic", "name": "half", "fn": "/", "fields": [
                     {"type": "fieldAccess", "fieldName": "n"}, {"type": "constant", "name": "z", "value": 0}]}],
             "having": {"type": "filter", "filter": {"type": "bound", "dimension": "avg", "ordering": "numeric",
                                                     "lower": "20", "lowerStrict": True}},
             "limitSpec": {"type": "default", "columns": ["distinct_id"]},
             "context": {"resultAsArray": True}}
    status, rows = execute(query, druid_store.datasources)
    assert status == 200
    prices = defaultdict(list)
    for event in druid_store.events:
        if event["price"] is not None:
            prices[event["distinct_id"]].append(event["price"])
    expected = sorted((k, sum(v) / len(v)) for k, v in prices.items() if sum(v) / len(v) > 20)
    assert [r[0] for r in rows] == [k for k, _ in expected]
    assert [r[3] for r in rows] == pytest.approx([v for _, v in expected])
    assert all(len(r) == 5 and r[4] == 0 for r in rows)  # Druid's "/" answers 0 for a zero divisor
    timed = execute({**query, "granularity": "day", "having": None, "postAggregations": []},
                    druid_store.datasources)[1]
    assert all(isinstance(r[0], int) and r[0] % 86_400_000 == 0 and len(r) == 4 for r in timed)


def test_segment_metadata_answers_every_column_with_its_type(druid_store):
    status, body = execute({"queryType": "segmentMetadata", "dataSource": "schedule_desc", "intervals": [ALL],
                            "merge": True, "analysisTypes": []}, druid_store.datasources)
    assert status == 200 and len(body) == 1 and body[0]["numRows"] == len(druid_store.events)
    types = {name: column["type"] for name, column in body[0]["columns"].items()}
    assert types == {"__time": "LONG", "distinct_id": "STRING", "event": "STRING", "sugo_province": "STRING",
                     "age": "LONG", "price": "DOUBLE", "item": "STRING"}
