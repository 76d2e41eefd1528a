"""The broker client against a small real HTTP server (http.server in a thread on 127.0.0.1).

The server either replays canned Druid responses or answers from the embedded executor, and it
records every request, so retries, paging, cancellation and error parsing are seen on the wire.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cohort_engine.druid.client import DruidClient, DruidError, broker_endpoints
from cohort_engine.druid.protocol import row_event
from dialects.sugo.broker_queries import row_event as sugo_row_event
from tests.cohort_engine.broker.reference import matches
from tests.cohort_engine.broker.sugo import execute


class Broker:
    """A thread-served HTTP endpoint; `script` answers each POST, `requests` records them all."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script = []  # (status, body) or a callable(query) -> (status, body), consumed in order
        self.fallback = None
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                """Quiet: the test reads the recorded requests, not the access log."""

            def _answer(self, status, body):
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                broker.requests.append({"method": "POST", "path": self.path, "body": body})
                step = broker.script.pop(0) if broker.script else broker.fallback
                self._answer(*(step(body) if callable(step) else step))

            def do_DELETE(self):
                broker.requests.append({"method": "DELETE", "path": self.path})
                self._answer(202, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def posts(self):
        return [r for r in self.requests if r["method"] == "POST"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker():
    server = Broker()
    yield server
    server.close()


def _client(broker, **options):
    options.setdefault("backoff_seconds", 0.01)
    # The broker here answers lucene_groupBy, whose rows come in tindex's form: Sugo's parser reads them.
    options.setdefault("row_parser", sugo_row_event)
    return DruidClient(f"http://127.0.0.1:{broker.port}/druid/v2?pretty", **options)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_broker_addresses_as_url_or_host_list():
    assert broker_endpoints("http://10.0.0.5:8082/druid/v2?pretty") == ["http://10.0.0.5:8082/druid/v2/?pretty"]
    assert broker_endpoints("http://b:8082") == ["http://b:8082/druid/v2/"]
    assert broker_endpoints("h1:8082, h2:8082") == ["http://h1:8082/druid/v2/", "http://h2:8082/druid/v2/"]
    with pytest.raises(ValueError, match="broker"):
        broker_endpoints(" , ")


def test_query_sends_json_with_a_query_id_and_reads_both_row_forms(broker):
    broker.script = [(200, [{"version": "v1", "timestamp": "2024-01-01T00:00:00.000Z", "event": {"a": 1}}]),
                     (200, [{"v": "v1", "timestamp": "2024-01-01T00:00:00.000Z", "event": {"a": 2}}])]
    with _client(broker) as client:
        pages = list(client.iter_group_by({"queryType": "groupBy", "dimensions": ["a"]}, page_size=5))
        pages += list(client.iter_group_by({"queryType": "lucene_groupBy", "dimensions": ["a"],
                                            "context": {"queryId": "mine"}}, page_size=5))
    assert pages == [[{"a": 1}], [{"a": 2}]]
    first, second = broker.posts
    assert first["path"] == "/druid/v2/?pretty"
    assert first["body"]["context"]["queryId"] and second["body"]["context"]["queryId"] == "mine"
    assert first["body"]["limitSpec"] == {"type": "default", "columns": [{"dimension": "a"}], "limit": 5, "offset": 0}


@pytest.mark.parametrize("status", [429, 503])
def test_capacity_answers_are_retried_then_succeed(broker, status):
    busy = {"error": "Query capacity exceeded", "errorMessage": "busy", "errorClass": "x", "host": None}
    broker.script = [(status, busy), (status, busy), (200, [])]
    with _client(broker) as client:
        assert client.query({"queryType": "timeseries"}) == []
    assert len(broker.posts) == 3
    assert len({p["body"]["context"]["queryId"] for p in broker.posts}) == 1


def test_retries_are_bounded(broker):
    broker.fallback = (503, {"error": "Query capacity exceeded", "errorMessage": "busy", "errorClass": "x", "host": None})
    with _client(broker, retries=2) as client, pytest.raises(DruidError) as caught:
        client.query({"queryType": "timeseries"})
    assert caught.value.error_code == "Query capacity exceeded" and caught.value.status == 503
    assert len(broker.posts) == 3


@pytest.mark.parametrize("status,body,code,message", [
    (500, {"error": "Unknown exception", "errorMessage": "boom", "errorClass": "java.lang.RuntimeException",
           "host": "h:8083"}, "Unknown exception", "boom"),
    (400, {"error": "druidException", "errorCode": "invalidInput", "persona": "USER", "category": "INVALID_INPUT",
           "errorMessage": "bad column", "context": {}}, "invalidInput", "bad column"),
    (504, {"error": "Query timeout", "errorMessage": "Query [q] timed out.", "errorClass": "x", "host": None},
     "Query timeout", "timed out"),
    (502, "<html>bad gateway</html>", "HTTP 502", "bad gateway"),
])
def test_errors_are_parsed_and_not_retried(broker, status, body, code, message):
    broker.fallback = (status, body)
    with _client(broker) as client, pytest.raises(DruidError) as caught:
        client.query({"queryType": "groupBy"})
    assert caught.value.error_code == code and message in caught.value.message and caught.value.status == status
    assert len(broker.posts) == 1
    if code == "invalidInput":
        assert caught.value.category == "INVALID_INPUT"


def test_connection_errors_move_to_the_next_host(broker):
    broker.fallback = (200, [{"timestamp": "2024-01-01T00:00:00.000Z", "result": {"n": 3}}])
    hosts = f"127.0.0.1:{_closed_port()},127.0.0.1:{broker.port}"
    with DruidClient(hosts, backoff_seconds=0.01) as client:
        assert client.query({"queryType": "timeseries"})[0]["result"] == {"n": 3}
    assert len(broker.posts) == 1


def test_unreachable_brokers_fail_with_a_connection_error():
    with DruidClient(f"127.0.0.1:{_closed_port()}", retries=1, backoff_seconds=0.01) as client:
        with pytest.raises(DruidError) as caught:
            client.query({"queryType": "timeseries"})
    assert caught.value.error_code == "Connection failed"


def test_context_timeout_bounds_the_wait_and_is_not_retried(broker):
    def slow(query):
        time.sleep(1.5)
        return 200, []

    broker.fallback = slow
    with _client(broker, timeout_grace_seconds=0.0) as client, pytest.raises(DruidError) as caught:
        client.query({"queryType": "timeseries", "context": {"timeout": 200}})
    assert caught.value.error_code == "Query timeout"
    assert len(broker.posts) == 1


def test_cancel_deletes_the_query_by_id(broker):
    with _client(broker) as client:
        query, query_id = client.with_query_id({"queryType": "groupBy"})
        assert query["context"]["queryId"] == query_id
        assert client.cancel(query_id) is True
    assert broker.requests == [{"method": "DELETE", "path": f"/druid/v2/{query_id}?pretty"}]


def test_scan_pages_use_limit_and_offset(broker):
    rows = [[i, f"u{i}"] for i in range(23)]

    def page(query):
        chunk = rows[query["offset"]:query["offset"] + query["limit"]]
        return 200, ([{"segmentId": "s", "columns": ["__time", "distinct_id"], "events": chunk}] if chunk else [])

    broker.fallback = page
    with _client(broker) as client:
        pages = list(client.iter_scan({"queryType": "scan", "resultFormat": "compactedList"}, page_size=10))
        limited = list(client.iter_scan({"queryType": "scan", "limit": 12, "offset": 5}, page_size=10))
    assert [len(p) for p in pages] == [10, 10, 3] and [r for p in pages for r in p] == rows
    assert [r for p in limited for r in p] == rows[5:17]
    assert [(p["body"]["limit"], p["body"]["offset"]) for p in broker.posts[-2:]] == [(10, 5), (2, 15)]


def _serve_embedded(broker, datasources):
    broker.fallback = lambda query: execute(query, datasources)


def test_paged_group_by_through_the_embedded_broker_matches_the_reference(broker, druid_store):
    _serve_embedded(broker, druid_store.datasources)
    spec = {"type": "in", "dimension": "event", "values": ["pay", "view"]}
    query = {"queryType": "lucene_groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000",
             "granularity": "all", "filter": spec, "dimensions": ["distinct_id", "event"],
             "aggregations": [{"type": "lucene_count", "name": "n"}]}
    with _client(broker) as client:
        pages = list(client.iter_group_by(query, page_size=17))
        whole = [row["event"] for row in client.query(query)]
    expected = Counter((e["distinct_id"], e["event"]) for e in druid_store.events if matches(spec, e))
    assert all(len(p) == 17 for p in pages[:-1]) and len(pages) > 2
    got = [r for p in pages for r in p]
    assert got == whole
    assert {(r["distinct_id"], r["event"]): r["n"] for r in got} == dict(expected)
    assert len(got) == len(expected)


def test_paged_scan_through_the_embedded_broker_matches_the_reference(broker, druid_store):
    _serve_embedded(broker, druid_store.datasources)
    query = {"queryType": "scan", "dataSource": "schedule_desc", "intervals": "1000/3000",
             "columns": ["__time", "distinct_id", "event"], "resultFormat": "compactedList",
             "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"}}
    with _client(broker) as client:
        pages = list(client.iter_scan(query, page_size=25))
    got = sorted(tuple(r) for p in pages for r in p)
    assert got == sorted((e["__time"], e["distinct_id"], e["event"]) for e in druid_store.events
                         if e["sugo_province"] == "广东省")


def test_embedded_errors_reach_the_client_as_druid_errors(broker, druid_store):
    _serve_embedded(broker, druid_store.datasources)
    with _client(broker) as client, pytest.raises(DruidError) as caught:
        client.query({"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000",
                      "aggregations": [{"type": "thetaSketch", "name": "t", "fieldName": "x"}]})
    assert caught.value.status == 501 and caught.value.error_code == "Unsupported operation"
    assert "thetaSketch" in caught.value.message


def test_the_client_alone_reads_only_druid_rows():
    """tindex's {"v": ...} rows are Sugo's to read (dialects/sugo/broker_queries.py), not the client's."""
    assert row_event({"version": "v1", "event": {"a": 1}}) == {"a": 1}
    with pytest.raises(DruidError, match="without version/event"):
        row_event({"v": "v1", "event": {"a": 2}})
    assert sugo_row_event({"v": "v1", "event": {"a": 2}}) == {"a": 2}
