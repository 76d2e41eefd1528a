"""Sugo tasks (`usergroup` and `batchUpdate` jobs): load the job by id, run it, decide retry."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from tasks.cohorts import TRANSIENT, _fail_quietly, _timeout_message
from tasks.executor import RetryLater
from tasks.sugo_executor import SugoJobExecutor

log = logging.getLogger(__name__)


def _run(task, job_id: int) -> None:
    settings = task.app.cohort_settings
    executor = SugoJobExecutor(settings, job_id)
    started = time.monotonic()
    try:
        executor.run()
    except RetryLater:
        raise task.retry(countdown=settings.stale_after) from None
    except SoftTimeLimitExceeded:
        _fail_quietly(executor, "timeout", _timeout_message(settings))
    except TRANSIENT as exc:
        # Only PostgreSQL and the service's own Redis get here: Sugo group Redis errors end the job.
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
            _fail_quietly(executor, "timeout", _timeout_message(settings))
            return
        log.exception("job=%s unexpected error", job_id)
        _fail_quietly(executor, "internal_error", f"{type(exc).__name__}: {exc}; this is a bug, please report it")


@shared_task(name="sugo.usergroup", bind=True, max_retries=20, ignore_result=True)
def usergroup(self, job_id: int) -> None:
    """Compute a Sugo user group job (/ant/usergroup/single or multi) to succeed or failed."""
    _run(self, job_id)


@shared_task(name="sugo.batch_update", bind=True, max_retries=20, ignore_result=True)
def batch_update(self, job_id: int) -> None:
    """Run a Sugo tag batch-update job (/ant/tag/.../batchUpdate) to succeed or failed."""
    _run(self, job_id)
