"""Runs one job to a final status: claim it, heartbeat (carrying cancellation), hand it to its kind's handler.

A handler is `handler(run: JobRun, job: dict) -> dict` (the job's result). Cohort kinds (create,
refresh, recalculate, cron, execute...) compute a cohort (core/jobs/cohort.py); a dialect adds its
own kinds with `Dialect(job_handlers={kind: "module:attribute"})`. Retrying is the caller's (the
Celery task): RetryLater and PostgreSQL/Redis connection errors escape run().
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from cohort_engine import bitmaps, db
from cohort_engine.definition import DefinitionError
from cohort_engine.evaluate import EngineError
from core import dialects, webhooks
from core.data import cohorts, jobs, projects, versions

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """The job was cancelled, superseded or taken away while it ran (or its input cannot run): end it failed."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


class RetryLater(Exception):
    """The job cannot run now (another delivery holds it, or a service is down); retry the task."""


Handler = Callable[["JobRun", dict], dict]


@functools.lru_cache(maxsize=8)
def _dialect_handlers(names: str) -> dict[str, Handler]:
    found = {}
    for dialect in dialects.enabled_by_names(names):
        for kind, reference in dialect.job_handlers.items():
            found[kind] = dialects.load(reference)
    return found


def handler_for(settings, kind: str) -> Handler:
    """The handler of a job kind: the enabled dialects' kinds by registry, every other kind computes a cohort."""
    handler = _dialect_handlers(settings.dialects).get(kind)
    if handler is None:
        # Imported here: the cohort handler builds on this module (JobRun, JobStopped).
        from core.jobs.cohort import compute_cohort

        handler = compute_cohort
    return handler


class Heartbeat:
    """Touches the job row every interval while the job runs (beaten by the process's heartbeat thread).

    The same write tells it whether a cancel was asked for: then the callbacks of on_cancel run once
    (e.g. to cancel a remote broker query), so no second thread polls the row.
    """

    def __init__(self, dsn: str, job_id: int, token: str, interval: float):
        self.dsn, self.job_id, self.token, self.interval = dsn, job_id, token, interval
        self.cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call callback (once, on the heartbeat thread) when a cancel is seen; at once if it was seen already."""
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def start(self) -> None:
        """Beat every interval from now on (the first beat one interval from now: the claim just touched the row)."""
        _beater().add(self)

    def stop(self) -> None:
        """No more beats; waits for one in progress (at most interval + 5 s)."""
        _beater().remove(self, timeout=self.interval + 5)

    def beat(self) -> None:
        try:
            with db.connection(self.dsn) as conn:
                state = jobs.touch(conn, self.job_id, self.token)
                if state is None and self._callbacks:
                    # The claim was lost; a cancel asked for meanwhile must still stop remote work.
                    state = jobs.get(conn, self.job_id)
        except Exception:  # a missed beat is retried at the next interval
            log.warning("job=%s heartbeat failed", self.job_id, exc_info=True)
            return
        if state is not None and state["cancel_requested"] and not self.cancelled:
            self._cancel()

    def _cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        log.info("job=%s cancel seen by heartbeat", self.job_id)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the job still ends cancelled at its next progress check
                log.warning("job=%s cancel callback failed", self.job_id, exc_info=True)


class _Beater(threading.Thread):
    """The one thread of a process that beats every running job's Heartbeat.

    Started once per process: starting a thread per job cost a few ms of every trivial job on a
    busy machine (Thread.start waits until the new thread runs), more than the rest of its claim.
    """

    def __init__(self):
        super().__init__(daemon=True, name="heartbeats")
        self.cond = threading.Condition()
        self.due: dict[Heartbeat, float] = {}
        self.beating: Heartbeat | None = None
        # When the thread wakes next (inf: nothing to beat); an add wakes it only if due before.
        self.wakes_at = math.inf

    def add(self, heartbeat: Heartbeat) -> None:
        with self.cond:
            when = time.monotonic() + heartbeat.interval
            self.due[heartbeat] = when
            if when < self.wakes_at:
                self.cond.notify()

    def remove(self, heartbeat: Heartbeat, timeout: float) -> None:
        with self.cond:
            self.due.pop(heartbeat, None)
            if threading.current_thread() is not self:
                self.cond.wait_for(lambda: self.beating is not heartbeat, timeout)

    def run(self) -> None:
        while True:
            with self.cond:
                heartbeat = self._next_due()
                self.beating = heartbeat
                self.due[heartbeat] = time.monotonic() + heartbeat.interval
            try:
                heartbeat.beat()
            finally:
                with self.cond:
                    self.beating = None
                    self.cond.notify_all()

    def _next_due(self) -> Heartbeat:
        """Wait (holding cond) until some heartbeat is due; that one."""
        while True:
            if self.due:
                heartbeat, when = min(self.due.items(), key=lambda item: item[1])
                delay = when - time.monotonic()
                if delay <= 0:
                    self.wakes_at = math.inf
                    return heartbeat
            else:
                delay = None
            self.wakes_at = math.inf if delay is None else time.monotonic() + delay
            self.cond.wait(delay)


_beater_state: dict = {"pid": None, "thread": None}
_beater_lock = threading.Lock()


def _beater() -> _Beater:
    """This process's heartbeat thread, started on first use (a forked child starts its own)."""
    with _beater_lock:
        thread = _beater_state["thread"]
        if _beater_state["pid"] != os.getpid() or thread is None or not thread.is_alive():
            thread = _Beater()
            thread.start()
            _beater_state.update(pid=os.getpid(), thread=thread)
        return thread


def end_failed(conn, settings, job: dict, code: str, message: str, token: str | None = None,
               outbox: list | None = None) -> bool:
    """End a live job failed, with a failed version row and cron backoff for its cohort (one path for all).

    outbox: gets the ids of the webhook deliveries of the failure, for the caller to send after its commit.
    """
    cohort = None
    if job["cohort_id"] is not None:
        # Cohort row before job row: the lock order of every other writer (API, publish, scheduler).
        cohort = cohorts.get_any(conn, job["cohort_id"], lock=True)
    if not jobs.fail(conn, job["id"], code, message, token=token):
        return False
    if cohort is not None:
        version = versions.insert_failed(conn, cohort["id"], job["params"].get("definition_version", 0),
                                         job["base_time"], code, message, job=job)
        ids = webhooks.record(conn, cohort, "job.failed", version=version, job={**job, "status": "failed"})
        if outbox is not None:
            outbox.extend(ids)
        if job["kind"] == "cron":
            cohorts.record_outcome(conn, cohort["id"], True, settings.backoff_base, settings.backoff_max)
    log.warning("job=%s cohort=%s status=failed error_code=%s message=%r", job["id"], job["cohort_id"], code, message)
    return True


class JobRun:
    """One delivery of the job with the given id, run to a final status by its kind's handler."""

    def __init__(self, settings, job_id: int):
        self.settings = settings
        self.dsn = settings.engine.database_url
        self.job_id = job_id
        self.project: dict | None = None
        self.cohort: dict | None = None
        # The token of this task's previous try when it could not give its claim back (set by the task).
        self.resume: str | None = None
        self.claimed = False
        self.heartbeat: Heartbeat | None = None
        # Sends the webhook deliveries this run records, after their commit (the task's Celery app).
        self.sender = None
        # Names the process, so operators (and tests) can tell which worker holds a job.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    @property
    def redis(self):
        return bitmaps.redis_client(self.settings.engine.redis_url)

    def run(self) -> dict | None:
        outbox: list[int] = []
        try:
            return self._run(outbox)
        finally:
            webhooks.send(self.sender, outbox)  # after end_failed's commit

    def _run(self, outbox: list[int]) -> dict | None:
        with db.connection(self.dsn) as conn:
            # The common case (a new job) with its project and cohort in one statement; claim() for the rest.
            fast = None if self.resume else jobs.claim_new(conn, self.job_id, self.token, projects.COLUMNS,
                                                           cohorts.COLUMNS)
            if fast is not None:
                (job, self.project, self.cohort), why = fast, "claimed"
                self.claimed = True
            else:
                job, why = jobs.claim(conn, self.job_id, self.token, self.settings.stale_after, resume=self.resume)
                if why == "claimed":
                    self.claimed = True
                    self.project = projects.by_id(conn, job["project_id"])
                    self.cohort = cohorts.get_any(conn, job["cohort_id"]) if job["cohort_id"] else None
            if why == "exhausted":
                end_failed(conn, self.settings, job, "worker_lost",
                           f"the job was started {job['attempts']} times and its worker was lost each time "
                           "(killed, out of memory, or past the hard time limit); check worker logs, "
                           "then narrow the definition or give workers more memory", outbox=outbox)
                return None
            if why == "cancelled":
                end_failed(conn, self.settings, job, "cancelled", "the job was cancelled on request", outbox=outbox)
                return None
        if why == "busy":
            raise RetryLater("another delivery of this job is computing it")
        if why != "claimed":
            log.info("job=%s skipped reason=%s", self.job_id, why)
            return None
        log.info("job=%s cohort=%s kind=%s status=computing attempt=%s", job["id"], job["cohort_id"], job["kind"],
                 job["attempts"])
        handler = handler_for(self.settings, job["kind"])
        self.heartbeat = Heartbeat(self.dsn, self.job_id, self.token, self.settings.heartbeat_interval)
        self.heartbeat.start()
        try:
            return handler(self, job)
        except (JobStopped, EngineError) as exc:
            self._fail(job, exc.code, exc.message)
        except DefinitionError as exc:
            self._fail(job, "bad_definition", f"the stored definition is invalid: {exc}; update the cohort")
        finally:
            self.heartbeat.stop()
        return None

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call callback when a cancel of this job is asked for while it runs (from the heartbeat thread)."""
        self.heartbeat.on_cancel(callback)

    def fail_current(self, code: str, message: str) -> None:
        """End this delivery's job failed (used by the task for time limits and unexpected errors)."""
        with db.connection(self.dsn) as conn:
            job = jobs.get(conn, self.job_id)
        if job is not None:
            self._fail(job, code, message)

    def release(self) -> None:
        """Hand the job back for a retry of the task."""
        with db.connection(self.dsn) as conn:
            jobs.release(conn, self.job_id, self.token)
        self.claimed = False

    def _fail(self, job: dict, code: str, message: str) -> None:
        outbox: list[int] = []
        with db.connection(self.dsn) as conn:
            end_failed(conn, self.settings, job, code, message, token=self.token, outbox=outbox)
        webhooks.send(self.sender, outbox)

    def progress(self, done: int, total: int) -> None:
        """Record done/total as 0..99 percent; raise JobStopped if the job was cancelled or taken away."""
        if done == 0 or done >= total:
            # The claim set 0 and publishing checks the claim and the cancel flag: nothing to write.
            return
        percent = min(99, done * 99 // max(total, 1))
        with db.connection(self.dsn) as conn:
            state = jobs.touch(conn, self.job_id, self.token, percent)
        if state is None:
            raise JobStopped("claim_lost", "the job was taken over by the reaper or ended by another process")
        if state["cancel_requested"]:
            raise JobStopped("cancelled", "the job was cancelled on request")

    def finish(self, job: dict, version_id, outcome: dict) -> dict:
        """Mark the job succeed with outcome as its result (a handler's last step when it publishes nothing)."""
        with db.connection(self.dsn) as conn:
            self.mark_succeeded(conn, outcome, version_id)
        log.info("job=%s status=succeed count=%s", job["id"], outcome.get("count"))
        return outcome

    def mark_succeeded(self, conn, outcome: dict, version_id) -> None:
        """Set the job succeed in conn's transaction, or raise why this claim may not."""
        if jobs.succeed(conn, self.job_id, self.token, outcome, version_id):
            return
        state = jobs.lock_claimed(conn, self.job_id, self.token)
        if state is not None and state["cancel_requested"]:
            raise JobStopped("cancelled", "the job was cancelled on request")
        raise JobStopped("claim_lost", "the job ended elsewhere before it could be published")
