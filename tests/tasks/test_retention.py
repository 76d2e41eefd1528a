"""Version retention: COHORTS_KEEP_VERSIONS bitmaps per cohort in Redis, rows kept, against a real worker."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app import create_app
from cohort_engine import db
from tests.services import start_worker, stop, wait_for_worker
from tests.tasks.conftest import ended, wait_for_job

KEEP = 2
LEVEL_AT_LEAST_3 = {"type": "profile", "property": "user_level", "cmp": "gte", "values": [3]}


@pytest.fixture(scope="module")
def keeping_client(service_env, service_settings, celery_app, tmp_path_factory):
    """A client whose jobs run on a worker keeping KEEP versions (a queue of its own)."""
    from workers.celery_app import create_celery

    env = {**service_env, "COHORTS_QUEUE": "retention", "COHORTS_KEEP_VERSIONS": str(KEEP)}
    process = start_worker(env, "retention", tmp_path_factory.mktemp("retention") / "worker.log", concurrency=1)
    try:
        wait_for_worker(celery_app, "retention")
        settings = replace(service_settings, queue="retention")
        yield create_app({"TESTING": True, "SETTINGS": settings, "CELERY": create_celery(settings)}).test_client()
    finally:
        stop(process)


def version_rows(database_url, cohort_id):
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, bitmap_key, expired_at, count FROM cohort_versions WHERE cohort_id = %s"
                    " AND status = 'succeed' ORDER BY id", (cohort_id,))
        return cur.fetchall()


def test_a_cohort_keeps_its_newest_version_bitmaps_and_every_row(keeping_client, sample_project, database_url,
                                                                 redis_client, service_settings):
    client = keeping_client
    _, project_id, headers, _ = sample_project
    created = client.post("/api/v1/cohorts", headers=headers,
                          json={"name": "refreshed-often", "definition": LEVEL_AT_LEAST_3}).get_json()
    cohort_id = created["cohort"]["id"]
    job = wait_for_job(client, headers, created["job"]["id"], ended)
    for _ in range(4):
        refreshed = client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers).get_json()
        job = wait_for_job(client, headers, refreshed["job"]["id"], ended)
        assert job["status"] == "succeed", job
    rows = version_rows(database_url, cohort_id)
    assert len(rows) == 5, "every version keeps its row (history, count)"
    kept, expired = rows[-KEEP:], rows[:-KEEP]
    assert all(key is not None and at is None for _, key, at, _ in kept)
    assert all(key is None and at is not None and count is not None for _, key, at, count in expired)
    prefix = f"{service_settings.engine.key_prefix}:p{project_id}:cohort:{cohort_id}"
    version_keys = {k.decode() for k in redis_client.keys(prefix + ":v*")}
    assert version_keys == {key for _, key, _, _ in kept}
    view = client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).get_json()
    assert view["latest_version"]["id"] == rows[-1][0]
    members = client.get(f"/api/v1/cohorts/{cohort_id}/members?format=json", headers=headers).get_json()
    assert members["total"] == job["result"]["count"], "readers use the published bitmap, never expired"


def test_sensors_partitions_beyond_the_newest_keep_their_counts(keeping_client, sample_project, database_url,
                                                                redis_client):
    client = keeping_client
    _, _, headers, _ = sample_project
    token = headers["Authorization"].split()[1]
    rule = {"id": 0, "name": "level_above_2", "cname": "level above 2", "type": 0, "content": {
        "type": "rules_relation", "relation": "and", "rules": [
            {"type": "profile_rule", "field": "user.user_level", "function": "greater", "params": [2]}]}}
    created = client.post(f"/segmenter/rule?token={token}", json=rule)
    assert created.status_code == 200, created.get_json()
    cohort_id = created.get_json()["id"]
    base_times = [f"2024-03-0{day} 00:00:00" for day in range(1, 5)]
    assert client.post(f"/segmenter/execute?token={token}",
                       json=[{"id": cohort_id, "base_time_list": base_times}]).status_code == 200

    def all_done():
        status = client.post(f"/segmenter/status?token={token}",
                             json=[{"id": cohort_id, "base_time_list": base_times}]).get_json()
        results = status[0]["result"]
        return results if all(r["status"] in ("succeed", "failed") for r in results) else None

    from tests.services import wait_until

    results = wait_until(all_done, timeout=60, interval=0.2, what="four partitions computed")
    assert all(r["status"] == "succeed" and r["count"] > 0 for r in results), "expired partitions keep their count"
    rows = version_rows(database_url, cohort_id)
    assert len(rows) == 5 and sum(key is not None for _, key, _, _ in rows) == KEEP
