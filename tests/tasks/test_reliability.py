"""Reliability of the job system against real worker and beat processes (docs/architecture.md, "Job life cycle")."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from tests.tasks.conftest import ended, reference_members, slow_definition, wait_for_job


def submit(client, headers, name, definition):
    response = client.post("/api/v1/cohorts", json={"name": name, "definition": definition}, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()




def holder_pid(pg, job_id) -> int | None:
    """The pid of the worker process holding a computing job (from the job's claim token host:pid:nonce)."""
    with pg.cursor() as cur:
        cur.execute("SELECT status, worker FROM jobs WHERE id = %s", (job_id,))
        status, token = cur.fetchone()
    pg.commit()
    return int(token.split(":")[1]) if status == "computing" and token else None


def test_cancel_stops_a_computing_job_at_its_next_leaf(client, worker, sample_project):
    _, _, headers, _ = sample_project
    created = submit(client, headers, "to-cancel", slow_definition())
    job_id = created["job"]["id"]
    wait_for_job(client, headers, job_id, lambda j: j["status"] == "computing" and j["progress"] > 0,
                 what="the job to make progress")
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers).status_code == 202
    job = wait_for_job(client, headers, job_id, ended)
    assert job["status"] == "failed" and job["error_code"] == "cancelled"
    assert job["progress"] < 100
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers).status_code == 409


def test_sigkilled_worker_child_job_is_redelivered_and_succeeds(client, worker, sample_project, pg):
    _, _, headers, written = sample_project
    created = submit(client, headers, "killed-once", slow_definition())
    job_id = created["job"]["id"]
    wait_for_job(client, headers, job_id, lambda j: j["status"] == "computing" and j["progress"] > 0,
                 what="the job to make progress")
    os.kill(holder_pid(pg, job_id), signal.SIGKILL)
    job = wait_for_job(client, headers, job_id, ended, timeout=90)
    assert job["status"] == "succeed", job
    assert job["attempts"] == 2
    base_time = datetime.fromisoformat(job["base_time"])
    assert job["result"]["count"] == len(reference_members(written, base_time))


def test_job_that_kills_its_worker_every_time_ends_worker_lost(client, worker, sample_project, pg):
    _, _, headers, _ = sample_project
    created = submit(client, headers, "killed-always", slow_definition())
    job_id = created["job"]["id"]
    stop_killing = threading.Event()

    def kill_every_holder():
        # Plays the OOM killer: whichever worker process takes the job dies.
        killed = set()
        while not stop_killing.is_set():
            pid = holder_pid(pg, job_id)
            if pid and pid not in killed:
                killed.add(pid)
                with contextlib.suppress(ProcessLookupError):  # it may have died already
                    os.kill(pid, signal.SIGKILL)
            stop_killing.wait(0.05)

    killer = threading.Thread(target=kill_every_holder, daemon=True)
    killer.start()
    try:
        job = wait_for_job(client, headers, job_id, ended, timeout=120)
    finally:
        stop_killing.set()
        killer.join()
    assert job["status"] == "failed" and job["error_code"] == "worker_lost", job
    assert job["attempts"] == 3
    assert "memory" in job["error_message"]


def test_reaper_takes_a_job_whose_heartbeat_stopped(client, worker, beat, sample_project, pg):
    _, _, headers, written = sample_project
    created = submit(client, headers, "frozen", slow_definition())
    job_id = created["job"]["id"]
    wait_for_job(client, headers, job_id, lambda j: j["status"] == "computing" and j["progress"] > 0,
                 what="the job to make progress")
    frozen = holder_pid(pg, job_id)
    # SIGSTOP freezes the process as if its host vanished: no heartbeat, no progress, no exit.
    os.kill(frozen, signal.SIGSTOP)
    try:
        job = wait_for_job(client, headers, job_id, ended, timeout=90)
    finally:
        os.kill(frozen, signal.SIGKILL)
        os.kill(frozen, signal.SIGCONT)
    assert job["status"] == "succeed", job
    assert job["attempts"] >= 2
    assert job["result"]["count"] == len(reference_members(written, datetime.fromisoformat(job["base_time"])))


def test_concurrent_refreshes_compute_once(app, worker, sample_project, pg):
    _, _, headers, _ = sample_project
    client = app.test_client()
    created = submit(client, headers, "refreshed", slow_definition())
    wait_for_job(client, headers, created["job"]["id"], ended, timeout=90)
    cohort_id = created["cohort"]["id"]

    def refresh(_):
        response = app.test_client().post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers)
        assert response.status_code == 202
        return response.get_json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(refresh, range(8)))
    assert len({a["job"]["id"] for a in answers}) == 1
    assert sum(not a["coalesced"] for a in answers) == 1
    job = wait_for_job(client, headers, answers[0]["job"]["id"], ended, timeout=90)
    assert job["status"] == "succeed"
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE cohort_id = %s AND kind = 'refresh'", (cohort_id,))
        assert cur.fetchone()[0] == 1
    pg.commit()


def test_sweeper_enqueues_a_job_left_new(client, worker, beat, sample_project, database_url, service_settings):
    from dataclasses import replace

    from cohort_engine import db
    from core.data import cohorts
    from core.queue import enqueue, submit_cohort_job
    from workers.celery_app import create_celery

    _, project_id, headers, _ = sample_project
    # The broker goes down between the commit and the send: nothing listens on port 1.
    down = create_celery(replace(service_settings, broker_url="redis://127.0.0.1:1/0"))
    down.conf.broker_connection_timeout = 1
    with db.connection(database_url) as conn:
        cohort = cohorts.insert(conn, project_id, "never-enqueued",
                                {"type": "profile", "property": "user_level", "cmp": "gte", "values": [5]})
        job, _ = submit_cohort_job(conn, cohort, "create")
    assert enqueue(down, lambda: db.connection(database_url), [job]) == [job["id"]]
    finished = wait_for_job(client, headers, job["id"], ended, timeout=60)
    assert finished["status"] == "succeed"


def test_failures_end_failed_with_an_actionable_error_code(client, worker, sample_project, pg):
    _, _, headers, _ = sample_project
    unknown = submit(client, headers, "typo", {"type": "profile", "property": "user_levle", "cmp": "eq",
                                                "values": [1]})
    job = wait_for_job(client, headers, unknown["job"]["id"], ended)
    assert job["status"] == "failed" and job["error_code"] == "unknown_property"
    assert "user_levle" in job["error_message"] and "user_level" in job["error_message"]
    mismatch = submit(client, headers, "regex-on-number", {"type": "profile", "property": "age", "cmp": "regex",
                                                           "values": ["^1"]})
    job = wait_for_job(client, headers, mismatch["job"]["id"], ended)
    assert job["status"] == "failed" and job["error_code"] == "type_mismatch"
    # A reference to a cohort whose only computation failed is discovered at compute time.
    dependent = submit(client, headers, "needs-typo", {"type": "cohort", "cohort_id": unknown["cohort"]["id"]})
    job = wait_for_job(client, headers, dependent["job"]["id"], ended)
    assert job["status"] == "failed" and job["error_code"] == "cohort_not_ready"
    cohort = client.get(f"/api/v1/cohorts/{dependent['cohort']['id']}", headers=headers).get_json()
    assert cohort["latest_version"] is None
