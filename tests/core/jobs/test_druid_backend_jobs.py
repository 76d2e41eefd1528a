"""Cohort jobs of a project on the Druid backend, on a real worker talking HTTP to a broker.

The broker is the service's own embedded broker served on a loopback port in this process (no Druid
cluster can be had here); the worker reaches it as it would a cluster's broker.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine import db
from cohort_engine.project import ProjectEngine
from core.data import projects, sugo_targets
from tests.cohort_engine.backends.druid_broker import HttpBroker
from tests.cohort_engine.reference import create_project
from tests.services import wait_until

DAY = datetime(2024, 3, 1, 12, tzinfo=UTC)
PAYS = {"a": 3, "b": 1, "e": 2}
PAID_TWICE = {"type": "event", "event": "pay", "window": {"start": "2024-03-01", "end": "2024-03-01"},
              "cmp": "gte", "values": [2]}


@pytest.fixture(scope="module")
def broker(database_url, service_settings, tmp_path_factory):
    """A source project with a few pay events and profiles, served as Druid datasources."""
    root = tmp_path_factory.mktemp("druid-jobs")
    engine = ProjectEngine(service_settings.engine, create_project(database_url, "UTC"))
    pq.write_table(pa.table({"distinct_id": ["a", "b", "c"], "level": pa.array([1, 3, 5], pa.int64())}),
                   root / "u.parquet")
    keys = [k for k, n in PAYS.items() for _ in range(n)]
    pq.write_table(pa.table({"distinct_id": keys, "event": ["pay"] * len(keys),
                             "time": pa.array([DAY] * len(keys), pa.timestamp("us", tz="UTC"))}), root / "e.parquet")
    engine.ingest_users(root / "u.parquet")
    engine.ingest_events(root / "e.parquet")
    server = HttpBroker(service_settings.engine, engine.name)
    yield server
    server.close()


@pytest.fixture
def druid_project(api_project, broker, database_url):
    name, project_id, headers = api_project
    broker.queries.clear()
    broker.cancels.clear()
    with db.connection(database_url) as conn:
        projects.set_backend(conn, project_id, broker.backend(username="svc", password="pw-not-shown"))
    yield name, project_id, headers
    broker.fail = broker.on_delete = None


def _allow(database_url, project_id, broker):
    with db.connection(database_url) as conn:
        sugo_targets.add(conn, project_id, "broker", "127.0.0.1", broker.port)


def _ended(client, headers, job_id, timeout=30.0):
    def ended():
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
        return job if job["status"] in ("succeed", "failed") else None

    return wait_until(ended, timeout=timeout, interval=0.05, what=f"job {job_id} to end")


def test_a_cohort_computes_through_the_broker_and_the_project_shows_its_backend(client, worker, druid_project,
                                                                                broker, database_url):
    name, project_id, headers = druid_project
    _allow(database_url, project_id, broker)
    info = client.get("/api/v1/project", headers=headers).get_json()
    assert info["name"] == name and info["backend"]["kind"] == "druid"
    assert info["backend"]["password_set"] is True and "pw-not-shown" not in json.dumps(info)
    created = client.post("/api/v1/cohorts", json={"name": "paid_twice", "definition": PAID_TWICE},
                          headers=headers).get_json()
    job = _ended(client, headers, created["job"]["id"])
    assert job["status"] == "succeed" and job["result"]["count"] == 2, job  # a (3 pays) and e (2)
    members = client.get(f"/api/v1/cohorts/{created['cohort']['id']}/members", headers=headers).get_data(as_text=True)
    assert sorted(members.split()) == ["a", "e"]
    assert broker.queries and all(q["context"]["queryId"] for q in broker.queries)


def test_a_broker_not_allowed_for_the_project_is_never_contacted(client, worker, druid_project, broker):
    _, _, headers = druid_project
    created = client.post("/api/v1/cohorts", json={"name": "paid_twice", "definition": PAID_TWICE},
                          headers=headers).get_json()
    job = _ended(client, headers, created["job"]["id"])
    assert job["status"] == "failed" and job["error_code"] == "not_allowed"
    assert f"127.0.0.1:{broker.port}" in job["error_message"] and "sugo-allow" in job["error_message"]
    assert broker.queries == []


def test_cancelling_the_job_cancels_its_running_broker_query(client, worker, druid_project, broker, database_url):
    _, project_id, headers = druid_project
    _allow(database_url, project_id, broker)
    released = threading.Event()

    def hang(query):
        if query["queryType"] != "groupBy":
            return None
        released.wait(20)
        return 500, {"error": "Query cancelled", "errorMessage": "cancelled by request",
                     "errorClass": "org.apache.druid.query.QueryInterruptedException", "host": None}

    broker.fail = hang
    broker.on_delete = lambda query_id: released.set()
    created = client.post("/api/v1/cohorts", json={"name": "paid_twice", "definition": PAID_TWICE},
                          headers=headers).get_json()
    wait_until(lambda: any(q["queryType"] == "groupBy" for q in broker.queries), what="the query to reach the broker")
    assert client.post(f"/api/v1/jobs/{created['job']['id']}/cancel", headers=headers).status_code == 202
    job = _ended(client, headers, created["job"]["id"])
    assert job["status"] == "failed" and job["error_code"] == "cancelled", job
    running = [q["context"]["queryId"] for q in broker.queries if q["queryType"] == "groupBy"]
    assert broker.cancels == running[:1]


def _upload(client, headers, body: bytes, **query):
    return client.post("/api/v1/cohorts/import", query_string={"name": "imported", **query}, data=body,
                       headers={**headers, "Content-Type": "text/csv"})


def test_tags_and_id_imports_compute_through_the_broker(client, worker, druid_project, broker, database_url):
    _, project_id, headers = druid_project
    _allow(database_url, project_id, broker)
    created = client.post("/api/v1/tags", headers=headers, json={"name": "pays", "definition": {
        "kind": "metric", "event": "pay", "window": {"start": "2024-03-01", "end": "2024-03-01"}}})
    assert created.status_code == 202, created.get_json()
    assert _ended(client, headers, created.get_json()["job"]["id"])["status"] == "succeed"
    values = client.get(f"/api/v1/tags/{created.get_json()['tag']['id']}/values", headers=headers)
    rows = dict(line.split(",", 1) for line in values.get_data(as_text=True).splitlines()[1:])
    # Everyone of the universe (profiles a, b, c and payer e) has a count; c paid nothing.
    assert {k: float(v) for k, v in rows.items()} == {**{k: float(n) for k, n in PAYS.items()}, "c": 0.0}
    # Matched on the profile property level: "3" and "5.0" are b and c; "x" is no number.
    answer = _upload(client, headers, b"3\n5.0\nx\n", match="level")
    assert answer.status_code == 202, answer.get_json()
    assert (answer.get_json()["counts"]["matched_ids"], answer.get_json()["counts"]["unmatched_ids"]) == (2, 1)
    job = _ended(client, headers, answer.get_json()["job"]["id"])
    assert job["status"] == "succeed" and job["result"]["count"] == 2, job
    members = client.get(f"/api/v1/cohorts/{answer.get_json()['cohort']['id']}/members", headers=headers)
    assert sorted(members.get_data(as_text=True).split()) == ["b", "c"]


def test_a_denied_broker_refuses_uploads_and_tag_saves_before_contacting_it(client, druid_project, broker, pg):
    _, project_id, headers = druid_project
    answer = _upload(client, headers, b"3\n", match="level")
    assert answer.status_code == 409 and f"127.0.0.1:{broker.port}" in answer.get_json()["error"]
    saved = client.post("/api/v1/tags", headers=headers, json={"name": "last_level", "definition": {
        "kind": "first_last", "which": "last", "event": "*", "window": {"last": 7}, "property": "level"}})
    assert saved.status_code == 409 and "sugo-allow" in saved.get_json()["error"]
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM uploads WHERE project_id = %s", (project_id,))
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM cohorts WHERE project_id = %s", (project_id,))
        assert cur.fetchone()[0] == 0
    assert broker.queries == []
