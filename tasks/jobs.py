"""Job tasks: load the job by id, hand it to the core job runner, decide retry.

Every job task name runs the same runner (which picks the handler by the job's kind): `jobs.run`,
`cohorts.compute`, and the names dialects keep for their kinds (Sugo's `sugo.usergroup`,
`sugo.batch_update`), registered on the Celery app from the dialect registry by register_job_tasks.
"""

from __future__ import annotations

import logging
import math
import time

import psycopg2
import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from core import dialects
from core.jobs.runner import JobRun, RetryLater
from core.queue import COMPUTE_TASK, RUN_TASK

log = logging.getLogger(__name__)
TRANSIENT = (psycopg2.OperationalError, redis.ConnectionError, redis.TimeoutError)


# Retry state travels in the task message's headers (task signatures stay job_id only): two separate
# budgets, busy waits and transient errors, and the claim a failed try could not give back.
BUSY_HEADER, TRANSIENT_HEADER, RESUME_HEADER = "cohorts_busy", "cohorts_transient", "cohorts_resume"


def run_job(task, job_id: int) -> None:
    """Run a job with the core runner and turn what escapes into a retry or a `failed` job (shared by all tasks)."""
    settings = task.app.cohort_settings
    headers = task.request.headers or {}
    busy, transient = int(headers.get(BUSY_HEADER, 0)), int(headers.get(TRANSIENT_HEADER, 0))
    executor = JobRun(settings, job_id)
    executor.resume = headers.get(RESUME_HEADER)
    executor.sender = task.app  # sends the run's webhook deliveries after their commit
    started = time.monotonic()
    try:
        executor.run()
    except RetryLater:
        # Another delivery holds the job; once its heartbeat is stale this one may take over. A holder
        # runs at most the hard time limit, so more waits than that means the reaper owns the job.
        if busy >= busy_budget(settings):
            log.warning("job=%s busy_retries=%s giving up: the reaper requeues it if its holder is gone", job_id, busy)
            return
        raise _retry(task, settings.stale_after, {BUSY_HEADER: busy + 1, TRANSIENT_HEADER: transient,
                                                  RESUME_HEADER: executor.resume}) from None
    except SoftTimeLimitExceeded:
        _fail_quietly(executor, "timeout", _timeout_message(settings))
    except TRANSIENT as exc:
        if transient >= settings.max_attempts:
            _fail_quietly(executor, "backend_unavailable",
                          f"PostgreSQL or Redis was unreachable on {settings.max_attempts + 1} tries: {exc}")
            return
        resume = executor.resume
        if executor.claimed:
            try:
                executor.release()
                resume = None
            except TRANSIENT:
                # PostgreSQL is still down: the retry takes this claim over instead of waiting for
                # it to go stale (and losing an attempt).
                resume = executor.token
        log.warning("job=%s transient error, retrying: %s", job_id, exc)
        raise _retry(task, settings.retry_delay * 2 ** transient, {BUSY_HEADER: busy, TRANSIENT_HEADER: transient + 1,
                                                                   RESUME_HEADER: resume}) from None
    except Exception as exc:
        if time.monotonic() - started >= settings.soft_time_limit:
            # DuckDB turns the soft-limit signal into its own "Query interrupted" error.
            _fail_quietly(executor, "timeout", _timeout_message(settings))
            return
        log.exception("job=%s unexpected error", job_id)
        _fail_quietly(executor, "internal_error", f"{type(exc).__name__}: {exc}; this is a bug, please report it")


def busy_budget(settings) -> int:
    """How many times a delivery waits COHORTS_STALE_AFTER for a busy job before it leaves it to the reaper."""
    return math.ceil(settings.hard_time_limit / settings.stale_after) + 2


def _retry(task, countdown: float, state: dict):
    """task.retry with the budgets in headers; Celery's own retry count is not the limit (ours are)."""
    headers = {**(task.request.headers or {}), **{k: v for k, v in state.items() if v is not None}}
    if state.get(RESUME_HEADER) is None:
        headers.pop(RESUME_HEADER, None)
    return task.retry(countdown=countdown, headers=headers, max_retries=task.request.retries + 1)


TASK_OPTIONS = {"bind": True, "max_retries": 20, "ignore_result": True}


@shared_task(name=RUN_TASK, **TASK_OPTIONS)
def run(self, job_id: int) -> None:
    """Run the job job_id, of any kind, to succeed or failed."""
    run_job(self, job_id)


@shared_task(name=COMPUTE_TASK, **TASK_OPTIONS)
def compute(self, job_id: int) -> None:
    """Compute the cohort job job_id to succeed or failed (the name cohort jobs are sent under)."""
    run_job(self, job_id)


def _run_named(self, job_id: int) -> None:
    """Run the job job_id (sent under a task name a dialect kept for its kinds) to succeed or failed."""
    run_job(self, job_id)


def register_job_tasks(celery, settings) -> None:
    """Register on celery the task names the enabled dialects keep for their job kinds (all run the runner)."""
    for dialect in dialects.enabled(settings):
        for name in sorted(set(dialect.task_names.values())):
            if name not in (RUN_TASK, COMPUTE_TASK):
                celery.task(name=name, shared=False, **TASK_OPTIONS)(_run_named)


def _timeout_message(settings) -> str:
    return (f"the computation ran longer than {settings.soft_time_limit}s; "
            "narrow the time windows or raise COHORTS_SOFT_TIME_LIMIT")


def _fail_quietly(executor: JobRun, code: str, message: str) -> None:
    try:
        executor.fail_current(code, message)
    except TRANSIENT:
        log.error("job=%s could not record failure %s; the reaper will end it", executor.job_id, code)
