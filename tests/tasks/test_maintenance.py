"""Maintenance tasks (sweep, schedule) on their own queue and worker, against real worker and beat processes."""

from __future__ import annotations

from cohort_engine import db
from tests.services import wait_until
from tests.tasks.conftest import slow_definition, wait_for_job

LONG_LEAVES = 120


def job_statuses(database_url, job_ids) -> dict[int, tuple[str, str | None]]:
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, status, error_code FROM jobs WHERE id = ANY(%s)", (list(job_ids),))
        return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def test_sweep_and_schedule_run_while_every_compute_child_is_busy(client, worker, beat, sample_project,
                                                                  database_url):
    _, project_id, headers, _ = sample_project
    # Twice the compute worker's two children: both busy, and a backlog queued behind them.
    long_jobs = []
    for i in range(4):
        created = client.post("/api/v1/cohorts", headers=headers,
                              json={"name": f"long-{i}", "definition": slow_definition(LONG_LEAVES)}).get_json()
        long_jobs.append(created["job"]["id"])
    try:
        wait_until(lambda: sum(s == "computing" for s, _ in job_statuses(database_url, long_jobs).values()) == 2,
                   timeout=30, interval=0.1, what="both compute children busy")
        # A job whose worker vanished an hour ago with its attempts spent: only the reaper ends it.
        with db.connection(database_url) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO jobs (project_id, kind, status, attempts, max_attempts, worker, started_at,"
                        " heartbeat_at) VALUES (%s, 'refresh', 'computing', 3, 3, 'gone:1:x', now() - interval '1 hour',"
                        " now() - interval '1 hour') RETURNING id", (project_id,))
            lost_id = cur.fetchone()[0]
        cron = client.post("/api/v1/cohorts", headers=headers, json={
            "name": "cron-while-busy", "definition": {"type": "ids", "keys": ["u1"]}, "dynamic": True,
            "cron": "* * * * * *"}).get_json()
        cron_id = cron["cohort"]["id"]

        def cron_fired():
            # The fire coalesces onto the cohort's queued create job, but the scheduler records it.
            with db.connection(database_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT last_fire_at FROM cohorts WHERE id = %s", (cron_id,))
                return cur.fetchone()[0] is not None

        wait_until(lambda: job_statuses(database_url, [lost_id])[lost_id] == ("failed", "worker_lost"), timeout=10,
                   interval=0.1, what="the reaper to end the lost job")
        wait_until(cron_fired, timeout=10, interval=0.1, what="the scheduler to fire the cron cohort")
        busy = [s for s, _ in job_statuses(database_url, long_jobs).values() if s in ("new", "computing")]
        assert len(busy) >= 2, "the long jobs were still occupying the compute worker"
    finally:
        with db.connection(database_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE cohorts SET scheduler_running = false WHERE project_id = %s", (project_id,))
        for job_id in long_jobs:
            client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers)
        for job_id in long_jobs:
            wait_for_job(client, headers, job_id, lambda j: j["status"] in ("succeed", "failed"), timeout=60)
