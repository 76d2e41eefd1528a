"""A bounded, seeded mutation fuzz of /druid/v2: no malformed query may answer 5xx.

Seeds are the Sugo vendor queries (seeds 000 and 001, as in tests/cohort_engine/druid/test_seed_queries.py)
plus one query per query type that together reach every filter, aggregator, having and limitSpec form.
Each case applies 1-3 mutations (type changes, dropped and inserted keys, nesting, huge numbers, NaN,
empty and invalid strings) and must get a status below 500 and, when refused, Druid's error object.
Two Druid answers >= 500 are what Druid itself sends for valid input and are allowed: 501
`Unsupported operation` (a Druid feature the embedded engine lacks, docs/druid.md) and 504 `Query
timeout` when the query's own context.timeout is under a second.
An error that only escaped validation (the engine's last-resort 400, errorClass
java.lang.IllegalArgumentException) also fails the fuzz: each such hole needs its own check.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import replace

import pytest

from tests.cohort_engine.broker.test_seed_queries import PROVINCE_GROUP, RISK_GROUP, TAG_QUERY
from tests.services import create_sample_project

CASES = int(os.environ.get("COHORTS_DRUID_FUZZ_CASES", "600"))
SEED = int(os.environ.get("COHORTS_DRUID_FUZZ_SEED", "20261201"))
ALL = "1000/3000"
ESCAPED_VALIDATION = "java.lang.IllegalArgumentException"

RICH = [
    {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": [ALL], "granularity": "day",
     "dimensions": ["event", {"type": "default", "dimension": "age", "outputName": "a", "outputType": "LONG"}],
     "filter": {"type": "and", "fields": [
         {"type": "in", "dimension": "sugo_province", "values": ["广东省", None]},
         {"type": "not", "field": {"type": "selector", "dimension": "item_name", "value": "x"}},
         {"type": "bound", "dimension": "price", "lower": "1", "upper": 90, "ordering": "numeric",
          "upperStrict": True}]},
     "aggregations": [{"type": "count", "name": "n"}, {"type": "longSum", "name": "amt", "fieldName": "amount"},
                      {"type": "filtered", "name": "paid", "filter": {"type": "equals", "column": "event",
                                                                      "matchValueType": "STRING", "matchValue": "pay"},
                       "aggregator": {"type": "doubleMax", "name": "m", "fieldName": "price"}},
                      {"type": "cardinality", "name": "u", "fields": ["distinct_id"], "round": True}],
     "having": {"type": "and", "havingSpecs": [{"type": "greaterThan", "aggregation": "n", "value": 0},
                                               {"type": "not", "havingSpec": {"type": "never"}}]},
     "limitSpec": {"type": "default", "limit": 20, "offset": 1,
                   "columns": [{"dimension": "n", "direction": "descending"},
                               {"dimension": "a", "dimensionOrder": "numeric"}]},
     "context": {"timeout": 60000, "sortByDimsFirst": False}},
    {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": "2024-01-01/P1Y",
     "granularity": {"type": "period", "period": "P1D", "timeZone": "Asia/Shanghai"}, "descending": True,
     "filter": {"type": "or", "fields": [{"type": "like", "dimension": "item_name", "pattern": "%a%"},
                                         {"type": "regex", "dimension": "event", "pattern": "^p"},
                                         {"type": "search", "dimension": "event",
                                          "query": {"type": "insensitive_contains", "value": "A"}}]},
     "aggregations": [{"type": "doubleSum", "name": "p", "fieldName": "price"},
                      {"type": "lucene_count", "name": "c"}],
     "limit": 10, "context": {"skipEmptyBuckets": "true", "grandTotal": True}},
    {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": "P2W/2030-01-01", "granularity": "hour",
     "filter": {"type": "interval", "dimension": "__time", "intervals": ["2000/2100"]},
     "aggregations": [{"type": "longMin", "name": "lo", "fieldName": "age"}]},
    {"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "all",
     "dimension": "sugo_province", "threshold": 3, "metric": {"type": "inverted", "metric": "n"},
     "filter": {"type": "range", "column": "age", "matchValueType": "LONG", "lower": 18, "upper": 60,
                "lowerOpen": False, "upperOpen": True},
     "aggregations": [{"type": "count", "name": "n"}]},
    {"queryType": "topN", "dataSource": "schedule_desc", "intervals": ALL, "granularity": "week",
     "dimension": {"type": "default", "dimension": "event", "outputName": "e"}, "threshold": 2,
     "metric": {"type": "dimension", "ordering": "lexicographic", "previousStop": "a"},
     "aggregations": [{"type": "floatSum", "name": "f", "fieldName": "price"}]},
    {"queryType": "scan", "dataSource": "schedule_desc", "intervals": ALL, "columns": ["__time", "distinct_id", "event"],
     "order": "descending", "limit": 5, "offset": 2, "batchSize": 2, "resultFormat": "compactedList",
     "filter": {"type": "null", "column": "nope"}},
    {"queryType": "scan", "dataSource": "tag_bank", "intervals": ALL, "limit": 3,
     "filter": {"type": "true"}},
    {"queryType": "groupBy", "dataSource": {"type": "table", "name": "tag_bank"},
     "intervals": {"type": "intervals", "intervals": [ALL]}, "granularity": {"type": "duration", "duration": 86400000},
     "dimensions": ["ub_risk"], "aggregations": [{"type": "count", "name": "n"}],
     "having": {"type": "filter", "filter": {"type": "selector", "dimension": "ub_risk", "value": "R1"}}},
]
SEEDS = [TAG_QUERY, PROVINCE_GROUP, RISK_GROUP, *RICH]

KEYS = ["type", "name", "fieldName", "outputName", "dimension", "dimensions", "filter", "field", "fields",
        "granularity", "intervals", "limit", "offset", "threshold", "metric", "having", "havingSpec", "limitSpec",
        "columns", "context", "timeout", "aggregations", "aggregator", "value", "values", "lower", "upper",
        "ordering", "matchValueType", "matchValue", "period", "timeZone", "duration", "queryType", "dataSource",
        "descending", "resultFormat", "batchSize", "order", "pattern", "query", "direction", "dimensionOrder",
        "previousStop", "round", "byRow", "skipEmptyBuckets", "grandTotal", "sortByDimsFirst", "queryId", ""]
TYPES = ["and", "or", "not", "selector", "in", "bound", "range", "equals", "null", "like", "regex", "search",
         "interval", "true", "false", "count", "longSum", "doubleMax", "filtered", "cardinality", "default",
         "numeric", "inverted", "dimension", "period", "duration", "all", "none", "second", "table", "intervals",
         "groupBy", "timeseries", "topN", "scan", "user_group", "lucene_groupBy", "column", "fields", "match",
         "ordering", "bounds", "nope", "__proto__", "Count", "LONG", "ARRAY<LONG>", "list", "compactedList"]
VALUES = [None, True, False, 0, -1, 1, 7, 2**31, -(2**31) - 1, 2**63, 2**64, 10**400, -(10**30), 1e308, -1e-308,
          float("nan"), float("inf"), float("-inf"), 0.5, "", " ", "x", "a\u0000b", "\ud800", "\udfff\ud800", "1" * 400,
          "P" + "9" * 400 + "D", "PT" + "9" * 400 + "S", "PT0.5S", "P1M", "2024-02-30", "1000/3000", "-999999999/+999999999",
          "99999-01-01/2024", "ETERNITY", "%", "(", "(?=a)", "\\1", "🙂", "'; DROP TABLE events; --", '"', "__time",
          "distinct_id", "__embedded_uid", [], {}, [None], [1, "a"], {"type": None}, {"type": 5}, {"type": {}},
          {"type": []}, [[[]]]]


def _paths(node, max_depth: int = 40):
    """Paths to every node of query down to max_depth (deeper ones are nesting already)."""
    paths, stack = [], [(node, ())]
    while stack:
        item, path = stack.pop()
        paths.append(path)
        if len(path) >= max_depth:
            continue
        if isinstance(item, dict):
            stack.extend((child, (*path, key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
    return paths


def _get(node, path):
    for step in path:
        node = node[step]
    return node


def _nested_not(depth: int, rng: random.Random) -> dict:
    node = {"type": "selector", "dimension": "event", "value": "pay"}
    for _ in range(depth):
        node = {"type": "not", "field": node} if rng.random() < 0.7 else {"type": rng.choice(["and", "or"]),
                                                                             "fields": [node]}
    return node


def _random_value(rng: random.Random):
    pick = rng.random()
    if pick < 0.5:
        return copy.deepcopy(rng.choice(VALUES))
    if pick < 0.75:
        return rng.choice(TYPES)
    if pick < 0.85:
        return {"type": rng.choice(TYPES), rng.choice(KEYS): copy.deepcopy(rng.choice(VALUES))}
    if pick < 0.95:
        return _nested_not(rng.choice([2, 30, 70, 300]), rng)
    return rng.randrange(-(10**20), 10**20)


def _replace(root, path, value):
    if not path:
        return value
    _get(root, path[:-1])[path[-1]] = value
    return root


def mutate(query, rng: random.Random):
    """query with one random change at a random node."""
    paths = sorted(_paths(query), key=repr)
    path = rng.choice(paths)
    node = _get(query, path)
    op = rng.random()
    if op < 0.35:
        return _replace(query, path, _random_value(rng))
    if op < 0.5 and isinstance(node, dict) and node:
        del node[rng.choice(list(node))]
        return query
    if op < 0.65 and isinstance(node, dict):
        node[rng.choice(KEYS)] = _random_value(rng)
        return query
    if op < 0.72 and isinstance(node, list):
        if node and rng.random() < 0.5:
            node.append(copy.deepcopy(rng.choice(node)))
        else:
            node.clear()
        return query
    if op < 0.8 and path:
        return _replace(query, path, rng.choice([[node], {"type": "not", "field": node}, {"x": node}]))
    # Type changes: the same content in another JSON type.
    if isinstance(node, str):
        swapped = rng.choice([len(node), [node], {"type": node}, node.upper(), node + "_x", node[:-1]])
    elif isinstance(node, bool) or node is None:
        swapped = rng.choice(["true", 1, [], "null"])
    elif isinstance(node, (int, float)):
        swapped = rng.choice([str(node), -node if node == node else 0, node * 10**12, [node], True])
    elif isinstance(node, list):
        swapped = rng.choice([{str(i): v for i, v in enumerate(node)}, json.dumps(node), len(node)])
    else:
        swapped = rng.choice([list(node.values()), json.dumps(node), list(node)])
    return _replace(query, path, swapped)


def raw_cases(rng: random.Random) -> list[bytes]:
    """Bodies that are not (valid) JSON, or nest deeper than any parser's stack."""
    good = json.dumps(TAG_QUERY).encode()
    deep_not = b'{"type": "not", "field": ' * 700 + b'{"type": "true"}' + b"}" * 700
    return [json.dumps({**TAG_QUERY, "filter": "@"}).encode().replace(b'"@"', deep_not),
            b"", b"null", b"[]", b"5", b'"x"', good[:len(good) // 2], b"\xff\xfe" + good, b"[" * 100_000,
            b'{"a":' * 50_000, good.replace(b"lucene_groupBy", b"lucene_groupBy\\ud800"),
            json.dumps([TAG_QUERY, TAG_QUERY]).encode(), good.replace(b"3000", b"3000" + b"0" * 5000)]


@pytest.fixture(scope="module")
def druid_project(database_url, service_settings, tmp_path_factory):
    return create_sample_project(database_url, service_settings.engine, tmp_path_factory.mktemp("druid-fuzz"),
                                 300, 3000, seed=8, prefix="dz")


@pytest.fixture
def druid_client(service_settings, celery_app, druid_project):
    from app import create_app

    settings = replace(service_settings, sugo_project=druid_project[0])
    return create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()


def _druid_error(response):
    try:
        answer = json.loads(response.data)
    except ValueError:
        return None
    return (answer.get("error"), answer.get("errorClass")) if isinstance(answer, dict) else None


def _asked_timeout(body: bytes) -> bool:
    """Whether the query itself set a context.timeout under a second (its 504 is what it asked for)."""
    try:
        timeout = json.loads(body)["context"]["timeout"]
        return 0 < float(timeout) < 1000
    except (ValueError, TypeError, KeyError, OverflowError):
        return False


def _check(response, body: bytes, failures: list):
    """Record a failure unless the answer is a 2xx, a Druid 4xx, Druid's 501 or an asked-for timeout."""
    status = response.status_code
    problem = None
    error = _druid_error(response)
    druid_answer = (status == 501 and error == ("Unsupported operation", "java.lang.UnsupportedOperationException")
                    or status == 504 and error == ("Query timeout", "org.apache.druid.query.QueryTimeoutException")
                    and _asked_timeout(body))
    if druid_answer:
        return
    if status >= 500:
        problem = f"status {status}"
    elif status != 200:
        try:
            answer = json.loads(response.data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or set(answer) != {"error", "errorMessage", "errorClass", "host"}:
            problem = f"status {status} without Druid's error object"
        elif answer["errorClass"] == ESCAPED_VALIDATION:
            problem = "escaped validation"
    if problem:
        failures.append(f"{problem}: {response.data[:300]!r} for {body[:600]!r}")


def test_mutated_druid_queries_never_answer_5xx(druid_client, druid_project):
    rng = random.Random(SEED)
    headers = {"Authorization": f"Bearer {druid_project[2]}", "Content-Type": "application/json"}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    bodies = raw_cases(rng)
    for _ in range(CASES):
        query = copy.deepcopy(rng.choice(SEEDS))
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            query = mutate(query, rng)
        bodies.append(json.dumps(query, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass"))
    for body in bodies:
        response = druid_client.post("/druid/v2" + ("?pretty" if rng.random() < 0.2 else ""), data=body,
                                     headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        _check(response, body, failures)
    elapsed = time.monotonic() - started
    print(f"druid fuzz cases={len(bodies)} seconds={elapsed:.1f} statuses={sorted(statuses.items())}")
    assert not failures, f"{len(failures)} of {len(bodies)} failed:\n" + "\n".join(failures[:15])
    assert statuses.get(200, 0) > len(bodies) // 10, "mutations should leave many queries valid"
