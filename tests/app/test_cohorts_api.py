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
