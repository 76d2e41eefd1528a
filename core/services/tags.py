"""The tag commands and reads: the cohort service's machinery (jobs, versions, cron, retention) on tag rows.

A tag is a row of the cohorts table with entity 'tag' (docs/tags.md), so create / update /
submit / refresh / delete are CohortService's; this adds what is a tag's own: the value type
fixed at save, and the reads of its published version (distribution, one user's value, rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from cohort_engine import bitmaps
from cohort_engine.errors import EngineError
from cohort_engine.project import ProjectEngine
from cohort_engine.tag_column import CATEGORICAL, TagColumn, cell_value, read_layout
from cohort_engine.tag_definition import BUILTIN_COLUMNS
from core.data import jobs, versions
from core.errors import Conflict, Invalid
from core.services.cohorts import CohortService


def render(value, tz: ZoneInfo):
    """A typed tag value as the API shows it: times as ISO 8601 in the project's zone, the rest as JSON."""
    if isinstance(value, datetime):
        return value.astimezone(tz).isoformat()
    return value


def render_text(value, tz: ZoneInfo) -> str:
    """A value as one CSV cell's text (booleans true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(render(value, tz))


@dataclass
class TagService(CohortService):
    """The tag commands of one project; everything not here is CohortService's, acting on tag rows."""

    noun: str = field(default="tag", kw_only=True)
    entity: str = field(default="tag", kw_only=True)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.project["timezone"])

    def engine(self) -> ProjectEngine:
        return ProjectEngine(self.settings.engine, self.project["name"], project_id=self.project["id"],
                             timezone=self.project["timezone"])

    # -- writes ---------------------------------------------------------------------------------------

    def typed(self, definition: dict) -> dict:
        """The definition with its `type` filled in (a first_last takes its property's stored type)."""
        if definition.get("type") or definition["kind"] != "first_last":
            return definition
        prop = definition["property"]
        try:
            session = self.engine().open_session()
            try:
                columns = session.columns()["event"]
            finally:
                session.close()
        except EngineError as exc:
            raise Invalid({"definition.property": [f"the project's event columns cannot be read: {exc}"]}) from None
        if prop not in columns and prop not in BUILTIN_COLUMNS:
            known = ", ".join(sorted(columns)) or "none"
            raise Invalid({"definition.property": [f"event property {prop!r} does not exist (known: {known})"]})
        return {**definition, "type": columns.get(prop, BUILTIN_COLUMNS.get(prop))}

    def create_tag(self, name: str, definition: dict, **fields) -> dict:
        """Insert the tag (uncommitted) with its definition typed; the rest as CohortService.create."""
        definition = self.typed(definition)
        return self.create(name, definition, value_type=definition["type"], **fields)

    def update(self, cohort: dict, definition: dict, request_body, fields: dict, **kwargs) -> dict:
        """As CohortService.update; a changed definition may change the value type (a new definition_version)."""
        definition = self.typed(definition)
        if definition != cohort["definition"]:
            fields = {**fields, "value_type": definition["type"]}
        return super().update(cohort, definition, request_body, fields, **kwargs)

    def cancel_live(self, tag: dict) -> dict:
        """Ask the tag's live job to stop (a job not started yet ends now); Conflict when none runs."""
        job = jobs.live_for(self.conn, tag["id"])
        if job is None:
            raise Conflict(f"tag {tag['id']} has no job running")
        jobs.request_cancel(self.conn, job["id"])
        if job["status"] == "new":
            jobs.fail(self.conn, job["id"], "cancelled", "the job was cancelled on request before it started")
        self.conn.commit()
        return jobs.get(self.conn, job["id"])

    # -- reads ----------------------------------------------------------------------------------------

    def published(self, tag: dict) -> dict:
        """The tag's published version (with tag_meta); Conflict saying what to do when it has none."""
        version = versions.published_tag(self.conn, tag["id"])
        if version is None:
            raise Conflict(f"tag {tag['id']} has no computed version yet; {self._next_step(tag['id'])}")
        return version

    def _next_step(self, tag_id: int) -> str:
        latest = jobs.list_page(self.conn, self.project["id"], cohort_id=tag_id, limit=1)
        if latest and latest[0]["status"] == "failed":
            job = latest[0]
            return (f"its last job {job['id']} failed ({job['error_code']}: {job['error_message']}); "
                    f"POST /api/v1/tags/{tag_id}/refresh once the cause is fixed")
        if latest:
            return f"poll job {latest[0]['id']} (GET /api/v1/jobs/{latest[0]['id']}) until it succeeds"
        return f"POST /api/v1/tags/{tag_id}/refresh to compute it"

    def distribution(self, tag: dict) -> dict:
        """value -> user count (or a histogram), computed when the version was published: no payload read."""
        version = self.published(tag)
        found = dict(version["tag_meta"]["distribution"])
        found["version_id"] = version["id"]
        return found

    def value_of(self, tag: dict, user_key: str):
        """(version, the user's value or None): one fixed-size cell read from the durable payload."""
        version = self.published(tag)
        uid = self.engine().lookup(user_key)
        try:
            return version, value_at(self.conn, version, uid)
        except LookupError:
            raise Conflict(f"tag {tag['id']}'s published version lost its payload; "
                           f"POST /api/v1/tags/{tag['id']}/refresh") from None

    def column(self, tag: dict) -> tuple[dict, TagColumn]:
        """(version, the whole published column), from the Redis cache or the durable copy."""
        version = self.published(tag)
        key = bitmaps.cohort_key(self.settings.engine.key_prefix, self.project["id"], tag["id"])
        payload = bitmaps.load_cached_payload(self.redis(), key, lambda: versions.published_bitmap(self.conn, tag["id"]))
        if payload is None:
            raise Conflict(f"tag {tag['id']}'s published version lost its payload; POST /api/v1/tags/{tag['id']}/refresh")
        column = TagColumn.deserialize(payload)
        if read_layout(payload[:4096]) != version["tag_meta"]["layout"]:
            # The cache is a moment behind the version row (a publish in between): read the durable copy.
            column = TagColumn.deserialize(versions.published_bitmap(self.conn, tag["id"]))
        return version, column

    def selected(self, column: TagColumn, values: list | None, low=None, high=None) -> np.ndarray:
        """The uids with a value, narrowed to values (eq) and/or low <= value < high; DefinitionError for bad ones."""
        uids = column.present()
        base = datetime.now(self.tz)
        try:
            if values:
                uids = np.intersect1d(uids, np.asarray(column.select("eq", values, self.tz, base).to_array()))
            if low is not None:
                uids = np.intersect1d(uids, np.asarray(column.select("gte", [low], self.tz, base).to_array()))
            if high is not None:
                uids = np.intersect1d(uids, np.asarray(column.select("lt", [high], self.tz, base).to_array()))
        except EngineError as exc:
            raise Invalid({"value": [str(exc)]}) from None
        return uids.astype(np.uint32)

    def rows(self, column: TagColumn, uids: np.ndarray, batch: int = 20000) -> Iterator[tuple[str, object]]:
        """(user key, value) for the uids, in uid order, decoded a batch at a time."""
        engine = self.engine()
        for start in range(0, len(uids), batch):
            chunk = uids[start:start + batch]
            keys = list(engine.iter_keys(bitmaps.to_bitmap(chunk), batch=batch))
            yield from zip(keys, column.values_at(chunk), strict=True)


def value_at(conn, version: dict, uid: int | None):
    """The value of uid in a tag version (None: no value), reading only its cell (and label) from PostgreSQL.

    LookupError when the version's payload is gone (expired).
    """
    meta = version["tag_meta"]
    layout = meta["layout"]
    if uid is None or uid >= layout["length"]:
        return None

    def read(offset: int, length: int) -> bytes:
        raw = versions.payload_range(conn, version["id"], offset, length)
        if raw is None:
            raise LookupError(version["id"])
        return raw

    dtype = np.dtype(layout["dtype"])
    cell = np.frombuffer(read(layout["column_offset"] + uid * dtype.itemsize, dtype.itemsize), dtype=dtype)[0]
    if layout["type"] not in CATEGORICAL:
        return cell_value(cell, layout["type"], None)
    code = int(cell)
    if code < 0:
        return None
    labels = meta.get("labels")
    if labels is not None:
        return labels[code]
    # Many labels (not listed in the meta): the label's two offsets, then its bytes.
    low, high = np.frombuffer(read(layout["offsets_offset"] + code * 8, 16), dtype=np.uint64).tolist()
    text = read(layout["labels_offset"] + low, high - low).decode() if high > low else ""
    return (text == "true") if layout["type"] == "boolean" else text
