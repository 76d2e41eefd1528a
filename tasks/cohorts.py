"""Cohort computation task: load the job by id, run the executor, decide retry."""

from __future__ import annotations

import logging
import time

import psycopg2
import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from tasks.executor import JobExecutor, RetryLater

log = logging.getLogger(__name__)
TRANSIENT = (psycopg2.OperationalError, redis.ConnectionError, redis.TimeoutError)


def run_job(task, executor_class, job_id: int) -> None:
    """Run a job with executor_class and turn what escapes into a retry or a `failed` job (shared by all tasks)."""
    settings = task.app.cohort_settings
    executor = executor_class(settings, job_id)
    started = time.monotonic()
    try:
        executor.run()
    except RetryLater:
        # Another delivery holds the job; once its heartbeat is stale this one may take over.
        raise task.retry(countdown=settings.stale_after) from None
    except SoftTimeLimitExceeded:
        _fail_quietly(executor, "timeout", _timeout_message(settings))
    except TRANSIENT as exc:
        if task.request.retries >= settings.max_attempts:
            _fail_quietly(executor, "backend_unavailable",
                          f"PostgreSQL or Redis was unreachable on {settings.max_attempts + 1} tries: {exc}")
            return
        try:
            executor.release()
        except TRANSIENT:
            pass  # the reaper gives the job back once its heartbeat is stale
        log.warning("job=%s transient error, retrying: %s", job_id, exc)
        raise task.retry(countdown=settings.retry_delay * 2 ** task.request.retries) from None
    except Exception as exc:
        if time.monotonic() - started >= settings.soft_time_limit:
            # DuckDB turns the soft-limit signal into its own "Query interrupted" error.
            _fail_quietly(executor, "timeout", _timeout_message(settings))
            return
        log.exception("job=%s unexpected error", job_id)
        _fail_quietly(executor, "internal_error", f"{type(exc).__name__}: {exc}; this is a bug, please report it")


@shared_task(name="cohorts.compute", bind=True, max_retries=20, ignore_result=True)
def compute(self, job_id: int) -> None:
    """Compute the cohort job job_id to succeed or failed."""
    run_job(self, JobExecutor, job_id)


def _timeout_message(settings) -> str:
    return (f"the computation ran longer than {settings.soft_time_limit}s; "
            "narrow the time windows or raise COHORTS_SOFT_TIME_LIMIT")


def _fail_quietly(executor: JobExecutor, code: str, message: str) -> None:
    try:
        executor.fail_current(code, message)
    except TRANSIENT:
        log.error("job=%s could not record failure %s; the reaper will end it", executor.job_id, code)
