"""The core job runner without Celery: one heartbeat that carries cancellation, handlers by kind, routing."""

from __future__ import annotations

import threading
from dataclasses import replace

from cohort_engine import db
from core.data import jobs
from core.jobs.cohort import compute_cohort
from core.jobs.runner import Heartbeat, handler_for
from core.queue import COMPUTE_TASK, RUN_TASK, job_task_names, task_for
from dialects.sugo.jobs import run_sugo_job


def claimed_job(database_url, project_id, token):
    with db.connection(database_url) as conn:
        job, _ = jobs.insert(conn, project_id, "usergroup", params={"endpoint": "single", "request": {}})
        claimed, why = jobs.claim(conn, job["id"], token, 60)
    assert why == "claimed"
    return claimed


def test_the_heartbeat_touches_the_row_and_calls_cancel_callbacks_once(database_url, project):
    job = claimed_job(database_url, project[1], "tok-a")
    heartbeat = Heartbeat(database_url, job["id"], "tok-a", 0.05)
    seen = threading.Event()
    calls = []
    heartbeat.on_cancel(lambda: (calls.append(1), seen.set()))
    heartbeat.start()
    try:
        with db.connection(database_url) as conn:
            before = jobs.get(conn, job["id"])["heartbeat_at"]
            jobs.request_cancel(conn, job["id"])
        assert seen.wait(5), "the heartbeat did not pass the cancel on"
        late = []
        heartbeat.on_cancel(lambda: late.append(1))  # registered after the cancel: called at once
        assert late == [1]
        threading.Event().wait(0.2)
    finally:
        heartbeat.stop()
    assert calls == [1]
    with db.connection(database_url) as conn:
        row = jobs.get(conn, job["id"])
        assert row["heartbeat_at"] > before and row["status"] == "computing"
        jobs.fail(conn, job["id"], "cancelled", "test over")


def test_a_cancel_still_reaches_the_callbacks_after_the_claim_was_lost(database_url, project):
    job = claimed_job(database_url, project[1], "tok-b")
    with db.connection(database_url) as conn:
        jobs.request_cancel(conn, job["id"])
        jobs.fail(conn, job["id"], "superseded", "ended elsewhere")
    heartbeat = Heartbeat(database_url, job["id"], "tok-b", 0.05)
    seen = threading.Event()
    heartbeat.on_cancel(seen.set)
    heartbeat.start()
    try:
        assert seen.wait(5)
    finally:
        heartbeat.stop()


def test_one_heartbeat_thread_beats_every_running_job_until_each_stops(database_url, project):
    first, second = claimed_job(database_url, project[1], "tok-c"), claimed_job(database_url, project[1], "tok-d")
    beats = [Heartbeat(database_url, first["id"], "tok-c", 0.05), Heartbeat(database_url, second["id"], "tok-d", 0.05)]
    threads_before = threading.active_count()
    for heartbeat in beats:
        heartbeat.start()

    def heartbeat_at(job):
        with db.connection(database_url) as conn:
            return jobs.get(conn, job["id"])["heartbeat_at"]

    try:
        started = [heartbeat_at(first), heartbeat_at(second)]
        threading.Event().wait(0.4)
        assert heartbeat_at(first) > started[0] and heartbeat_at(second) > started[1]
        assert threading.active_count() <= threads_before + 1  # at most the process's one heartbeat thread
        beats[0].stop()
        stopped_at = heartbeat_at(first)
        moving = heartbeat_at(second)
        threading.Event().wait(0.4)
        assert heartbeat_at(first) == stopped_at, "a stopped heartbeat still touched its job"
        assert heartbeat_at(second) > moving, "stopping one heartbeat stopped the other"
    finally:
        for heartbeat in beats:
            heartbeat.stop()
    with db.connection(database_url) as conn:
        for job in (first, second):
            jobs.fail(conn, job["id"], "cancelled", "test over")


def test_handlers_and_task_names_come_from_the_dialect_registry(service_settings):
    assert handler_for(service_settings, "usergroup") is run_sugo_job
    assert handler_for(service_settings, "batchUpdate") is run_sugo_job
    for kind in ("create", "refresh", "recalculate", "cron", "execute"):
        assert handler_for(service_settings, kind) is compute_cohort
        assert task_for(kind, service_settings) == COMPUTE_TASK
    assert task_for("usergroup", service_settings) == "sugo.usergroup"
    assert task_for("batchUpdate", service_settings) == "sugo.batch_update"
    assert job_task_names(service_settings) == {COMPUTE_TASK, RUN_TASK, "sugo.usergroup", "sugo.batch_update"}
    # Without the Sugo dialect its kinds have no handler of their own, and its task names are not job tasks.
    sensors_only = replace(service_settings, dialects="sensors")
    assert handler_for(sensors_only, "usergroup") is compute_cohort
    assert job_task_names(sensors_only) == {COMPUTE_TASK, RUN_TASK}

