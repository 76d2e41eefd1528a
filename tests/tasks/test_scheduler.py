"""Dynamic (cron) cohorts, the version guard and time limits, against real worker and beat processes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from psycopg2.extras import Json

from app import create_app
from cohort_engine import bitmaps, db
from core.data import cohorts
from core.queue import enqueue, submit_cohort_job
from tests.services import start_beat, start_worker, stop, wait_for_worker, wait_until
from tests.tasks.conftest import ended, slow_definition, wait_for_job

RECENT_PAYERS = {"type": "event", "event": "pay", "window": {"last": 1}, "cmp": "gte", "values": [1]}


def cron_jobs(database_url, cohort_id):
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, base_time, status, error_code FROM jobs WHERE cohort_id = %s AND kind = 'cron'"
                    " ORDER BY base_time", (cohort_id,))
        return cur.fetchall()


def stop_scheduler(database_url, cohort_id):
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET scheduler_running = false WHERE id = %s", (cohort_id,))


def test_cron_cohort_gets_a_version_per_fire_time_even_with_two_beats(client, worker, beat, sample_project,
                                                                     database_url, service_env, tmp_path):
    _, _, headers, _ = sample_project
    second_beat = start_beat(service_env, tmp_path / "schedule-2", tmp_path / "beat-2.log")
    try:
        created = client.post("/api/v1/cohorts", headers=headers, json={
            "name": "every-2s", "definition": RECENT_PAYERS, "dynamic": True, "cron": "* * * * * */2"}).get_json()
        cohort_id = created["cohort"]["id"]
        wait_until(lambda: sum(r[2] == "succeed" for r in cron_jobs(database_url, cohort_id)) >= 3, timeout=40,
                   interval=0.2, what="three cron versions")
    finally:
        stop_scheduler(database_url, cohort_id)
        stop(second_beat)
    rows = cron_jobs(database_url, cohort_id)
    fire_times = [r[1] for r in rows]
    assert len(fire_times) == len(set(fire_times)), "two beats never fire one time twice"
    assert all(t.second % 2 == 0 and t.microsecond == 0 for t in fire_times), "base time is the fire time"
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT base_time FROM cohort_versions WHERE cohort_id = %s AND status = 'succeed'", (cohort_id,))
        version_times = {r[0] for r in cur.fetchall()}
    assert {r[1] for r in rows if r[2] == "succeed"} <= version_times


def test_failing_cron_cohort_backs_off(client, worker, beat, sample_project, database_url):
    _, _, headers, _ = sample_project
    created = client.post("/api/v1/cohorts", headers=headers, json={
        "name": "always-fails", "dynamic": True, "cron": "* * * * * *",
        "definition": {"type": "profile", "property": "no_such_property", "cmp": "is_set"}}).get_json()
    cohort_id = created["cohort"]["id"]
    started = datetime.now(timezone.utc)
    try:
        wait_until(lambda: sum(r[2] == "failed" for r in cron_jobs(database_url, cohort_id)) >= 3, timeout=40,
                   interval=0.2, what="three failed cron runs")
    finally:
        stop_scheduler(database_url, cohort_id)
    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    rows = cron_jobs(database_url, cohort_id)
    assert all(r[3] == "unknown_property" for r in rows if r[2] == "failed")
    # Every second fires, but the backoff (2 s, 4 s, 8 s, ...) lets through far fewer runs than fire times.
    assert len(rows) < elapsed / 2
    with db.connection(database_url) as conn:
        cohort = cohorts.get_any(conn, cohort_id)
    assert cohort["error_count"] >= 3 and cohort["retry_after"] is not None


def test_a_cohort_whose_cron_never_fires_is_marked_and_the_others_still_fire(client, worker, beat, sample_project,
                                                                           database_url):
    _, project_id, headers, _ = sample_project
    # Written directly: the API refuses this cron now, but rows stored before that check still hold it.
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO cohorts (project_id, name, definition, dynamic, cron, scheduler_running)"
                    " VALUES (%s, 'never-fires', %s, true, '0 0 30 2 *', true) RETURNING id",
                    (project_id, Json(RECENT_PAYERS)))
        bad_id = cur.fetchone()[0]
    created = client.post("/api/v1/cohorts", headers=headers, json={
        "name": "fires-anyway", "definition": RECENT_PAYERS, "dynamic": True, "cron": "* * * * * *"}).get_json()
    good_id = created["cohort"]["id"]
    try:
        wait_until(lambda: any(r[2] == "succeed" for r in cron_jobs(database_url, good_id)), timeout=30,
                   interval=0.2, what="a cron version of the good cohort")
    finally:
        stop_scheduler(database_url, good_id)
        stop_scheduler(database_url, bad_id)
    bad = client.get(f"/api/v1/cohorts/{bad_id}", headers=headers).get_json()
    assert "CroniterBadDateError" in bad["schedule_error"]["message"] and bad["schedule_error"]["at"]
    assert cron_jobs(database_url, bad_id) == []
    assert client.get(f"/api/v1/cohorts/{good_id}", headers=headers).get_json()["schedule_error"] is None


def test_an_older_run_never_overwrites_a_newer_version(client, worker, sample_project, database_url, redis_url,
                                                       service_settings, celery_app):
    import redis as redis_lib

    _, project_id, headers, _ = sample_project
    created = client.post("/api/v1/cohorts", headers=headers,
                          json={"name": "guarded", "definition": RECENT_PAYERS}).get_json()
    cohort_id = created["cohort"]["id"]
    wait_for_job(client, headers, created["job"]["id"], ended)
    now = datetime.now(timezone.utc)
    connect = lambda: db.connection(database_url)  # noqa: E731
    with connect() as conn:
        cohort = cohorts.get_any(conn, cohort_id)
        newer, _ = submit_cohort_job(conn, cohort, "refresh", base_time=now + timedelta(hours=1), partition_key="n")
        older, _ = submit_cohort_job(conn, cohort, "refresh", base_time=now - timedelta(days=3), partition_key="o")
    enqueue(celery_app, connect, [newer])
    newer_done = wait_for_job(client, headers, newer["id"], ended)
    enqueue(celery_app, connect, [older])
    older_done = wait_for_job(client, headers, older["id"], ended)
    assert newer_done["status"] == older_done["status"] == "succeed"
    assert newer_done["result"]["published"] and not older_done["result"]["published"]
    assert newer_done["result"]["count"] != older_done["result"]["count"], "the two base times differ in members"
    view = client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).get_json()
    assert view["latest_version"]["id"] == newer_done["result"]["version_id"]
    stored = bitmaps.load(redis_lib.Redis.from_url(redis_url),
                          bitmaps.cohort_key(service_settings.engine.key_prefix, project_id, cohort_id))
    assert len(stored) == newer_done["result"]["count"]


@pytest.fixture
def short_limit_worker(service_env, celery_app, tmp_path):
    """A worker with a 1-second soft time limit, on a queue of its own."""
    env = {**service_env, "COHORTS_QUEUE": "short", "COHORTS_SOFT_TIME_LIMIT": "1", "COHORTS_HARD_TIME_LIMIT": "20"}
    process = start_worker(env, "short", tmp_path / "short.log", concurrency=1)
    try:
        wait_for_worker(celery_app, "short")
        yield
    finally:
        stop(process)


def test_a_job_past_its_soft_time_limit_ends_failed_timeout(short_limit_worker, sample_project, service_settings,
                                                          celery_app):
    from workers.celery_app import create_celery

    _, _, headers, _ = sample_project
    settings = replace(service_settings, queue="short", soft_time_limit=1)
    client = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": create_celery(settings)}).test_client()
    created = client.post("/api/v1/cohorts", headers=headers,
                          json={"name": "too-slow", "definition": slow_definition(60)}).get_json()
    job = wait_for_job(client, headers, created["job"]["id"], ended, timeout=60)
    assert job["status"] == "failed" and job["error_code"] == "timeout"
    assert "COHORTS_SOFT_TIME_LIMIT" in job["error_message"]


def test_healthz_sees_live_workers(client, worker, maintenance_worker):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert any(name.startswith("main@") for name in health.get_json()["checks"]["workers"]["live"])


def test_healthz_fails_without_a_maintenance_worker(client, worker, service_settings):
    # A client whose maintenance queue no worker consumes: what a dead maintenance process looks like.
    from dataclasses import replace

    from app import create_app

    settings = replace(service_settings, maintenance_queue="cohorts.maintenance.nobody")
    lonely = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": client.application.extensions["celery"]})
    health = lonely.test_client().get("/healthz")
    workers = health.get_json()["checks"]["workers"]
    assert health.status_code == 503 and workers["ok"] is False
    assert "cohorts.maintenance.nobody" in workers["error"]
    assert any(name.startswith("main@") for name in workers["live"])


def test_job_listing_filters(client, worker, sample_project):
    _, _, headers, _ = sample_project
    failed = client.get("/api/v1/jobs?status=failed", headers=headers).get_json()["jobs"]
    assert all(j["status"] == "failed" for j in failed)
    assert client.get("/api/v1/jobs?status=bogus", headers=headers).status_code == 400
