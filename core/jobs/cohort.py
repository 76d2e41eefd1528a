"""The cohort handler: compute a cohort's definition with the engine and publish it under the version guard."""

from __future__ import annotations

import logging

from pyroaring import BitMap

from cohort_engine import bitmaps, db
from cohort_engine.definition import parse_definition
from cohort_engine.project import ProjectEngine
from core import webhooks
from core.data import cohorts, versions
from core.jobs.retention import drop_bitmaps, expire_old_versions
from core.jobs.runner import JobRun, JobStopped
from core.services import imports
from core.services.backends import outbound_problem

log = logging.getLogger(__name__)
# A job computing a definition for POST /api/v1/cohorts/preview: no cohort, its result holds a sample of keys.
PREVIEW_KIND = "preview"


def compute_cohort(run: JobRun, job: dict) -> dict:
    """Compute the job's cohort (or, for a job without one, its params' definition); its result."""
    project, cohort = run.project, run.cohort
    if job["cohort_id"] and cohort is None:
        raise JobStopped("cohort_deleted", "the cohort was deleted before its job ran")
    if cohort is not None and cohort["entity"] == "tag":
        from core.jobs.tag import compute_tag  # the tag handler builds on this module (publish)

        return compute_tag(run, job)
    definition = cohort["definition"] if cohort else job["params"]["definition"]
    definition_version = cohort["definition_version"] if cohort else 0
    engine = project_engine(run)
    check_backend(run, engine)
    prefix = run.settings.engine.key_prefix
    result = engine.compute(parse_definition(definition), base_time=job["base_time"], progress=run.progress,
                            **leaf_loaders(run), on_cancel=run.on_cancel)
    if cohort is None:
        outcome = {"count": result.count, **({"imports": result.imports} if result.imports else {})}
        if job["kind"] == PREVIEW_KIND:
            # The smallest ids: a stable sample (the first users the dictionary saw).
            outcome["sample"] = list(engine.iter_keys(result.bitmap[:job["params"].get("sample", 10)]))
        return run.finish(job, None, outcome)
    # One key per attempt: a stale earlier claim finishing late cannot overwrite this one's bitmap.
    version_key = bitmaps.cohort_key(prefix, project["id"], cohort["id"], f"j{job['id']}a{job['attempts']}")
    payload = result.bitmap.serialize()
    try:
        return publish(run, job, definition_version, version_key, result, payload)
    except BaseException:
        run.redis.delete(version_key)  # no version row will name it
        raise


def project_engine(run: JobRun) -> ProjectEngine:
    """The engine of the run's project, with the backend setting the claim loaded (no query of its own)."""
    project = run.project
    backend = (project["backend"] or {"kind": "embedded"}) if "backend" in project else None
    return ProjectEngine(run.settings.engine, project["name"], project_id=project["id"], timezone=project["timezone"],
                         backend=backend)


def check_backend(run: JobRun, engine: ProjectEngine) -> None:
    """JobStopped not_allowed if the project's backend names an address the project may no longer contact."""
    if not engine.backend.outbound():
        return
    # Checked at every run: an address allowed when the setting was written may have been denied since.
    with db.connection(run.dsn) as conn:
        problem = outbound_problem(conn, run.settings, engine)
    if problem:
        raise JobStopped("not_allowed", f"{problem}; nothing was contacted")


def leaf_loaders(run: JobRun) -> dict:
    """load_cohort, load_import and load_tag: what the cohort, import and tag leaves of a tree read (cohorts and tags)."""
    prefix, project_id = run.settings.engine.key_prefix, run.project["id"]

    def load_cohort(cohort_id: int):
        return bitmaps.load_cached(run.redis, bitmaps.cohort_key(prefix, project_id, cohort_id),
                                   lambda: durable_bitmap(run, cohort_id))

    return {"load_cohort": load_cohort, "load_tag": tag_loader(run),
            "load_import": imports.loader(lambda: db.connection(run.dsn), project_id, run.settings)}


def tag_loader(run: JobRun):
    """load_tag(tag_id) for tag leaves: the tag's published column (Redis cache, else the durable copy)."""
    from cohort_engine.tag_column import TagColumn

    prefix = run.settings.engine.key_prefix

    def load_tag(tag_id: int):
        payload = bitmaps.load_cached_payload(run.redis, bitmaps.cohort_key(prefix, run.project["id"], tag_id),
                                              lambda: durable_bitmap(run, tag_id))
        return None if payload is None else TagColumn.deserialize(payload)

    return load_tag


def durable_bitmap(run: JobRun, cohort_id: int) -> bytes | None:
    """A referenced cohort's published bitmap from PostgreSQL (a Redis miss: Redis lost it)."""
    with db.connection(run.dsn) as conn:
        cohort = cohorts.get_any(conn, cohort_id)
        # Only a cohort of this job's project: the Redis key it replaces is project-scoped too.
        if cohort is None or cohort["project_id"] != run.project["id"]:
            return None
        return versions.published_bitmap(conn, cohort_id)


def publish(run: JobRun, job: dict, definition_version: int, version_key: str, result, payload: bytes,
            tag_meta: dict | None = None) -> dict:
    """Record the version, mark the job succeed and, if it is the newest, publish it: one transaction.

    result has count and timings; payload is the version's bytes (a cohort's bitmap, a tag's column,
    whose layout and distribution are tag_meta), written under version_key here (and under the
    cohort's key when it is the newest) in one Redis round trip before the commit.
    """
    settings = run.settings
    prefix = settings.engine.key_prefix
    with db.connection(run.dsn) as conn:
        # The cohort row lock orders publishers: an older run never overwrites a newer version. The
        # same statement tells what is published, how many bitmaps are kept and whether any webhook
        # may listen, so a trivial job pays no round trip for what it has not got.
        locked = cohorts.lock_for_publish(conn, job["cohort_id"])
        if locked is None:
            raise JobStopped("cohort_deleted", "the cohort was deleted while its job ran")
        cohort, facts = locked
        if cohort["definition_version"] != definition_version:
            raise JobStopped("superseded", "the cohort's definition changed while this job ran; "
                                           "the job for the new definition publishes instead")
        leaves = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()} for t in result.timings]
        latest = facts["latest"]
        is_newest = latest is None or (latest["definition_version"], latest["base_time"]) <= (
            definition_version, job["base_time"])
        change = None
        if is_newest:
            # A tag version's payload is a value column: its change is a distribution diff (history.py).
            change = (change_of(conn, latest, result.bitmap) if cohort["entity"] == "cohort"
                      else (latest and latest["id"], None, None))
        # The durable copy commits with the version row: a version that exists survives Redis.
        version = versions.insert_succeeded(conn, cohort["id"], definition_version, job["base_time"],
                                            result.count, version_key, tag_meta, job=job, timings=leaves,
                                            payload=payload, change=change)
        outcome = {"count": result.count, "version_id": version["id"], "published": is_newest, "leaves": leaves}
        if getattr(result, "imports", None):  # a cohort's import leaves (a TagResult has none)
            outcome["imports"] = result.imports
        # Also locks the job row, so the reaper cannot take the job before this commits.
        run.mark_succeeded(conn, outcome, version["id"])
        # One key per attempt, and the cohort's own key when this is the newest; before the commit,
        # so a committed version always has its bitmap (and a failed commit deletes the version key).
        keys = [version_key] + ([bitmaps.cohort_key(prefix, cohort["project_id"], cohort["id"])] if is_newest else [])
        bitmaps.store(run.redis, keys, payload)
        deliveries = []
        if is_newest:
            cohorts.set_latest_version(conn, cohort["id"], version["id"])
            if facts["hooked"]:
                deliveries = webhooks.record(conn, cohort, "version.published", version=version, job=job,
                                             project=run.project)
        if job["kind"] == "cron":
            cohorts.record_outcome(conn, cohort["id"], False, settings.backoff_base, settings.backoff_max)
        # Nothing to prune while the kept bitmaps (this one included) fit COHORTS_KEEP_VERSIONS.
        expired = expire_old_versions(conn, settings, cohort["id"]) if facts["kept"] + 1 > settings.keep_versions else []
    drop_bitmaps(run.redis, cohort["id"], expired)  # after the commit: a rolled-back prune keeps its bitmaps
    webhooks.send(run.sender, deliveries)  # after the commit, as jobs are (core/queue.py)
    log.info("job=%s cohort=%s status=succeed count=%s published=%s", job["id"], job["cohort_id"], result.count,
             is_newest)
    return outcome


def change_of(conn, previous: dict | None, bitmap) -> tuple:
    """(previous version id, entered, left) against the previously published version (everyone entered a first one).

    All None when the previous version has no durable bitmap (from before durable bitmaps).
    """
    if previous is None:
        return None, len(bitmap), 0
    payload = versions.bitmap_of(conn, previous["id"])
    if payload is None:
        return None, None, None  # a version from before durable bitmaps: nothing to compare with
    before = BitMap.deserialize(payload)
    return previous["id"], bitmap.difference_cardinality(before), before.difference_cardinality(bitmap)
