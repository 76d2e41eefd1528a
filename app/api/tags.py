"""Native REST API for tags, /api/v1/tags: CRUD, refresh, cancel, distribution and values (docs/tags.md)."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from app.api.native import change_cohort, cohort_view, json_body
from app.auth import require_project
from app.db import check_broker, get_db, get_redis, settings
from app.errors import ApiError
from app.input_rules import user_key_arg
from app.schemas import EDITABLE
from app.services import send_jobs
from app.tag_schemas import TagCreateSchema, TagListQuery, TagPatchSchema, TagUpdateSchema, TagValuesQuery
from cohort_engine.definition import MAX_USER_KEY
from core.data import cohorts, jobs
from core.services.tags import TagService, render, render_text

bp = Blueprint("tags", __name__, url_prefix="/api/v1")


def tag_service() -> TagService:
    """The tag commands for the request's project."""
    return TagService(get_db(), g.project, settings(), check_broker=check_broker, send=send_jobs, redis=get_redis)


def tag_view(tag: dict) -> dict:
    return {**cohort_view(tag), "value_type": tag["value_type"]}


@bp.post("/tags")
@require_project
def create_tag():
    data = TagCreateSchema().load(json_body())
    service = tag_service()
    service.check_project(data["project"])
    tag = service.create_tag(data["name"], data["definition"], display_name=data["display_name"],
                             request_body=request.get_json(), dynamic=data["dynamic"], cron=data["cron"],
                             scheduler_running=data["dynamic"], owner=data["owner"])
    submitted = service.submit(tag, "create")
    service.commit_and_enqueue([submitted])
    return jsonify({"tag": tag_view(tag), "job": jobs.public(submitted[0])}), 202


@bp.get("/tags")
@require_project
def list_tags():
    query = TagListQuery().load(request.args)
    total, rows = cohorts.list_page(get_db(), g.project["id"], status=query["status"], limit=query["per_page"],
                                    offset=(query["page"] - 1) * query["per_page"], entity="tag")
    return jsonify({"total": total, "page": query["page"], "per_page": query["per_page"],
                    "tags": [tag_view(t) for t in rows]})


@bp.get("/tags/<int:tag_id>")
@require_project
def get_tag(tag_id):
    return jsonify(tag_view(tag_service().get(tag_id)))


def _change(tag_id: int, data: dict, body: dict | None):
    service = tag_service()
    if "definition" in data:
        # Typed first, so an unchanged first_last (its type filled in at save) is not a new definition.
        data = {**data, "definition": service.typed(data["definition"])}
    return change_cohort(tag_id, data, body, service=service, view=tag_view, key="tag")


@bp.put("/tags/<int:tag_id>")
@require_project
def replace_tag(tag_id):
    body = json_body()
    return _change(tag_id, TagUpdateSchema().load(body), body)


@bp.patch("/tags/<int:tag_id>")
@require_project
def patch_tag(tag_id):
    data = TagPatchSchema().load(json_body())
    if not set(data) & set(EDITABLE):
        raise ApiError(400, "name at least one field to change", errors={"_body": [
            "name at least one of: " + ", ".join(EDITABLE)]})
    return _change(tag_id, data, None)


@bp.delete("/tags/<int:tag_id>")
@require_project
def delete_tag(tag_id):
    service = tag_service()
    service.delete(service.get(tag_id, lock=True))
    return jsonify({"deleted": tag_id})


@bp.post("/tags/<int:tag_id>/refresh")
@require_project
def refresh_tag(tag_id):
    job, created = tag_service().refresh(tag_id)
    return jsonify({"job": jobs.public(job), "coalesced": not created}), 202


@bp.post("/tags/<int:tag_id>/cancel")
@require_project
def cancel_tag(tag_id):
    service = tag_service()
    return jsonify(jobs.public(service.cancel_live(service.get(tag_id)))), 202


@bp.get("/tags/<int:tag_id>/distribution")
@require_project
def distribution(tag_id):
    service = tag_service()
    tag = service.get(tag_id)
    found = service.distribution(tag)
    return jsonify({**shown(found, tag["value_type"], service.tz), "value_type": tag["value_type"]})


def shown(distribution: dict, value_type: str, tz) -> dict:
    """A stored distribution (or part of one) with its values, bin bounds and min / max as the API shows them."""
    found = dict(distribution)
    if "values" in found:
        found["values"] = [{**entry, "value": render(_typed(entry["value"], value_type), tz)}
                           for entry in found["values"]]
    if "bins" in found:
        found["bins"] = [{**entry, **{k: render(_typed(entry[k], value_type), tz) for k in ("low", "high")}}
                         for entry in found["bins"]]
    for bound in ("min", "max"):
        if bound in found:
            found[bound] = render(_typed(found[bound], value_type), tz)
    return found


def _typed(value, value_type: str):
    # Distributions keep times as ISO text in UTC (JSON); shown in the project's zone.
    if value_type == "time" and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


@bp.get("/tags/<int:tag_id>/values")
@require_project
def list_values(tag_id):
    # `value` may repeat; every other parameter is read once.
    query = TagValuesQuery().load({**request.args.to_dict(), "value": request.args.getlist("value")})
    service = tag_service()
    tag = service.get(tag_id)
    version, column = service.column(tag)
    uids = service.selected(column, query["value"], query["min"], query["max"])
    tz = service.tz
    if query["format"] == "json":
        start = (query["page"] - 1) * query["per_page"]
        page = uids[start:start + query["per_page"]]
        return jsonify({"total": len(uids), "page": query["page"], "per_page": query["per_page"],
                        "value_type": tag["value_type"], "version_id": version["id"],
                        "values": [{"key": k, "value": render(v, tz)} for k, v in service.rows(column, page)]})

    def lines():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["key", "value"])
        for n, (key, value) in enumerate(service.rows(column, uids), start=1):
            writer.writerow([key, render_text(value, tz)])
            if n % 5000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(stream_with_context(lines()), mimetype="text/csv",
                    headers={"X-Total-Count": str(len(uids)), "X-Tag-Version": str(version["id"]),
                             "X-Value-Type": tag["value_type"]})


@bp.get("/tags/<int:tag_id>/values/<path:user_key>")
@require_project
def user_value(tag_id, user_key):
    service = tag_service()
    tag = service.get(tag_id)
    version, value = service.value_of(tag, user_key_arg(user_key))
    return jsonify({"key": user_key, "value": render(value, service.tz), "value_type": tag["value_type"],
                    "version_id": version["id"]})


# -- /openapi.json ---------------------------------------------------------------------------------

EXAMPLE_TAG = {"name": "spend_30d", "display_name": "Spend in the last 30 days", "definition": {
    "kind": "metric", "event": "pay", "agg": {"fn": "count"}, "window": {"last": 30},
    "buckets": [{"label": "none", "high": 1}, {"label": "some", "low": 1, "high": 5}, {"label": "many", "low": 5}]}}
EXAMPLE_PUT = {**EXAMPLE_TAG, "dynamic": True, "cron": "0 3 * * *", "owner": None}


def add_paths(spec, docs) -> None:
    """The tag paths into the apispec spec (called by app/api/docs.py; docs gives operation, responses)."""
    from app import tag_schemas as schemas

    for name in ("TagCreate", "TagUpdate", "TagPatch", "Tag", "TagWithJob", "TagPage", "TagValuesPage",
                 "TagUserValue", "Distribution"):
        spec.components.schema(name, schema=getattr(schemas, name + "Schema"))
    tag_id = {"name": "tag_id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}
    user_key = {"name": "user_key", "in": "path", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER_KEY, "pattern": "^[^\\x00/]+$"}}
    change = docs.responses("202", "TagWithJob", "updated; the job computes the new definition", "403", "409",
                            body=True)
    change["200"] = {"description": "updated; the definition is unchanged, so no job (job: null)",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TagWithJob"}}}}
    spec.path("/api/v1/tags", operations={
        "post": docs.operation("Create a tag (docs/definition.md \"Tags\"); its first version is computed by a job",
                               docs.responses("202", "TagWithJob", "tag created, job queued", "403", "409", body=True),
                               body="TagCreate", example=EXAMPLE_TAG),
        "get": docs.operation("List tags (paged, filter by latest version status)",
                              docs.responses("200", "TagPage", "a page of tags"),
                              [{"in": "query", "schema": schemas.TagListQuery}]),
    })
    spec.path("/api/v1/tags/{tag_id}", operations={
        "get": docs.operation("A tag with its latest version", docs.responses("200", "Tag", "the tag"), [tag_id]),
        "put": docs.operation("Replace the whole tag; a changed definition gets a job", change, [tag_id],
                              body="TagUpdate", example=EXAMPLE_PUT),
        "patch": docs.operation("Change only the fields given; a changed definition gets a job", change, [tag_id],
                                body="TagPatch", example={"display_name": "Spend, last 30 days"}),
        "delete": docs.operation("Delete a tag and its versions", docs.responses("200", "Deleted", "deleted", "409"),
                                 [tag_id]),
    })
    spec.path("/api/v1/tags/{tag_id}/refresh", operations={"post": docs.operation(
        "Recompute now (coalesced with a running computation)",
        docs.responses("202", "Refresh", "job queued, or the running one joined"), [tag_id])})
    spec.path("/api/v1/tags/{tag_id}/cancel", operations={"post": docs.operation(
        "Cancel the tag's running job (it ends failed/cancelled)",
        docs.responses("202", "Job", "cancel requested", "409"), [tag_id])})
    spec.path("/api/v1/tags/{tag_id}/distribution", operations={"get": docs.operation(
        "value -> user count (or a histogram for many distinct numbers/times) of the published version",
        docs.responses("200", "Distribution", "the distribution", "409"), [tag_id])})
    values = docs.responses("200", "TagValuesPage", "values", "409")
    values["200"]["content"]["text/csv"] = {"schema": {"type": "string", "description": "key,value rows after a"
                                                                                         " header row"}}
    spec.path("/api/v1/tags/{tag_id}/values", operations={"get": docs.operation(
        "Every user's value: text/csv stream (key,value) or JSON pages (format=json); filter by value or range",
        values, [tag_id, {"in": "query", "schema": schemas.TagValuesQuery}])})
    spec.path("/api/v1/tags/{tag_id}/values/{user_key}", operations={"get": docs.operation(
        "One user's value (null: none)", docs.responses("200", "TagUserValue", "the value", "409"),
        [tag_id, user_key])})
