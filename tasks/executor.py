"""Runs one cohort job: claim it, heartbeat, call the engine, publish under the version guard."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from cohort_engine import bitmaps, db
from cohort_engine.definition import DefinitionError, parse_definition
from cohort_engine.evaluate import EngineError
from cohort_engine.project import ProjectEngine
from core.data import cohorts, jobs, projects, versions
from core.jobs.retention import drop_bitmaps, expire_old_versions

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """The job was cancelled, superseded or taken away while it ran."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


class RetryLater(Exception):
    """The job cannot run now (another delivery holds it, or a service is down); retry the task."""


class Heartbeat(threading.Thread):
    """Touches the job row every interval while the job computes, on a connection of its own."""

    def __init__(self, dsn: str, job_id: int, token: str, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.dsn, self.job_id, self.token, self.interval = dsn, job_id, token, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with db.connection(self.dsn) as conn:
                    jobs.touch(conn, self.job_id, self.token)
            except Exception:  # a missed beat is retried at the next interval
                log.warning("job=%s heartbeat failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=self.interval + 5)


def end_failed(conn, settings, job: dict, code: str, message: str, token: str | None = None) -> bool:
    """End a live job failed, with a failed version row and cron backoff for its cohort (one path for all)."""
    cohort = None
    if job["cohort_id"] is not None:
        # Cohort row before job row: the lock order of every other writer (API, publish, scheduler).
        cohort = cohorts.get_any(conn, job["cohort_id"], lock=True)
    if not jobs.fail(conn, job["id"], code, message, token=token):
        return False
    if cohort is not None:
        versions.insert_failed(conn, cohort["id"], job["params"].get("definition_version", 0), job["base_time"],
                               code, message)
        if job["kind"] == "cron":
            cohorts.record_outcome(conn, cohort["id"], True, settings.backoff_base, settings.backoff_max)
    log.warning("job=%s cohort=%s status=failed error_code=%s message=%r", job["id"], job["cohort_id"], code, message)
    return True


class JobExecutor:
    """Executes the job with the given id to a final status."""

    def __init__(self, settings, job_id: int):
        self.settings = settings
        self.dsn = settings.engine.database_url
        self.job_id = job_id
        self.project: dict | None = None
        self.cohort: dict | None = None
        # The token of this task's previous try when it could not give its claim back (set by run_job).
        self.resume: str | None = None
        self.claimed = False
        # Names the process, so operators (and tests) can tell which worker holds a job.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    @property
    def redis(self):
        return bitmaps.redis_client(self.settings.engine.redis_url)

    def run(self) -> dict | None:
        with db.connection(self.dsn) as conn:
            job, why = jobs.claim(conn, self.job_id, self.token, self.settings.stale_after, resume=self.resume)
            if why == "claimed":
                self.claimed = True
                # Loaded in the claim's transaction: one round trip fewer for every job.
                self.project = projects.by_id(conn, job["project_id"])
                self.cohort = cohorts.get_any(conn, job["cohort_id"]) if job["cohort_id"] else None
            if why == "exhausted":
                end_failed(conn, self.settings, job, "worker_lost",
                           f"the job was started {job['attempts']} times and its worker was lost each time "
                           "(killed, out of memory, or past the hard time limit); check worker logs, "
                           "then narrow the definition or give workers more memory")
                return None
            if why == "cancelled":
                end_failed(conn, self.settings, job, "cancelled", "the job was cancelled on request")
                return None
        if why == "busy":
            raise RetryLater("another delivery of this job is computing it")
        if why != "claimed":
            log.info("job=%s skipped reason=%s", self.job_id, why)
            return None
        log.info("job=%s cohort=%s kind=%s status=computing attempt=%s", job["id"], job["cohort_id"], job["kind"],
                 job["attempts"])
        heartbeat = Heartbeat(self.dsn, self.job_id, self.token, self.settings.heartbeat_interval)
        heartbeat.start()
        try:
            return self._compute(job)
        except (JobStopped, EngineError) as exc:
            self._fail(job, exc.code, exc.message)
        except DefinitionError as exc:
            self._fail(job, "bad_definition", f"the stored definition is invalid: {exc}; update the cohort")
        finally:
            heartbeat.stop()
        return None

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
        with db.connection(self.dsn) as conn:
            end_failed(conn, self.settings, job, code, message, token=self.token)

    def _progress(self, done: int, total: int) -> None:
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

    def _compute(self, job: dict) -> dict:
        project, cohort = self.project, self.cohort
        if job["cohort_id"] and cohort is None:
            raise JobStopped("cohort_deleted", "the cohort was deleted before its job ran")
        definition = cohort["definition"] if cohort else job["params"]["definition"]
        definition_version = cohort["definition_version"] if cohort else 0
        engine = ProjectEngine(self.settings.engine, project["name"], project_id=project["id"],
                               timezone=project["timezone"])
        prefix = self.settings.engine.key_prefix

        def load_cohort(cohort_id: int):
            return bitmaps.load_cached(self.redis, bitmaps.cohort_key(prefix, project["id"], cohort_id),
                                       lambda: self._durable_bitmap(cohort_id))

        result = engine.compute(parse_definition(definition), base_time=job["base_time"], load_cohort=load_cohort,
                                progress=self._progress)
        if cohort is None:
            return self._finish(job, None, {"count": result.count})
        # One key per attempt: a stale earlier claim finishing late cannot overwrite this one's bitmap.
        version_key = bitmaps.cohort_key(prefix, project["id"], cohort["id"], f"j{job['id']}a{job['attempts']}")
        payload = bitmaps.publish(self.redis, version_key, result.bitmap)
        try:
            return self._publish(job, definition_version, version_key, result, payload)
        except BaseException:
            self.redis.delete(version_key)  # no version row will name it
            raise

    def _durable_bitmap(self, cohort_id: int) -> bytes | None:
        """A referenced cohort's published bitmap from PostgreSQL (a Redis miss: Redis lost it)."""
        with db.connection(self.dsn) as conn:
            cohort = cohorts.get_any(conn, cohort_id)
            # Only a cohort of this job's project: the Redis key it replaces is project-scoped too.
            if cohort is None or cohort["project_id"] != self.project["id"]:
                return None
            return versions.published_bitmap(conn, cohort_id)

    def _publish(self, job: dict, definition_version: int, version_key: str, result, payload: bytes) -> dict:
        prefix = self.settings.engine.key_prefix
        with db.connection(self.dsn) as conn:
            # The cohort row lock orders publishers: an older run never overwrites a newer version.
            cohort = cohorts.get_any(conn, job["cohort_id"], lock=True)
            if cohort is None:
                raise JobStopped("cohort_deleted", "the cohort was deleted while its job ran")
            if cohort["definition_version"] != definition_version:
                raise JobStopped("superseded", "the cohort's definition changed while this job ran; "
                                               "the job for the new definition publishes instead")
            version = versions.insert_succeeded(conn, cohort["id"], definition_version, job["base_time"],
                                                result.count, version_key)
            # The durable copy commits with the version row: a version that exists survives Redis.
            versions.store_bitmap(conn, version["id"], payload)
            latest = versions.get(conn, cohort["latest_version_id"])
            is_newest = latest is None or (latest["definition_version"], latest["base_time"]) <= (
                definition_version, job["base_time"])
            outcome = {"count": result.count, "version_id": version["id"], "published": is_newest,
                       "leaves": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()}
                                  for t in result.timings]}
            # Also locks the job row, so the reaper cannot take the job before this commits.
            self._mark_succeeded(conn, outcome, version["id"])
            if is_newest:
                cohorts.set_latest_version(conn, cohort["id"], version["id"])
                bitmaps.publish(self.redis, bitmaps.cohort_key(prefix, cohort["project_id"], cohort["id"]),
                                result.bitmap, payload=payload)
            if job["kind"] == "cron":
                cohorts.record_outcome(conn, cohort["id"], False, self.settings.backoff_base, self.settings.backoff_max)
            expired = expire_old_versions(conn, self.settings, cohort["id"])
        drop_bitmaps(self.redis, cohort["id"], expired)  # after the commit: a rolled-back prune keeps its bitmaps
        log.info("job=%s cohort=%s status=succeed count=%s published=%s", job["id"], job["cohort_id"], result.count,
                 is_newest)
        return outcome

    def _finish(self, job: dict, version_id, outcome: dict) -> dict:
        with db.connection(self.dsn) as conn:
            self._mark_succeeded(conn, outcome, version_id)
        log.info("job=%s status=succeed count=%s", job["id"], outcome.get("count"))
        return outcome

    def _mark_succeeded(self, conn, outcome: dict, version_id) -> None:
        """Set the job succeed in conn's transaction, or raise why this claim may not."""
        if jobs.succeed(conn, self.job_id, self.token, outcome, version_id):
            return
        state = jobs.lock_claimed(conn, self.job_id, self.token)
        if state is not None and state["cancel_requested"]:
            raise JobStopped("cancelled", "the job was cancelled on request")
        raise JobStopped("claim_lost", "the job ended elsewhere before it could be published")


