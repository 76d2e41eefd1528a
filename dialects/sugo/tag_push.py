"""Pushing a tag version to a Sugo hproxy as one column of a data source (docs/tags.md, docs/dialects/sugo.md).

The request names the hproxy (allowlisted as for /ant batch updates), the data source, the
primary column and the column; the job (`sugo.tagPush`) sends every user's value of the version
that was published when the push was asked for, 1000 rows a request, with the batch client.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from cohort_engine import db
from cohort_engine.bitmaps import to_bitmap
from cohort_engine.project import ProjectEngine
from cohort_engine.tag_column import TagColumn
from core.data import cohorts, jobs, sugo_targets, versions
from core.jobs.runner import JobRun, JobStopped
from dialects.sugo import schemas as dialect
from dialects.sugo.hproxy import HproxyClient, is_multi_value

KIND = "sugo.tagPush"


class TagPushSchema(Schema):
    hproxyUrl = fields.String(validate=validate.Length(min=1, max=2000))
    hproxy = fields.String(validate=validate.Length(min=1, max=2000))
    dataSource = fields.String(required=True, validate=validate.Regexp(r"^[\w.\-]{1,200}$", error=(
        "use 1-200 letters, digits, _ . -")))
    primaryColumn = fields.String(load_default=dialect.DEFAULT_PRIMARY_COLUMN, validate=validate.Length(min=1, max=200))
    column = fields.String(required=True, validate=validate.Length(min=1, max=200))

    @validates_schema
    def _columns(self, data, **kwargs):
        dialect._exactly_one(data, ("hproxyUrl", "hproxy"))
        if is_multi_value(data["column"]):
            raise ValidationError("a tag has one value a user: not a multi-value (m?_) column", "column")
        if data["column"] == data["primaryColumn"]:
            raise ValidationError("is the primary column; it takes each user's key", "column")


def check_hosts(data: dict, targets) -> None:
    """ValidationError naming the hproxy field when the project may not use its addresses (nothing contacted)."""
    dialect.check_hosts("tag_push", data, targets)


def cell(value):
    """A tag value as hproxy takes it: times as epoch milliseconds (Druid's time), the rest unchanged."""
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return value


def submit(conn, project: dict, tag: dict, version: dict, data: dict, settings) -> dict:
    """The push job for the tag's published version (uncommitted); the caller commits and sends it."""
    job, _ = jobs.insert(conn, project["id"], KIND, params={"tag_id": tag["id"], "version_id": version["id"],
                                                           "request": data}, max_attempts=settings.max_attempts)
    return job


def run_tag_push(run: JobRun, job: dict) -> dict:
    """Send the version's (key, value) rows to hproxy; hproxy's counts are the job's result."""
    params, project = job["params"], run.project
    with db.connection(run.dsn) as conn:
        tag = cohorts.get(conn, project["id"], params["tag_id"])
        payload = _payload(conn, params["version_id"], params["tag_id"])
        targets = dialect.targets_for(run.settings, sugo_targets.for_project(conn, project["id"]))
    if tag is None or tag["entity"] != "tag":
        raise JobStopped("cohort_deleted", f"tag {params['tag_id']} was deleted before its push ran")
    if payload is None:
        raise JobStopped("version_expired", f"version {params['version_id']} of tag {tag['id']} is no longer kept; "
                                            "push again to send the current one")
    request = params["request"]
    value = dialect.hproxy_of(request)[1]
    for host, port in dialect.hproxy_addresses(value):
        # Checked again: an address the operator removed since submit is refused.
        if not targets.hproxy_allowed(host, port):
            raise JobStopped("bad_request", f"hproxy {host}:{port} is not an allowed host")
    column = TagColumn.deserialize(payload)
    engine = ProjectEngine(run.settings.engine, project["name"], project_id=project["id"],
                           timezone=project["timezone"])
    uids = column.present()
    total_batches = max(1, -(-len(uids) // 1000))
    run.progress(0, total_batches + 1)

    def rows():
        for start in range(0, len(uids), 20000):
            chunk = uids[start:start + 20000]
            keys = list(engine.iter_keys(to_bitmap(chunk)))
            for key, cell_value in zip(keys, column.values_at(chunk), strict=True):
                yield {"values": {request["column"]: cell(cell_value), request["primaryColumn"]: key},
                       "appendFlags": {request["column"]: False}}

    with HproxyClient(value, request["dataSource"], retries=run.settings.sugo_hproxy_retries,
                      backoff_seconds=run.settings.sugo_hproxy_backoff) as client:
        answer = client.update(rows(), request["primaryColumn"],
                               on_batch=lambda done: run.progress(done, total_batches + 1))
    return run.finish(job, None, {**answer, "rows": len(uids), "tag_id": tag["id"], "version_id": params["version_id"]})


def _payload(conn, version_id: int, tag_id: int) -> bytes | None:
    version = versions.get(conn, version_id)
    return versions.payload(conn, version_id) if version is not None and version["cohort_id"] == tag_id else None


TAG_PUSH_BODY = {
    "type": "object", "required": ["dataSource", "column"], "additionalProperties": False,
    "description": "where to push: hproxyUrl (a URL) or hproxy (host:port list), allowlisted for the project",
    "properties": {"hproxyUrl": {"type": "string"}, "hproxy": {"type": "string"},
                   "dataSource": {"type": "string"}, "primaryColumn": {"type": "string"}, "column": {"type": "string"}},
}


def add_paths(spec, docs) -> None:
    """POST /api/v1/tags/{tag_id}/push/sugo into /openapi.json (the Sugo dialect registers it)."""
    spec.components.schema("TagPush", TAG_PUSH_BODY)
    spec.components.schema("TagPushAccepted", docs.object_schema("the push job", job={"type": "object"},
                                                                 version_id={"type": "integer"}))
    tag_id = {"name": "tag_id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}
    spec.path("/api/v1/tags/{tag_id}/push/sugo", operations={"post": docs.operation(
        "Push the tag's published version to a Sugo hproxy as one column (a job)",
        docs.responses("202", "TagPushAccepted", "push job queued", "409", body=True), [tag_id], body="TagPush",
        example={"hproxy": "127.0.0.1:8085", "dataSource": "users", "column": "s_level"})})
