"""Druid backend section (issue 13): the bench cohort through the Druid backend over HTTP vs the embedded backend.

The broker is the service's own embedded Druid-compatible broker (cohort_engine.broker) over the
same store, served over HTTP on a loopback port, so the difference is what the Druid path adds:
HTTP, JSON, the broker's key decoding and the backend's key encoding. Each part is timed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cohort_engine import db
from cohort_engine.backends.druid import DruidSession
from cohort_engine.broker import DataSources, DataSourceSpec, respond
from cohort_engine.definition import parse_definition
from cohort_engine.druid import client as client_module
from cohort_engine.project import ProjectEngine

from . import BenchContext, Row, section
from .engine import BASE_TIME, COHORT, _best_of, _config, _existing_project, _fresh_project, _ingest, _sample

# BENCH_DRUID_EVENTS=5000000 runs the section at 5M events / 250k users (a loaded machine).
SIZES = {"full": (20_000_000, 1_000_000), "small": (1_000_000, 50_000)}


def label_of(events: int, users: int) -> str:
    return f"{events / 1e6:g}M events / {users / 1e6:g}M users"


class _Broker:
    """POST /druid/v2 answered by the embedded broker, with the time spent in it recorded."""

    def __init__(self, config, project: str):
        self.datasources = DataSources.for_config(config, {
            "events": DataSourceSpec(project, "events", "distinct_id"),
            "profiles": DataSourceSpec(project, "users", "distinct_id")})
        self.seconds = 0.0
        self.bytes = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                """Quiet."""

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                started = time.perf_counter()
                status, payload = respond(raw, owner.datasources)
                owner.seconds += time.perf_counter() - started
                owner.bytes += len(payload)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _Timed:
    """Wraps a session's client and encoder to split its time: waiting on HTTP, parsing JSON, encoding keys."""

    def __init__(self, session: DruidSession):
        self.http = self.parse = self.encode = 0.0
        self.keys = 0
        original_parse = client_module.parse_body
        timer = self

        def timed_parse(response):
            started = time.perf_counter()
            try:
                return original_parse(response)
            finally:
                timer.parse += time.perf_counter() - started

        self._restore = lambda: setattr(client_module, "parse_body", original_parse)
        client_module.parse_body = timed_parse
        query, encode = session.client.query, session._encode

        def timed_query(*args, **kwargs):
            started = time.perf_counter()
            try:
                return query(*args, **kwargs)
            finally:
                timer.http += time.perf_counter() - started

        def timed_encode(keys):
            started = time.perf_counter()
            try:
                return encode(keys)
            finally:
                timer.encode += time.perf_counter() - started
                timer.keys += len(keys)

        session.client.query = timed_query
        session._encode = timed_encode

    def close(self):
        self._restore()


def _druid_project(ctx: BenchContext, name: str, port: int) -> ProjectEngine:
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM projects WHERE name = %s", (name,))
        cur.execute("INSERT INTO projects (name, timezone, backend) VALUES (%s, 'UTC', %s)", (name, json.dumps({
            "kind": "druid", "brokers": f"http://127.0.0.1:{port}/druid/v2", "events": "events",
            "profiles": "profiles", "timeout_ms": 600_000})))
    return ProjectEngine(_config(ctx), name)


@section("druid")
def druid_section(ctx: BenchContext) -> list[Row]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(ctx.database_url)
    events, users = SIZES[ctx.scale]
    if os.environ.get("BENCH_DRUID_EVENTS"):
        events = int(os.environ["BENCH_DRUID_EVENTS"])
        users = events // 20
        ctx.notes.append(f"run at {label_of(events, users)} (BENCH_DRUID_EVENTS) instead of 20M / 1M: the machine "
                         "was shared and loaded")
    label = label_of(events, users)
    name = f"bench_{ctx.scale}_{events // 1_000_000}m"
    embedded = _existing_project(ctx, name, events)
    if embedded is None:
        embedded = _fresh_project(ctx, name)
        _ingest(embedded, _sample(ctx, events, users))
    broker = _Broker(_config(ctx), name)
    rows: list[Row] = []
    try:
        tree = parse_definition(COHORT)
        embedded_seconds, embedded_result = _best_of(lambda: embedded.compute(tree, base_time=BASE_TIME))
        druid = _druid_project(ctx, f"{name}_druid", broker.port)
        first = time.perf_counter()
        druid.compute(tree, base_time=BASE_TIME)  # a fresh dictionary: every key is new once
        first_seconds = time.perf_counter() - first
        broker.seconds = 0.0
        broker.bytes = 0
        session = druid.open_session()
        timer = _Timed(session)
        try:
            from cohort_engine.evaluate import EvalContext, evaluate
            from cohort_engine.timewin import parse_base_time

            started = time.perf_counter()
            ctx_eval = EvalContext(session=session, tz=druid.tz, base_time=parse_base_time(BASE_TIME, druid.tz),
                                   encode_keys=druid.encode)
            result = evaluate(tree, ctx_eval)
            druid_seconds = time.perf_counter() - started
            queries = session.queries_sent
        finally:
            timer.close()
            session.close()
        got = set(druid.iter_keys(result.bitmap))
        expected = set(embedded.iter_keys(embedded_result.bitmap))
        if got != expected:
            raise AssertionError(f"druid and embedded backends disagree: {len(got)} vs {len(expected)} users")
        server = broker.seconds
        client_other = max(timer.http - server - timer.parse, 0.0)
        row = Row(f"cohort (3 conditions, 4 leaves), {label}: Druid backend over HTTP", druid_seconds, "s",
                  embedded_seconds, "embedded backend, same store", "ratio <= 3")
        row.passed = row.ratio <= 3
        row.note = (f"same {len(got):,} users; {queries} queries, {broker.bytes / 1e6:.1f} MB of JSON; broker "
                    f"{server:.2f} s (its DuckDB + key decoding), JSON parse {timer.parse:.2f} s, HTTP and the "
                    f"rest of the client {client_other:.2f} s, key encoding {timer.encode:.2f} s "
                    f"({timer.keys:,} keys); first run with an empty dictionary {first_seconds:.2f} s")
        rows.append(row)
        part = max([("the broker", server), ("JSON parsing", timer.parse), ("key encoding", timer.encode),
                    ("HTTP", client_other)], key=lambda p: p[1])
        ctx.notes.append(f"what the Druid path adds over the embedded backend is mostly {part[0]} ({part[1]:.2f} s of "
                         f"{druid_seconds - embedded_seconds:.2f} s extra)")
        print(f"  druid cohort: {druid_seconds:.2f} s vs embedded {embedded_seconds:.2f} s; {row.note}", flush=True)
        rows.append(_sequence_row(embedded, druid, label))
        rows.extend(_tag_rows(embedded, druid, label, broker))
        rows.append(_key_rate(druid, broker))
    finally:
        broker.close()
    return rows


def _key_rate(druid: ProjectEngine, broker: _Broker) -> Row:
    """Every user key of the profiles datasource from broker answers into a bitmap (keys known to the dictionary)."""
    from cohort_engine.backends.druid.queries import LeafQueries

    session = druid.open_session()
    try:
        query = LeafQueries(session.settings, session.catalog, None, None).users("profiles")
        session._users(query)  # warm: keys known, dictionary cache loaded
        broker.seconds = 0.0
        timer = _Timed(session)
        started = time.perf_counter()
        bitmap = session._users(query)
        seconds = time.perf_counter() - started
        timer.close()
    finally:
        session.close()
    # From the broker's answers on: the time the broker spent computing them is taken out.
    client_seconds = max(seconds - broker.seconds, 1e-9)
    rate = len(bitmap) / client_seconds
    return Row(f"user keys from broker answers into a bitmap ({len(bitmap):,} keys: transfer, parse, encode)", rate,
               "keys/s", target=">= 1,000,000/s", passed=rate >= 1_000_000,
               note=f"{client_seconds:.2f} s after the broker's {broker.seconds:.2f} s (end to end "
                    f"{len(bitmap) / seconds:,.0f} keys/s); JSON parse {timer.parse:.2f} s, dictionary encode "
                    f"{timer.encode:.2f} s, bitmap and HTTP the rest")


# Tags through Session.user_values: one metric (one row per payer) and one first_last (pairs per user and value).
TAGS = {
    "metric tag (sum of price, pay, last 30 days)": {"kind": "metric", "event": "pay", "agg": {"fn": "sum", "property": "price"},
                                                     "window": {"last": 30, "offset": 0, "unit": "day"}},
    "first_last tag (last item_name, last 7 days)": {"kind": "first_last", "which": "last", "event": "*",
                                                     "window": {"last": 7, "offset": 0, "unit": "day"},
                                                     "property": "item_name", "type": "string"},
}


def _tag_rows(embedded: ProjectEngine, druid: ProjectEngine, label: str, broker: _Broker) -> list[Row]:
    from cohort_engine.tag_definition import parse_tag_definition

    rows = []
    for name, raw in TAGS.items():
        tag = parse_tag_definition(raw)
        embedded_seconds, expected = _best_of(lambda t=tag: embedded.compute_tag(t, base_time=BASE_TIME), runs=1)
        def through_druid(t=tag):
            broker.seconds, broker.bytes = 0.0, 0  # so that they are the measured (last) run's
            return druid.compute_tag(t, base_time=BASE_TIME)

        druid_seconds, got = _best_of(through_druid, runs=1)
        want, have = _tag_map(embedded, expected.column), _tag_map(druid, got.column)
        if have != want:
            raise AssertionError(f"{name}: druid and embedded backends disagree ({len(have)} vs {len(want)} users)")
        why = ("; the universe (every key of both datasources, for the zeros of users without pays) is most of it"
               if raw["kind"] == "metric" else "; one row per user and distinct value, reduced in the worker")
        rows.append(Row(f"{name}, {label}: Druid backend", druid_seconds, "s", embedded_seconds,
                        "embedded backend (one SQL statement)",
                        note=f"same {len(have):,} (user, value) pairs; broker {broker.seconds:.2f} s of it (its "
                             f"DuckDB, key decoding, JSON), {broker.bytes / 1e6:.1f} MB of JSON{why}"))
    return rows


def _tag_map(engine: ProjectEngine, column) -> dict:
    """{user key: value} of a TagColumn; sums rounded to 1e-6 (added in another order, the last bits differ)."""
    from cohort_engine.bitmaps import to_bitmap

    found = {}
    for uids, values in column.rows():
        keys = engine.iter_keys(to_bitmap(uids))
        found.update((k, round(v, 6) if isinstance(v, float) else v) for k, v in zip(keys, values, strict=True))
    return found


# Three steps in the last 7 days: the Druid backend fetches each step's per-user times and joins them here.
SEQUENCE = {"type": "sequence", "window": {"last": 7, "offset": 0, "unit": "day"},
            "steps": [{"event": "player_register"}, {"event": "fight_success"}, {"event": "pay"}]}


def _sequence_row(embedded: ProjectEngine, druid: ProjectEngine, label: str) -> Row:
    tree = parse_definition(SEQUENCE)
    embedded_seconds, expected = _best_of(lambda: embedded.compute(tree, base_time=BASE_TIME), runs=1)
    druid_seconds, got = _best_of(lambda: druid.compute(tree, base_time=BASE_TIME), runs=1)
    got_keys, expected_keys = set(druid.iter_keys(got.bitmap)), set(embedded.iter_keys(expected.bitmap))
    if got_keys != expected_keys:
        raise AssertionError(f"sequence: druid {len(got_keys)} users, embedded {len(expected_keys)}")
    return Row(f"sequence (3 steps, last 7 days), {label}: Druid backend, steps joined in the worker",
               druid_seconds, "s", embedded_seconds, "embedded backend (one SQL statement)",
               note=f"same {len(got_keys):,} users")
