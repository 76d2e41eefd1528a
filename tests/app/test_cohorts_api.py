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
    too_long = client.get(f"/api/v1/cohorts/{cohort_id}/members/{'k' * 513}", headers=headers)
    assert too_long.status_code == 400 and "user_key" in too_long.get_json()["errors"], too_long.get_json()


def test_update_list_and_delete(client, worker, loaded, redis_client, service_settings):
    _, project_id, headers = loaded
    created = client.post("/api/v1/cohorts", json={"name": "level-at-least-3", "definition": {
        "type": "profile", "property": "level", "cmp": "gte", "values": [3]}}, headers=headers).get_json()
    cohort_id = created["cohort"]["id"]
    job, _ = poll_job(client, headers, created["job"]["id"])
    assert job["result"]["count"] == 2  # b, c

    updated = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"definition": {
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
    assert f"poll job {created['job']['id']}" in response.get_json()["error"]
    cancelled = client.post(f"/api/v1/jobs/{created['job']['id']}/cancel", headers=headers).get_json()
    assert cancelled["status"] == "failed" and cancelled["error_code"] == "cancelled"
    # A cancelled first job will never publish: the answer says so and how to compute it again.
    response = client.get(f"/api/v1/cohorts/{created['cohort']['id']}/members", headers=headers)
    assert response.status_code == 409 and "failed (cancelled" in response.get_json()["error"]
    assert f"/api/v1/cohorts/{created['cohort']['id']}/refresh" in response.get_json()["error"]


LEVEL_3 = {"type": "profile", "property": "level", "cmp": "gte", "values": [3]}
LEVEL_5 = {"type": "profile", "property": "level", "cmp": "gte", "values": [5]}
SCHEDULED = {"name": "scheduled", "display_name": "Scheduled", "definition": LEVEL_3, "dynamic": True,
             "cron": "0 3 * * *", "owner": "ana"}


def stored(client, headers, cohort_id) -> dict:
    view = client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).get_json()
    return {field: view[field] for field in ("name", "display_name", "definition", "dynamic", "cron", "owner",
                                             "scheduler_running")}


def test_put_replaces_every_field_and_refuses_a_partial_body(client, api_project):
    _, _, headers = api_project
    cohort_id = client.post("/api/v1/cohorts", json=SCHEDULED, headers=headers).get_json()["cohort"]["id"]
    before = stored(client, headers, cohort_id)
    partial = client.put(f"/api/v1/cohorts/{cohort_id}", json={"definition": LEVEL_5}, headers=headers)
    assert partial.status_code == 400
    assert set(partial.get_json()["errors"]) == {"name", "display_name", "dynamic", "cron", "owner"}
    assert stored(client, headers, cohort_id) == before, "a refused PUT changes nothing"

    whole = {"name": "renamed", "display_name": None, "definition": LEVEL_5, "dynamic": False, "cron": None,
             "owner": None}
    replaced = client.put(f"/api/v1/cohorts/{cohort_id}", json=whole, headers=headers)
    assert replaced.status_code == 202 and replaced.get_json()["job"]["kind"] == "recalculate"
    assert stored(client, headers, cohort_id) == {**whole, "scheduler_running": False}
    same = client.put(f"/api/v1/cohorts/{cohort_id}", json=whole, headers=headers)
    assert same.status_code == 200 and same.get_json()["job"] is None, "nothing changed: no job"


def test_patch_changes_only_the_fields_it_names(client, api_project):
    _, _, headers = api_project
    created = client.post("/api/v1/cohorts", json=SCHEDULED, headers=headers).get_json()
    cohort_id = created["cohort"]["id"]
    before = stored(client, headers, cohort_id)

    renamed = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"display_name": "Renamed", "name": "new-name"},
                           headers=headers)
    assert renamed.status_code == 200 and renamed.get_json()["job"] is None
    assert stored(client, headers, cohort_id) == {**before, "display_name": "Renamed", "name": "new-name"}

    redefined = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"definition": LEVEL_5}, headers=headers)
    assert redefined.status_code == 202 and redefined.get_json()["job"]["kind"] == "recalculate"
    assert stored(client, headers, cohort_id) == {**before, "display_name": "Renamed", "name": "new-name",
                                                  "definition": LEVEL_5}, "scheduling and names survive"

    stop_without_cron = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"dynamic": False}, headers=headers)
    assert stop_without_cron.status_code == 400 and "cron" in stop_without_cron.get_json()["errors"]
    stopped = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"dynamic": False, "cron": None}, headers=headers)
    assert stopped.status_code == 200
    assert stored(client, headers, cohort_id)["scheduler_running"] is False

    client.post("/api/v1/cohorts", json={"name": "taken", "definition": LEVEL_3}, headers=headers)
    taken = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"name": "taken"}, headers=headers)
    assert taken.status_code == 409 and "name" in taken.get_json()["errors"]
    assert client.patch(f"/api/v1/cohorts/{cohort_id}", json={}, headers=headers).status_code == 400
    unknown = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"colour": "red"}, headers=headers)
    assert unknown.status_code == 400 and "colour" in unknown.get_json()["errors"]
    assert stored(client, headers, cohort_id)["name"] == "new-name"


def test_openapi_documents_put_and_patch(client):
    spec = client.get("/openapi.json").get_json()
    operations = spec["paths"]["/api/v1/cohorts/{cohort_id}"]
    assert {"put", "patch"} <= set(operations)
    assert set(spec["components"]["schemas"]["CohortUpdate"]["required"]) == {
        "name", "display_name", "definition", "dynamic", "cron", "owner"}
    assert "required" not in spec["components"]["schemas"]["CohortPatch"]
