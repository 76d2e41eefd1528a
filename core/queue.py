"""Creating jobs and putting them on the Celery queue (by task name: the name is the wire protocol).

The sender is any object with Celery's `send_task` and a `cohort_settings` (Settings): the caller's
Celery app; this module does not import Celery.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from datetime import timezone

from core import dialects
from core.data import jobs

log = logging.getLogger(__name__)

# Every task name runs the same job runner (core/jobs/runner.py), which picks the handler by the job's kind.
COMPUTE_TASK = "cohorts.compute"
RUN_TASK = "jobs.run"
# Workers that consume COHORTS_QUEUE consume COHORTS_QUEUE + this first (workers/celery_app.py).
URGENT_SUFFIX = ".urgent"


def time_partition(base_time) -> str:
    """The partition key of a base time, in UTC so it does not change with the project's zone."""
    return base_time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=8)
def _partitioned(names: str) -> frozenset[str]:
    return frozenset(dialect.name for dialect in dialects.enabled_by_names(names) if dialect.partitioned)


def cron_partition(cohort: dict, fire_time, settings=None) -> str:
    """Where a cron fire computes: its own partition for partitioned dialects, else the cohort's live slot."""
    partitioned = _partitioned(settings.dialects if settings is not None else "")
    return time_partition(fire_time) if cohort["dialect"] in partitioned else "latest"


def submit_cohort_job(conn, cohort: dict, kind: str, *, base_time=None, partition_key: str = "latest",
                      max_attempts: int = 3, params: dict | None = None) -> tuple[dict, bool]:
    """Insert a job computing the cohort (or return the partition's live job); the caller commits."""
    job_params = {"definition_version": cohort["definition_version"], **(params or {})}
    return jobs.insert(conn, cohort["project_id"], kind, cohort_id=cohort["id"], params=job_params,
                       base_time=base_time, partition_key=partition_key, max_attempts=max_attempts)


@functools.lru_cache(maxsize=8)
def _kind_tasks(names: str) -> dict[str, str]:
    return {kind: dialect.task_names.get(kind, RUN_TASK)
            for dialect in dialects.enabled_by_names(names) for kind in dialect.job_handlers}


def task_for(kind: str, settings=None) -> str:
    """The task a job kind is sent to: its dialect's (Sugo's kept names, else jobs.run), else cohorts.compute."""
    return _kind_tasks(settings.dialects if settings is not None else "").get(kind, COMPUTE_TASK)


def job_task_names(settings=None) -> frozenset[str]:
    """The names of the tasks whose messages carry a job id (what broker_job_ids looks for)."""
    return frozenset((COMPUTE_TASK, RUN_TASK, *_kind_tasks(settings.dialects if settings is not None else "").values()))


def urgent_queue(queue: str) -> str:
    """The queue of resent jobs (reaped, or lost by the broker) that compute workers consume first."""
    return queue + URGENT_SUFFIX


def enqueue(celery_app, conn_factory, jobs_to_send, urgent: bool = False) -> list[int]:
    """Send committed jobs (rows with id and kind) to their task; return the ids that could not be sent.

    New job rows are inserted already marked enqueued (no extra write on the happy path); a job
    that could not be sent is unmarked, stays `new`, and the sweeper sends it at its next pass.
    urgent: resends go to the urgent queue, ahead of the backlog (same task names).
    """
    failed = []
    settings = celery_app.cohort_settings
    options = {"queue": urgent_queue(settings.queue)} if urgent else {}
    for job in jobs_to_send:
        try:
            celery_app.send_task(task_for(job["kind"], settings), args=[job["id"]], **options)
        except Exception as exc:  # broker down
            log.warning("job=%s enqueue failed: %s", job["id"], exc)
            failed.append(job["id"])
    if failed:
        try:
            with conn_factory() as conn:
                jobs.unmark_enqueued(conn, failed)
        except Exception as exc:  # then the sweeper resends them after COHORTS_REQUEUE_AFTER
            log.warning("jobs=%s could not be unmarked: %s", failed, exc)
    return failed


# kombu's Redis transport: a queue is a list (plus one per priority step, `name` + SEP + step),
# delivered but unacknowledged messages (running, or held for a countdown) sit in the UNACKED hash.
KOMBU_PRIORITY_SEP, KOMBU_PRIORITY_STEPS, KOMBU_UNACKED = "\x06\x16", (3, 6, 9), "unacked"
SCAN_CHUNK = 1000


def broker_job_ids(broker, queues, task_names: frozenset[str] | None = None) -> set[int]:
    """Ids of the jobs that have a message in the Redis broker: waiting in one of queues, or delivered.

    task_names: the job tasks' names (job_task_names(settings); default: those of dialects.INSTALLED).

    The exact answer, at the cost of reading every queued message (LRANGE in chunks, HSCAN of the
    unacknowledged hash): the sweeper calls it only when some job has waited past COHORTS_LOST_AFTER.
    """
    names = job_task_names() if task_names is None else task_names
    ids: set[int] = set()
    keys = [q for queue in queues for q in (queue, *(f"{queue}{KOMBU_PRIORITY_SEP}{p}" for p in KOMBU_PRIORITY_STEPS))]
    for key in keys:
        start = 0
        while True:
            chunk = broker.lrange(key, start, start + SCAN_CHUNK - 1)
            ids.update(_fast_job_id(raw, names) for raw in chunk)
            if len(chunk) < SCAN_CHUNK:
                break
            start += SCAN_CHUNK
    for _, raw in broker.hscan_iter(KOMBU_UNACKED, count=SCAN_CHUNK):
        entry = _json(raw)  # [message, exchange, routing_key]
        ids.add(_job_id(entry[0] if isinstance(entry, list) and entry else None, names))
    ids.discard(None)
    return ids


# Celery writes the task name and a repr of the args into the headers: reading them with a regex is
# ~10x cheaper than decoding each message; anything else falls back to decoding it.
_TASK_AND_ARGS = re.compile(rb'"task": "([^"]+)".*?"argsrepr": "[\[(](\d+),?[\])]"')


def _fast_job_id(raw: bytes, names: frozenset[str]) -> int | None:
    match = _TASK_AND_ARGS.search(raw)
    if match is not None:
        return int(match.group(2)) if match.group(1).decode() in names else None
    return _job_id(_json(raw), names)


def _json(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _job_id(message, names: frozenset[str]) -> int | None:
    """The job id of one kombu message of a job task (protocol 2: body = [args, kwargs, embed]), else None."""
    try:
        if message.get("headers", {}).get("task") not in names:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return int(json.loads(body)[0][0])
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return None
