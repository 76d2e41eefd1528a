"""The tag handler: compute a tag's values with the engine and publish them as a version (one store for every kind)."""

from __future__ import annotations

import logging

import numpy as np

from cohort_engine import bitmaps, db
from cohort_engine.tag_column import TagColumn
from cohort_engine.tag_definition import parse_tag_definition
from cohort_engine.tags import TagResult
from core.jobs.cohort import check_backend, leaf_loaders, project_engine, publish
from core.jobs.runner import JobRun, JobStopped
from core.services import imports

log = logging.getLogger(__name__)


def compute_tag(run: JobRun, job: dict) -> dict:
    """Compute the job's tag and publish its values as a version; the job's result."""
    project, tag = run.project, run.cohort
    definition = parse_tag_definition(tag["definition"])
    engine = project_engine(run)
    check_backend(run, engine)
    # An import tag's values: its stored upload matched to users now (docs/imports.md); the import
    # leaves of a values tag's trees read their uploads as a cohort's do.
    load_import_tag = imports.tag_loader(lambda: db.connection(run.dsn), engine, project)
    result = engine.compute_tag(definition, base_time=job["base_time"], progress=run.progress,
                                load_import_tag=load_import_tag, **leaf_loaders(run), on_cancel=run.on_cancel)
    return publish_column(run, job, result)


def publish_values(run: JobRun, job: dict, value_type: str, uids, values) -> dict:
    """Publish (uid -> value) as the job's tag's new version: unique uint32 uids, values aligned.

    values: numbers, times as int64 microseconds since the epoch (UTC), strings, booleans. The
    write path of every tag kind (import tags: the uploads code calls this with the matched rows).
    """
    uids = np.asarray(uids, dtype=np.uint32)
    order = np.argsort(uids, kind="stable")
    kept = np.asarray(values, dtype=object if value_type == "string" else None)
    column = TagColumn.from_values(value_type, uids[order], kept[order])
    return publish_column(run, job, TagResult(column, []))


def publish_column(run: JobRun, job: dict, result: TagResult) -> dict:
    """Publish the column under the version guard (written under a key of this attempt)."""
    tag, project = run.cohort, run.project
    if result.column.value_type != tag["value_type"]:
        raise JobStopped("type_mismatch", f"the tag is of type {tag['value_type']} but its values are "
                                          f"{result.column.value_type}; save the tag again")
    payload, meta = result.column.serialize()
    # One key per attempt: a stale earlier claim finishing late cannot overwrite this one's payload.
    key = bitmaps.cohort_key(run.settings.engine.key_prefix, project["id"], tag["id"], f"j{job['id']}a{job['attempts']}")
    try:
        outcome = publish(run, job, tag["definition_version"], key, result, payload, tag_meta=meta)
    except BaseException:
        run.redis.delete(key)  # no version row will name it
        raise
    log.info("job=%s tag=%s value_type=%s count=%s bytes=%s", job["id"], tag["id"], tag["value_type"],
             result.count, len(payload))
    return outcome
