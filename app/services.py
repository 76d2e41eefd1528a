"""The core services bound to the current request: its connection, project, broker check and job sender."""

from __future__ import annotations

import time

from flask import current_app, g

from app.db import check_broker, connection_factory, get_db, get_redis, settings
from core.data import jobs
from core.queue import enqueue
from core.services.cohorts import CohortService


def send_jobs(created: list[dict]) -> None:
    """Send committed jobs with the app's sender (app.extensions["celery"], given by create_app's caller)."""
    enqueue(current_app.extensions["celery"], connection_factory(), created)


def cohort_service(noun: str = "cohort") -> CohortService:
    """The cohort commands for the request's project (g.project, set by app.auth)."""
    return CohortService(get_db(), g.project, settings(), check_broker=check_broker, send=send_jobs, redis=get_redis,
                         noun=noun)


POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.2


def wait_for(job_id: int, seconds: float) -> dict:
    """The job once it has ended, or as it is when `seconds` have passed (for answers that wait a bounded time)."""
    conn = get_db()
    deadline = time.monotonic() + seconds
    pause = POLL_FIRST_SECONDS
    while True:
        job = jobs.get(conn, job_id)
        conn.rollback()
        if job["status"] in ("succeed", "failed") or time.monotonic() >= deadline:
            return job
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, POLL_MAX_SECONDS)
