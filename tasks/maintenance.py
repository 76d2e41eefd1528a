"""Periodic tasks run by beat: the sweeper/reaper and the dynamic-cohort scheduler."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import psycopg2
import redis as redis_lib
from celery import shared_task
from croniter import croniter

from cohort_engine import db
from core import webhooks
from core.data import cohorts, jobs, projects, webhook_deliveries
from core.jobs.runner import end_failed
from core.queue import (
    broker_job_ids,
    cron_partition,
    enqueue,
    job_task_names,
    submit_cohort_job,
    urgent_queue,
)

log = logging.getLogger(__name__)
# Waiting jobs compared with the broker per sweep, oldest first (a backlog larger than this is checked
# from its oldest end; its newer jobs have waited less).
LOST_CHECK_LIMIT = 10000


def lost_jobs(conn, settings, older_than: float) -> list[dict]:
    """Jobs marked enqueued more than older_than seconds ago, still `new`, whose message the broker lost."""
    if not settings.broker_url.startswith("redis"):
        return []  # only Redis is inspected; other brokers rely on COHORTS_REQUEUE_AFTER
    if not jobs.enqueued_waiting(conn, older_than, limit=1):
        return []  # nothing waited long: no need to read the queue
    try:
        present = broker_job_ids(broker_client(settings.broker_url), [settings.queue, urgent_queue(settings.queue)],
                                 job_task_names(settings))
    except redis_lib.RedisError as exc:  # the reaping in this sweep must not depend on it
        log.warning("sweep broker_check=failed error=%s", exc)
        return []
    # The jobs are read after the broker: a message taken from the queue meanwhile belongs to a job
    # that is claimed (not `new`) by now, so it is not mistaken for a lost one.
    return [job for job in jobs.enqueued_waiting(conn, older_than, limit=LOST_CHECK_LIMIT) if job["id"] not in present]


def broker_client(url: str):
    """A Redis client on the broker's database, shared within the process."""
    from cohort_engine import bitmaps

    return bitmaps.redis_client(url)


# send_events=False: no task events for these periodic runs, so Flower's task list keeps the jobs
# (docs/jobs.md "Logs and Flower").
@shared_task(name="cohorts.sweep", bind=True, ignore_result=True, send_events=False)
def sweep(self) -> dict:
    """Reap jobs whose heartbeat stopped, re-enqueue jobs left `new` and jobs the broker lost."""
    settings = self.app.cohort_settings
    requeued, failed, outbox = [], [], []
    with db.connection(settings.engine.database_url) as conn:
        for job in jobs.stale_computing(conn, settings.stale_after):
            if job["cancel_requested"]:
                end_failed(conn, settings, job, "cancelled", "the job was cancelled on request", outbox=outbox)
                failed.append(job["id"])
            elif job["attempts"] >= job["max_attempts"]:
                end_failed(conn, settings, job, "worker_lost",
                           f"the worker computing this job stopped sending heartbeats ({job['attempts']} attempts); "
                           "check that workers are running and not running out of memory", outbox=outbox)
                failed.append(job["id"])
            else:
                jobs.requeue(conn, job["id"])
                requeued.append(job)
        waiting = jobs.waiting_unqueued(conn, settings.sweep_interval, settings.requeue_after)
        lost = lost_jobs(conn, settings, settings.lost_after)
        resend = list({job["id"]: job for job in [*requeued, *waiting, *lost]}.values())
        requeued_ids = {job["id"] for job in requeued}
        jobs.mark_enqueued(conn, [job["id"] for job in resend if job["id"] not in requeued_ids])
        # Deliveries whose message was lost (or never sent) are sent again; they carry their own attempts.
        overdue = webhook_deliveries.overdue(conn, settings.webhook_lost_after)
        previews = jobs.delete_finished_previews(conn, settings.preview_keep_seconds)
    # Resends go to the urgent queue: a reaped or lost job has waited already, not behind the backlog.
    enqueue(self.app, lambda: db.connection(settings.engine.database_url), resend, urgent=True)
    webhooks.send(self.app, outbox + overdue)
    resent_ids = [job["id"] for job in resend]
    if resend or failed or overdue or previews:
        log.info("sweep requeued=%s lost=%s failed=%s deliveries_resent=%s previews_deleted=%s", resent_ids,
                 [job["id"] for job in lost], failed, overdue, previews)
    return {"requeued": resent_ids, "lost": [job["id"] for job in lost], "failed": failed,
            "deliveries_resent": overdue, "previews_deleted": previews}


def due_fire_time(cron: str, tz: ZoneInfo, since: datetime, now: datetime) -> datetime | None:
    """The latest cron fire time in (since, now], in the project's zone, or None."""
    latest = croniter(cron, now.astimezone(tz)).get_prev(datetime)
    return latest if latest > since else None


@shared_task(name="cohorts.schedule", bind=True, ignore_result=True, send_events=False)
def schedule(self) -> list[int]:
    """Create one job per dynamic cohort whose cron fired since its last fire (missed fires coalesce)."""
    settings = self.app.cohort_settings
    now = datetime.now(UTC)
    created = []
    with db.connection(settings.engine.database_url) as conn:
        for cohort in cohorts.due_for_schedule(conn):
            if cohort["retry_after"] and cohort["retry_after"] > now:
                continue  # backing off after failures
            job = schedule_one(conn, settings, cohort, now)
            if job is not None:
                created.append(job)
    enqueue(self.app, lambda: db.connection(settings.engine.database_url), created)
    return [job["id"] for job in created]


def schedule_one(conn, settings, cohort: dict, now: datetime) -> dict | None:
    """Fire one cohort in a savepoint: a cohort that fails is marked and skipped, the others still fire."""
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT schedule_cohort")
    try:
        job = fire_if_due(conn, settings, cohort, now)
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raise  # the connection is gone: no other cohort can be scheduled on it either
    except Exception as exc:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK TO SAVEPOINT schedule_cohort")
        message = f"{type(exc).__name__}: {exc}"
        if message != cohort["schedule_error"]:  # the same error again: already marked and logged
            cohorts.mark_schedule_error(conn, cohort["id"], message)
            log.warning("cohort=%s schedule skipped error=%r", cohort["id"], message)
        return None
    if cohort["schedule_error"] is not None:
        cohorts.clear_schedule_error(conn, cohort["id"])
    with conn.cursor() as cur:
        cur.execute("RELEASE SAVEPOINT schedule_cohort")
    return job


def fire_if_due(conn, settings, cohort: dict, now: datetime) -> dict | None:
    """Submit the cohort's cron job if its cron fired since the last fire; the new job, or None."""
    tz = ZoneInfo(projects.by_id(conn, cohort["project_id"])["timezone"])
    since = cohort["last_fire_at"] or cohort["updated_at"]
    fire = due_fire_time(cohort["cron"], tz, since, now)
    if fire is None:
        return None
    job, is_new = submit_cohort_job(conn, cohort, "cron", base_time=fire, max_attempts=settings.max_attempts,
                                    partition_key=cron_partition(cohort, fire, settings))
    cohorts.record_fire(conn, cohort["id"], fire)
    if not is_new:
        return None
    log.info("cohort=%s job=%s cron fire=%s", cohort["id"], job["id"], fire.isoformat())
    return job


@shared_task(name="cohorts.ping", ignore_result=True)
def ping(counter_key: str | None = None) -> None:
    """A near no-op for probes and the queue benchmark: optionally counts itself in Redis."""
    if counter_key:
        import redis as redis_lib

        from core.settings import Settings

        client = redis_lib.Redis.from_url(Settings.from_env().engine.redis_url)
        try:
            client.incr(counter_key)
        finally:
            client.close()
