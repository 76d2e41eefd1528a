"""The core services bound to the current request: its connection, project, broker check and job sender."""

from __future__ import annotations

from flask import current_app, g

from app.db import check_broker, connection_factory, get_db, get_redis, settings
from core.queue import enqueue
from core.services.cohorts import CohortService


def send_jobs(created: list[dict]) -> None:
    """Send committed jobs with the app's sender (app.extensions["celery"], given by create_app's caller)."""
    enqueue(current_app.extensions["celery"], connection_factory(), created)


def cohort_service(noun: str = "cohort") -> CohortService:
    """The cohort commands for the request's project (g.project, set by app.auth)."""
    return CohortService(get_db(), g.project, settings(), check_broker=check_broker, send=send_jobs, redis=get_redis,
                         noun=noun)
