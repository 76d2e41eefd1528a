"""The native API end to end: HTTP -> Postgres job row -> real Celery worker -> Redis bitmap."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine.project import ProjectEngine
from tests.services import wait_until

DAY = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
PROFILES = {"a": 1, "b": 3, "c": 5, "d": None}
PAYS = {"a": 3, "b": 1, "e": 2}  # e has events but no profile


@pytest.fixture
def loaded(api_project, service_settings, tmp_path):
    """A project with four profiles and a few pay events (tiny, so expected sets are written by hand)."""
    name, project_id, headers = api_project
    engine = ProjectEngine(service_settings.engine, name)
    pq.write_table(pa.table({"distinct_id": list(PROFILES), "level": pa.array(list(PROFILES.values()), pa.int64())}),
                   tmp_path / "u.parquet")
    keys = [k for k, n in PAYS.items() for _ in range(n)]
    pq.write_table(pa.table({"distinct_id": keys, "event": ["pay"] * len(keys),
                             "time": pa.array([DAY] * len(keys), pa.timestamp("us", tz="UTC"))}), tmp_path / "e.parquet")
    engine.ingest_users(tmp_path / "u.parquet")
    engine.ingest_events(tmp_path / "e.parquet")
    return name, project_id, headers


def poll_job(client, headers, job_id, timeout=30.0):
    """Poll a job until it ends; return (final job, the progress values seen)."""
    seen = []

    def ended():
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
        seen.append(job["progress"])
        return job if job["status"] in ("succeed", "failed") else None

    return wait_until(ended, timeout=timeout, interval=0.02, what=f"job {job_id} to end"), seen


PAID_TWICE = {"type": "event", "event": "pay", "window": {"start": "2024-03-01", "end": "2024-03-01"},
              "cmp": "gte", "values": [2]}


def test_create_cohort_computes_first_version(client, worker, loaded):
    _, _, headers = loaded
    body = {"name": "paid_twice_or_level5", "definition": {"op": "or", "children": [
        PAID_TWICE, {"type": "profile", "property": "level", "cmp": "eq", "values": [5]}]}}
    response = client.post("/api/v1/cohorts", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    created = response.get_json()
    assert created["job"]["status"] == "new" and created["job"]["progress"] == 0
    job, progress = poll_job(client, headers, created["job"]["id"])
    assert job["status"] == "succeed", job
    assert job["progress"] == 100 and job["result"]["count"] == 3
    assert progress == sorted(progress), "progress never decreases"
    assert all(p < 100 for p in progress[:-1] if p is not None)
    cohort_id = created["cohort"]["id"]
    cohort = client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).get_json()
    assert cohort["latest_version"]["count"] == 3 and cohort["latest_version"]["status"] == "succeed"
    csv = client.get(f"/api/v1/cohorts/{cohort_id}/members", headers=headers)
    assert csv.mimetype == "text/csv"
    assert sorted(csv.get_data(as_text=True).split()) == ["a", "c", "e"]
    page = client.get(f"/api/v1/cohorts/{cohort_id}/members?format=json&per_page=2", headers=headers).get_json()
    assert page["total"] == 3 and len(page["members"]) == 2
    assert client.get(f"/api/v1/cohorts/{cohort_id}/members/e", headers=headers).get_json() == {"member": True}
    assert client.get(f"/api/v1/cohorts/{cohort_id}/members/b", headers=headers).get_json() == {"member": False}
    assert client.get(f"/api/v1/cohorts/{cohort_id}/members/nobody", headers=headers).get_json() == {"member": False}


def test_update_list_and_delete(client, worker, loaded, redis_client, service_settings):
    _, project_id, headers = loaded
    created = client.post("/api/v1/cohorts", json={"name": "level-at-least-3", "definition": {
        "type": "profile", "property": "level", "cmp": "gte", "values": [3]}}, headers=headers).get_json()
    cohort_id = created["cohort"]["id"]
    job, _ = poll_job(client, headers, created["job"]["id"])
    assert job["result"]["count"] == 2  # b, c

    updated = client.put(f"/api/v1/cohorts/{cohort_id}", json={"definition": {
        "type": "profile", "property": "level", "cmp": "ne", "values": [3]}}, headers=headers)
    assert updated.status_code == 202
    job, _ = poll_job(client, headers, updated.get_json()["job"]["id"])
    assert job["kind"] == "recalculate" and job["result"]["count"] == 4  # a, c, d (null), e (no profile)
    view = client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).get_json()
    assert view["definition"]["cmp"] == "ne" and view["latest_version"]["count"] == 4

    listing = client.get("/api/v1/cohorts?per_page=1&page=1", headers=headers).get_json()
    assert listing["total"] == 1 and listing["cohorts"][0]["id"] == cohort_id
    assert client.get("/api/v1/cohorts?status=failed", headers=headers).get_json()["total"] == 0
    jobs_of = client.get(f"/api/v1/jobs?cohort_id={cohort_id}", headers=headers).get_json()["jobs"]
    assert [j["kind"] for j in jobs_of] == ["recalculate", "create"]

    dependent = client.post("/api/v1/cohorts", json={"name": "dependent", "definition": {
        "type": "cohort", "cohort_id": cohort_id}}, headers=headers).get_json()
    poll_job(client, headers, dependent["job"]["id"])
    refused = client.delete(f"/api/v1/cohorts/{cohort_id}", headers=headers)
    assert refused.status_code == 409 and str(dependent["cohort"]["id"]) in refused.get_json()["error"]
    assert client.delete(f"/api/v1/cohorts/{dependent['cohort']['id']}", headers=headers).status_code == 200
    prefix = f"{service_settings.engine.key_prefix}:p{project_id}:cohort:{cohort_id}"
    assert redis_client.keys(prefix + "*")
    assert client.delete(f"/api/v1/cohorts/{cohort_id}", headers=headers).status_code == 200
    assert redis_client.keys(prefix + "*") == []
    assert client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).status_code == 404


def test_members_before_first_version_is_409(loaded, service_settings):
    from dataclasses import replace

    from app import create_app
    from workers.celery_app import create_celery

    _, _, headers = loaded
    # A queue no worker listens to: the job stays `new` and nothing is published.
    parked = replace(service_settings, queue="parked")
    client = create_app({"TESTING": True, "SETTINGS": parked, "CELERY": create_celery(parked)}).test_client()
    created = client.post("/api/v1/cohorts", json={"name": "not-yet", "definition": {
        "type": "ids", "keys": ["a"]}}, headers=headers).get_json()
    # No worker in this test: the job stays new and nothing is published yet.
    response = client.get(f"/api/v1/cohorts/{created['cohort']['id']}/members", headers=headers)
    assert response.status_code == 409 and "no computed version" in response.get_json()["error"]
    cancelled = client.post(f"/api/v1/jobs/{created['job']['id']}/cancel", headers=headers).get_json()
    assert cancelled["status"] == "failed" and cancelled["error_code"] == "cancelled"
