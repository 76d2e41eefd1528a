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
    engine = ProjectEngine(run.settings.engine, project["name"], project_id=project["id"],
                           timezone=project["timezone"])
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
    payload = bitmaps.publish(run.redis, version_key, result.bitmap)
    try:
        return publish(run, job, definition_version, version_key, result, payload)
    except BaseException:
        run.redis.delete(version_key)  # no version row will name it
        raise


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
    whose layout and distribution are tag_meta).
    """
    settings = run.settings
    prefix = settings.engine.key_prefix
    with db.connection(run.dsn) as conn:
        # The cohort row lock orders publishers: an older run never overwrites a newer version.
        cohort = cohorts.get_any(conn, job["cohort_id"], lock=True)
        if cohort is None:
            raise JobStopped("cohort_deleted", "the cohort was deleted while its job ran")
        if cohort["definition_version"] != definition_version:
            raise JobStopped("superseded", "the cohort's definition changed while this job ran; "
                                           "the job for the new definition publishes instead")
        leaves = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()} for t in result.timings]
        version = versions.insert_succeeded(conn, cohort["id"], definition_version, job["base_time"],
                                            result.count, version_key, tag_meta, job=job, timings=leaves)
        # The durable copy commits with the version row: a version that exists survives Redis.
        versions.store_bitmap(conn, version["id"], payload)
        latest = versions.get(conn, cohort["latest_version_id"])
        is_newest = latest is None or (latest["definition_version"], latest["base_time"]) <= (
            definition_version, job["base_time"])
        outcome = {"count": result.count, "version_id": version["id"], "published": is_newest, "leaves": leaves}
        if getattr(result, "imports", None):  # a cohort's import leaves (a TagResult has none)
            outcome["imports"] = result.imports
        # Also locks the job row, so the reaper cannot take the job before this commits.
        run.mark_succeeded(conn, outcome, version["id"])
        deliveries = []
        if is_newest:
            if cohort["entity"] == "cohort":
                version = record_change(conn, version, latest, result.bitmap)
            else:  # a tag version's payload is a value column: its change is a distribution diff (history.py)
                versions.set_change(conn, version["id"], latest and latest["id"], None, None)
                version = {**version, "previous_version_id": latest and latest["id"]}
            cohorts.set_latest_version(conn, cohort["id"], version["id"])
            bitmaps.publish(run.redis, bitmaps.cohort_key(prefix, cohort["project_id"], cohort["id"]),
                            None, payload=payload)
            deliveries = webhooks.record(conn, cohort, "version.published", version=version, job=job,
                                         project=run.project)
        if job["kind"] == "cron":
            cohorts.record_outcome(conn, cohort["id"], False, settings.backoff_base, settings.backoff_max)
        expired = expire_old_versions(conn, settings, cohort["id"])
    drop_bitmaps(run.redis, cohort["id"], expired)  # after the commit: a rolled-back prune keeps its bitmaps
    webhooks.send(run.sender, deliveries)  # after the commit, as jobs are (core/queue.py)
    log.info("job=%s cohort=%s status=succeed count=%s published=%s", job["id"], job["cohort_id"], result.count,
             is_newest)
    return outcome


def record_change(conn, version: dict, previous: dict | None, bitmap) -> dict:
    """Count who entered and left against the previously published version (everyone entered a first one)."""
    if previous is None:
        entered, left = len(bitmap), 0
    else:
        payload = versions.bitmap_of(conn, previous["id"])
        if payload is None:
            return version  # a version from before durable bitmaps: nothing to compare with
        before = BitMap.deserialize(payload)
        entered, left = bitmap.difference_cardinality(before), before.difference_cardinality(bitmap)
    versions.set_change(conn, version["id"], previous and previous["id"], entered, left)
    return {**version, "previous_version_id": previous and previous["id"], "entered_count": entered,
            "left_count": left}
