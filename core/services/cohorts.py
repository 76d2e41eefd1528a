"""The cohort commands every API calls: create, update, refresh, execute partitions, delete.

One CohortService acts for one project inside one transaction of its connection; it raises the
domain errors of core/errors.py (and the engine's DefinitionError), which each web layer maps to
its status codes and shapes. The caller decides the order of its own checks (what it answers
first), so the checks are separate methods; writes end with commit_and_enqueue, which commits
before sending, so a worker never picks up a job it cannot see yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from cohort_engine import bitmaps
from cohort_engine.definition import MAX_COHORT_ID, check_no_cycle
from core.crons import daily_cron
from core.data import cohorts, jobs, versions
from core.errors import Conflict, DuplicateName, Forbidden, NotFound
from core.queue import submit_cohort_job, time_partition
from core.services import imports
from core.services.references import check_leaf_targets

log = logging.getLogger(__name__)

SETTING_FIELDS = cohorts.SETTING_COLUMNS


@dataclass
class CohortService:
    """The cohort commands of one project (a projects row) on conn; the caller commits only through it."""

    conn: Any
    project: dict
    settings: Any
    # Raises if the job broker does not answer, so that nothing is written that cannot be sent.
    check_broker: Callable[[], None] = field(default=lambda: None, kw_only=True)
    # Sends committed jobs to the workers (core.queue.enqueue with the caller's sender).
    send: Callable[[list[dict]], None] = field(default=lambda created: None, kw_only=True)
    # The Redis client of the cohort bitmaps (called only by delete).
    redis: Callable[[], Any] | None = field(default=None, kw_only=True)
    # What the API calls a cohort in its messages ("cohort", Sensors' "rule").
    noun: str = field(default="cohort", kw_only=True)
    # The rows this service acts on: cohorts, or tags (core/services/tags.py; one table, docs/tags.md).
    entity: str = field(default="cohort", kw_only=True)

    # -- reads and checks -----------------------------------------------------------------------------

    def get(self, cohort_id: int, *, lock: bool = False, dialect: str | None = None, noun: str | None = None,
            field: str | None = None) -> dict:
        """The project's cohort (of that dialect, when named), or NotFound (naming field, when given)."""
        cohort = cohorts.get(self.conn, self.project["id"], cohort_id, lock=lock) if cohort_id <= MAX_COHORT_ID else None
        if cohort is None or cohort["entity"] != self.entity or (dialect is not None and cohort["dialect"] != dialect):
            noun = noun or self.noun
            raise NotFound(f"{noun} {cohort_id} not found", {field: [f"no such {noun}"]} if field else None)
        return cohort

    def check_project(self, named: str | None) -> None:
        """Forbidden when a body names another project than the credentials'."""
        if named not in (None, self.project["name"]):
            raise Forbidden(f"the token belongs to project {self.project['name']!r}, not {named!r}")

    def check_definition(self, cohort_id: int | None, definition: dict) -> None:
        """Before writing a (new) definition: no cohort cycle (DefinitionError), imports it may read, the broker answers."""
        project_id = self.project["id"]
        check_no_cycle(cohort_id, definition, lambda ref: cohorts.definition_of(self.conn, project_id, ref))
        imports.check_imports(self.conn, self.project, self.settings, definition)
        check_leaf_targets(self.conn, project_id, definition)
        self.check_broker()

    def references(self, cohort_id: int) -> list[int]:
        """Ids of the project's other cohorts whose definitions refer to this one."""
        return cohorts.referencing(self.conn, self.project["id"], cohort_id)

    # -- writes ---------------------------------------------------------------------------------------

    def create(self, name: str, definition: dict, *, dialect: str = "native", request_body=None,
               display_name=None, dynamic: bool = False, cron=None, scheduler_running: bool = False,
               owner=None, daily_refresh: bool = False, value_type=None) -> dict:
        """Check the definition and insert the cohort (uncommitted); DuplicateName if the name is taken.

        daily_refresh: recompute it every day at the project's daily refresh time (overrides cron and
        makes it dynamic and running); `core.manage set-refresh-time` moves such cohorts along.
        value_type: a tag's (TagService).
        """
        self.check_definition(None, definition)
        if daily_refresh:
            dynamic, cron, scheduler_running = True, daily_cron(self.project), True
        try:
            return cohorts.insert(self.conn, self.project["id"], name, definition, display_name=display_name,
                                  dialect=dialect, request_body=request_body, dynamic=dynamic, cron=cron,
                                  scheduler_running=scheduler_running, owner=owner, daily_refresh=daily_refresh,
                                  entity=self.entity, value_type=value_type)
        except psycopg2.errors.UniqueViolation:
            raise DuplicateName(name) from None

    def update(self, cohort: dict, definition: dict, request_body, fields: dict, *, restart_schedule: bool = False,
               check: bool = True) -> dict:
        """Write fields (of SETTING_FIELDS) and, if it differs, the definition (a new definition_version).

        check: check a changed definition first (False when the caller checked it already).
        restart_schedule: a new or resumed cron fires from now on, not for the fires it missed.
        """
        if cohort.get("daily_refresh") and "cron" in fields and fields["cron"] != cohort["cron"]:
            fields = {**fields, "daily_refresh": False}  # a cron set by hand stops following the daily time
        redefine = definition != cohort["definition"]
        if redefine and check:
            self.check_definition(cohort["id"], definition)
        try:
            if redefine:
                cohort = cohorts.update_definition(self.conn, cohort["id"], definition, request_body, **fields)
            else:
                cohort = cohorts.update_settings(self.conn, cohort["id"], request_body, **fields)
        except psycopg2.errors.UniqueViolation:
            raise DuplicateName(fields.get("name", cohort["name"])) from None
        if restart_schedule:
            cohorts.record_fire(self.conn, cohort["id"], cohort["updated_at"])
        return cohort

    def submit(self, cohort: dict, kind: str, base_time=None, *, supersede: bool = False) -> tuple[dict, bool]:
        """A job computing the cohort (its base_time partition, if given), or the partition's live job.

        supersede: a live job of an older definition is cancelled and ended `superseded` first.
        """
        partition_key = "latest" if base_time is None else time_partition(base_time)
        if supersede:
            live = jobs.live_for(self.conn, cohort["id"], partition_key)
            if live is not None and live["params"].get("definition_version") != cohort["definition_version"]:
                jobs.request_cancel(self.conn, live["id"])
                jobs.fail(self.conn, live["id"], "superseded",
                          f"the {self.noun}'s definition changed; a new job computes it")
        return submit_cohort_job(self.conn, cohort, kind, base_time=base_time, partition_key=partition_key,
                                 max_attempts=self.settings.max_attempts)

    def commit_and_enqueue(self, submitted: list[tuple[dict, bool]]) -> None:
        """Commit, then send the jobs that submit created (a joined live job is on its way already)."""
        self.conn.commit()
        created = [job for job, is_new in submitted if is_new]
        if created:
            self.send(created)

    def refresh(self, cohort_id: int) -> tuple[dict, bool]:
        """Recompute the cohort now (coalesced with its live job); committed and sent."""
        self.check_broker()
        submitted = self.submit(self.get(cohort_id), "refresh")
        self.commit_and_enqueue([submitted])
        return submitted

    def execute_partitions(self, targets: list[tuple[dict, list]]) -> list[dict]:
        """Compute each (cohort, base times) partition (coalesced with its live job); committed and sent."""
        self.check_broker()
        submitted = [self.submit(cohort, "execute", base_time) for cohort, base_times in targets
                     for base_time in base_times]
        self.commit_and_enqueue(submitted)
        return [job for job, _ in submitted]

    def delete(self, cohort: dict) -> None:
        """Delete a (locked) cohort's rows (versions and jobs cascade), commit, then its Redis bitmaps.

        Conflict while other cohorts of the project refer to it.
        """
        users = self.references(cohort["id"])
        if users:
            raise Conflict(f"cohorts or tags {users} refer to this {self.noun}; change or delete them first")
        keys = versions.bitmap_keys(self.conn, cohort["id"])
        keys.append(bitmaps.cohort_key(self.settings.engine.key_prefix, self.project["id"], cohort["id"]))
        cohorts.delete(self.conn, self.project["id"], cohort["id"])
        self.conn.commit()
        self.redis().delete(*keys)
        log.info("cohort=%s project=%s deleted", cohort["id"], self.project["id"])
