"""The Druid backend over real HTTP: paging, query context, Druid's error answers, cancel.

The broker is the service's own embedded broker served on a loopback port (tests/.../druid_broker.py);
a test that needs a failing broker scripts its answers (400, 429, 500, 504, a hang, a dropped
connection), since no Druid cluster can be had here.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest

from cohort_engine import db
from cohort_engine.backends import ProjectInfo
from cohort_engine.backends.druid import DruidBackend
from cohort_engine.backends.druid.session import DruidSession
from cohort_engine.backends.druid.settings import DruidSettings
from cohort_engine.config import EngineConfig
from cohort_engine.definition import parse_definition
from cohort_engine.druid.client import DruidClient
from cohort_engine.errors import EngineError
from cohort_engine.evaluate import EvalContext, evaluate
from cohort_engine.project import ProjectEngine
from cohort_engine.tag_definition import parse_tag_definition

from ...reference import EngineRunner, Reference, create_project, load_into, reference_tag
from ..druid_broker import HttpBroker
from ..test_conformance import DRUID_KINDS, EVENT_KINDS, make_dataset, same_values

TZ = ZoneInfo("America/New_York")
FIRST = date(2024, 10, 21)
BASE = datetime.combine(FIRST + timedelta(days=20), dtime(9, 30), tzinfo=TZ)
LEAVES = [
    {"type": "event", "event": "*", "agg": {"fn": "count"}, "window": {"last": 3, "unit": "week"}, "cmp": "gte",
     "values": [3]},
    {"type": "event", "event": "*", "agg": {"fn": "days"}, "window": {"last": 3, "unit": "week"}, "cmp": "lt",
     "values": [4]},
    {"type": "event", "event": "*", "agg": {"fn": "count_distinct", "property": "item"},
     "window": {"last": 3, "unit": "week"}, "cmp": "gte", "values": [3]},
    {"type": "sequence", "steps": [{"event": "view"}, {"event": "*"}, {"event": "pay"}],
     "window": {"last": 3, "unit": "week"}},
    {"type": "profile", "property": "city", "cmp": "ne", "values": ["alpha"]},
]


@pytest.fixture(scope="module")
def source(database_url, redis_url, tmp_path_factory):
    """A small data set in an embedded project, served as Druid datasources over HTTP."""
    root = tmp_path_factory.mktemp("druid-session")
    config = EngineConfig(database_url=database_url, redis_url=redis_url, store_dir=str(root / "store"), threads=1)
    data = make_dataset(22, FIRST, 22, TZ)
    engine = ProjectEngine(config, create_project(database_url, TZ.key))
    load_into(engine, data, root / "input")
    broker = HttpBroker(config, engine.name)
    yield config, data, broker
    broker.close()


@pytest.fixture
def broker(source):
    source[2].queries.clear()
    source[2].cancels.clear()
    source[2].fail = None
    yield source[2]
    source[2].fail = source[2].on_delete = None


def _session(source, **overrides) -> tuple[DruidSession, ProjectEngine]:
    config, _, broker = source
    setting = broker.backend(columns=DRUID_KINDS, **overrides)
    name = create_project(config.database_url, TZ.key)
    with db.connection(config.database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE projects SET backend = %s WHERE name = %s", (json.dumps(setting), name))
    engine = ProjectEngine(config, name)
    settings = DruidSettings.parse(setting)
    client = DruidClient(settings.brokers, retries=2, backoff_seconds=0.01, timeout_grace_seconds=0.1,
                         default_timeout_ms=settings.timeout_ms)
    return DruidSession(engine.info, config, settings, client=client), engine


def _members(session, engine, leaf) -> set[str]:
    ctx = EvalContext(session=session, tz=TZ, base_time=BASE, encode_keys=engine.encode)
    bitmap = evaluate(parse_definition(leaf), ctx).bitmap
    return set(engine.iter_keys(bitmap))


def test_small_pages_give_the_reference_answer_and_every_query_carries_its_context(source, broker):
    _, data, _ = source
    session, engine = _session(source, page_size=4, timeout_ms=45_000)
    try:
        for leaf in LEAVES:
            expected = Reference(data, TZ, BASE).members(parse_definition(leaf))
            assert _members(session, engine, leaf) == expected, leaf
    finally:
        session.close()
    pages: dict[str, list[int]] = {}
    for query in broker.queries:
        context = query["context"]
        assert context["timeout"] == 45_000 and context["queryId"].startswith(f"cohorts-{engine.project_id}-")
        if query["queryType"] == "groupBy":
            assert context["resultAsArray"] is True and query["limitSpec"]["limit"] == 4
            pages.setdefault(context["queryId"], []).append(query["limitSpec"]["offset"])
    # Pages of one paged query share its id and walk the offsets; some queries needed many pages.
    assert all(offsets == list(range(0, 4 * len(offsets), 4)) for offsets in pages.values())
    assert max(len(o) for o in pages.values()) >= 5


def test_small_pages_give_the_reference_tag_values(source, broker):
    """Tag values read page by page: a user's first_last rows split across pages are still reduced as one."""
    _, data, _ = source
    _, engine = _session(source, page_size=3)
    window = {"last": 3, "unit": "week"}
    tags = [{"kind": "metric", "event": "*", "agg": {"fn": "sum", "property": "price"}, "window": window},
            {"kind": "metric", "event": "pay", "agg": {"fn": "max", "property": "qty"}, "window": window},
            *({"kind": "first_last", "which": which, "event": "*", "window": window, "property": prop,
               "type": {"time": "time"}.get(prop, EVENT_KINDS.get(prop))}
              for which in ("first", "last") for prop in ("item", "qty", "paid", "due", "time"))]
    runner = EngineRunner(engine, sorted(data.universe()))
    try:
        for raw in tags:
            tag = parse_tag_definition(raw)
            (code, got), _ = runner.tag(tag, BASE)
            expected = reference_tag(data, TZ, tag, BASE)
            assert code == expected[0] and same_values(got, expected[1]), raw
    finally:
        runner.close()
    # Some first_last answer took several pages, so users were cut at page ends.
    assert max(len(q) for q in _pages_by_query(broker.queries).values()) >= 5


def _pages_by_query(queries: list[dict]) -> dict[str, list[int]]:
    pages: dict[str, list[int]] = {}
    for query in queries:
        if query["queryType"] == "groupBy":
            pages.setdefault(query["context"]["queryId"], []).append(query["limitSpec"]["offset"])
    return pages


def test_the_backend_is_chosen_by_the_project_setting(source, broker):
    session, engine = _session(source)
    assert isinstance(engine.backend, DruidBackend) and engine.backend.outbound() == [("127.0.0.1", broker.port)]
    session.close()
    bad = ProjectInfo(engine.project_id, engine.name, TZ.key, {"kind": "druid", "events": "e"})
    with pytest.raises(EngineError) as caught:
        from cohort_engine import backends

        backends.open_backend(bad, engine.config)
    assert caught.value.code == "backend_config" and "brokers" in caught.value.message


LEGACY_400 = {"error": "Unknown exception", "errorMessage": "Cannot construct instance of `BoundDimFilter`",
              "errorClass": "com.fasterxml.jackson.databind.exc.ValueInstantiationException", "host": None}
NEW_400 = {"error": "druidException", "errorCode": "invalidInput", "persona": "USER", "category": "INVALID_INPUT",
           "errorMessage": "Datasource [events_ds] does not exist", "context": {}}
TIMEOUT_504 = {"error": "Query timeout", "errorMessage": "Query [x] timed out.",
               "errorClass": "org.apache.druid.query.QueryTimeoutException", "host": "historical:8083"}


@pytest.mark.parametrize("answer,code,fragments,posts", [
    ((400, LEGACY_400), "backend_error", ["HTTP 400", "Cannot construct instance", "ValueInstantiationException",
                                          "datasource and column names"], 1),
    ((400, NEW_400), "backend_error", ["invalidInput", "Datasource [events_ds] does not exist"], 1),
    ((429, {"error": "Query capacity exceeded", "errorMessage": "Too many concurrent queries"}),
     "backend_unavailable", ["busy", "HTTP 429", "retry the job later"], 3),
    ((503, b"<html>unavailable</html>"), "backend_unavailable", ["HTTP 503"], 3),
    ((500, {"error": "Unknown exception", "errorMessage": "NullPointerException", "errorClass": "java.lang.NPE",
            "host": None}), "backend_error", ["HTTP 500", "NullPointerException", "broker's logs"], 1),
    ((504, TIMEOUT_504), "backend_timeout", ["did not finish within", "timeout_ms"], 1),
    ("drop", "backend_unavailable", ["cannot reach", "127.0.0.1"], 3),
])
def test_druid_error_answers_become_job_errors_a_person_can_act_on(source, broker, answer, code, fragments, posts):
    broker.fail = lambda query: answer if query["queryType"] == "groupBy" else None
    session, engine = _session(source)
    try:
        with pytest.raises(EngineError) as caught:
            _members(session, engine, LEAVES[0])
    finally:
        session.close()
    assert caught.value.code == code
    for fragment in fragments:
        assert fragment in caught.value.message
    assert sum(q["queryType"] == "groupBy" for q in broker.queries) == posts  # retries only on 429/503/drops


def test_a_busy_broker_is_retried_until_it_answers(source, broker):
    busy = iter([(429, {"error": "Query capacity exceeded"}), (503, b"")])
    broker.fail = lambda query: next(busy, None) if query["queryType"] == "groupBy" else None
    session, engine = _session(source)
    try:
        expected = Reference(source[1], TZ, BASE).members(parse_definition(LEAVES[0]))
        assert _members(session, engine, LEAVES[0]) == expected
    finally:
        session.close()


def test_a_broker_that_does_not_answer_in_time_is_a_timeout(source, broker):
    broker.fail = lambda query: time.sleep(1.0) if query["queryType"] == "groupBy" else None
    session, engine = _session(source, timeout_ms=300)
    try:
        with pytest.raises(EngineError) as caught:
            _members(session, engine, LEAVES[0])
    finally:
        session.close()
    assert caught.value.code == "backend_timeout" and "300 ms" in caught.value.message
    assert sum(q["queryType"] == "groupBy" for q in broker.queries) == 1  # a read timeout is not retried


def test_cancel_deletes_the_running_query_and_stops_the_session(source, broker):
    released = threading.Event()

    def hang(query):
        if query["queryType"] != "groupBy":
            return None
        released.wait(10)
        return 500, {"error": "Query cancelled", "errorMessage": "cancelled",
                     "errorClass": "org.apache.druid.query.QueryInterruptedException", "host": None}

    broker.fail = hang
    broker.on_delete = lambda query_id: released.set()
    session, engine = _session(source)
    errors = []

    def run():
        try:
            _members(session, engine, LEAVES[0])
        except EngineError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 10
    while not any(q["queryType"] == "groupBy" for q in broker.queries) and time.monotonic() < deadline:
        time.sleep(0.01)
    session.cancel()
    worker.join(10)
    session.close()
    running = [q["context"]["queryId"] for q in broker.queries if q["queryType"] == "groupBy"]
    assert errors and errors[0].code == "cancelled"
    assert list(broker.cancels) == running[:1]
    with pytest.raises(EngineError):
        _members(session, engine, LEAVES[0])  # a cancelled session sends nothing more
    assert [q["context"]["queryId"] for q in broker.queries if q["queryType"] == "groupBy"] == running
