"""Sugo tasks (`usergroup` and `batchUpdate` jobs): load the job by id, run it, decide retry."""

from __future__ import annotations

from celery import shared_task

from dialects.sugo.jobs import SugoJobExecutor
from tasks.cohorts import run_job


@shared_task(name="sugo.usergroup", bind=True, max_retries=20, ignore_result=True)
def usergroup(self, job_id: int) -> None:
    """Compute a Sugo user group job (/ant/usergroup/single or multi) to succeed or failed."""
    # Sugo group Redis errors end the job inside the executor; only PostgreSQL and the service's
    # own Redis reach run_job's retry path.
    run_job(self, SugoJobExecutor, job_id)


@shared_task(name="sugo.batch_update", bind=True, max_retries=20, ignore_result=True)
def batch_update(self, job_id: int) -> None:
    """Run a Sugo tag batch-update job (/ant/tag/.../batchUpdate) to succeed or failed."""
    run_job(self, SugoJobExecutor, job_id)
