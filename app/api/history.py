"""Native API, /api/v1: a cohort's version history, the diff of two versions, and previews of definitions."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from app.api.native import iso, json_body, load_cohort
from app.api.tags import shown, tag_service
from app.auth import require_project
from app.db import get_db, get_redis, settings
from app.errors import ApiError
from app.schemas import DiffQuery, PageQuery, PreviewSchema, TagDiffQuery
from app.services import cohort_service, wait_for
from cohort_engine.project import ProjectEngine
from core.data import jobs
from core.services import history

bp = Blueprint("history", __name__, url_prefix="/api/v1")


def version_view(version: dict, cohort: dict) -> dict:
    started, finished = version["started_at"], version["finished_at"]
    return {
        "id": version["id"], "definition_version": version["definition_version"],
        "base_time": iso(version["base_time"]), "status": version["status"], "count": version["count"],
        "error_code": version["error_code"], "error_message": version["error_message"],
        "published": version["id"] == cohort["latest_version_id"], "kept": version["bitmap_key"] is not None,
        "entered": version["entered_count"], "left": version["left_count"],
        "previous_version_id": version["previous_version_id"], "job_id": version["job_id"],
        "created_at": iso(version["created_at"]), "started_at": iso(started), "finished_at": iso(finished),
        "duration_seconds": round((finished - started).total_seconds(), 4) if started and finished else None,
        "timings": version["timings"],
    }


@bp.get("/cohorts/<int:cohort_id>/versions")
@require_project
def list_versions(cohort_id):
    query = PageQuery().load(request.args)
    cohort = load_cohort(cohort_id)
    total, rows = history.page(get_db(), cohort, limit=query["per_page"], offset=(query["page"] - 1) * query["per_page"])
    return jsonify({"total": total, "page": query["page"], "per_page": query["per_page"],
                    "versions": [version_view(v, cohort) for v in rows]})


def _side(version: dict) -> dict:
    return {"id": version["id"], "count": version["count"], "base_time": iso(version["base_time"]),
            "definition_version": version["definition_version"]}


@bp.get("/cohorts/<int:cohort_id>/diff")
@require_project
def diff_versions(cohort_id):
    query = DiffQuery().load(request.args)
    cohort = load_cohort(cohort_id)
    change = history.diff(get_db(), get_redis(), cohort, query["from_"], query["to"])
    if query["side"] is None:
        return jsonify({"cohort": cohort_id, "from": _side(change.before), "to": _side(change.after),
                        "entered": len(change.entered), "left": len(change.left)})
    members = change.entered if query["side"] == "entered" else change.left
    engine = ProjectEngine(settings().engine, g.project["name"])

    def rows():
        for key in engine.iter_keys(members):
            yield key + "\n"

    return Response(stream_with_context(rows()), mimetype="text/csv", headers={
        "X-Total-Count": str(len(members)), "X-From-Version": str(change.before["id"]),
        "X-To-Version": str(change.after["id"])})


@bp.get("/tags/<int:tag_id>/versions")
@require_project
def list_tag_versions(tag_id):
    query = PageQuery().load(request.args)
    tag = tag_service().get(tag_id)
    total, rows = history.page(get_db(), tag, limit=query["per_page"], offset=(query["page"] - 1) * query["per_page"])
    return jsonify({"total": total, "page": query["page"], "per_page": query["per_page"],
                    "versions": [version_view(v, tag) for v in rows]})


@bp.get("/tags/<int:tag_id>/diff")
@require_project
def diff_tag_versions(tag_id):
    query = TagDiffQuery().load(request.args)
    service = tag_service()
    tag = service.get(tag_id)
    before, after, old, new = history.tag_distributions(get_db(), tag, query["from_"], query["to"])
    value_type, tz = tag["value_type"], service.tz
    change = history.distribution_diff(shown(old, value_type, tz), shown(new, value_type, tz))
    return jsonify({"tag": tag_id, "value_type": value_type, "from": _side(before), "to": _side(after), **change})


@bp.post("/cohorts/preview")
@require_project
def preview():
    data = PreviewSchema().load(json_body())
    service = cohort_service()
    service.check_project(data["project"])
    sample = settings().preview_sample if data["sample"] is None else data["sample"]
    job = history.submit_preview(service, data["definition"], min(sample, history.MAX_SAMPLE))
    job = wait_for(job["id"], settings().preview_wait_seconds)
    if job["status"] == "succeed":
        return jsonify({"count": job["result"]["count"], "sample": job["result"]["sample"],
                        "job": jobs.public(job)})
    if job["status"] == "failed":
        raise ApiError(422, f"the preview could not be computed: {job['error_message']}",
                       error_code=job["error_code"], job=jobs.public(job))
    response = jsonify({"job": jobs.public(job)})
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/jobs/{job['id']}"
    return response


def add_paths(spec, docs, cohort_id: dict) -> None:
    """This module's operations in /openapi.json (called by app/api/docs.py)."""
    from app import schemas

    for name in ("Preview", "PreviewResult", "PreviewAccepted", "PreviewFailed", "VersionPage", "Diff",
                 "TagDiff"):
        spec.components.schema(name, schema=getattr(schemas, name + "Schema"))
    spec.path("/api/v1/cohorts/{cohort_id}/versions", operations={
        "get": docs.operation("Every version of the cohort, newest first: base time, count, status, error, duration, "
                              "per-leaf timings, who entered and left",
                              docs.responses("200", "VersionPage", "a page of versions"),
                              [cohort_id, {"in": "query", "schema": schemas.PageQuery}])})
    answers = docs.responses("200", "Diff", "entered and left counts (JSON), or the keys of one side (text/csv)",
                             "409")
    answers["200"]["content"]["text/csv"] = {"schema": {"type": "string", "description": "one user key a line"}}
    answers["200"]["headers"] = {"X-Total-Count": {"description": "number of keys (text/csv)",
                                                   "schema": {"type": "integer"}}}
    spec.path("/api/v1/cohorts/{cohort_id}/diff", operations={
        "get": docs.operation("Who entered and left between two versions (default: the published version against "
                              "the one published before it); side=entered|left streams the keys",
                              answers, [cohort_id, {"in": "query", "schema": schemas.DiffQuery}])})
    answers = docs.responses("200", "PreviewResult", "computed within COHORTS_PREVIEW_WAIT_SECONDS", "403", body=True)
    answers["422"] = {"description": docs.ERROR_ANSWERS["422"], **docs._json("PreviewFailed")}
    answers["202"] = {"description": "still computing: poll the job; its result is {count, sample}",
                      **docs._json("PreviewAccepted")}
    tag_id = {**cohort_id, "name": "tag_id"}
    spec.path("/api/v1/tags/{tag_id}/versions", operations={
        "get": docs.operation("Every version of the tag, newest first (as for cohorts; entered and left are null: "
                              "a tag's change is its distribution diff)",
                              docs.responses("200", "VersionPage", "a page of versions"),
                              [tag_id, {"in": "query", "schema": schemas.PageQuery}])})
    spec.path("/api/v1/tags/{tag_id}/diff", operations={
        "get": docs.operation("How the tag's distribution changed between two versions (default: the published "
                              "version against the one published before it)",
                              docs.responses("200", "TagDiff", "per value: users before, after and the change", "409"),
                              [tag_id, {"in": "query", "schema": schemas.TagDiffQuery}])})
    spec.path("/api/v1/cohorts/preview", operations={
        "post": docs.operation("A definition's count and a sample of member keys; nothing is saved (no cohort)",
                               answers, body="Preview",
                               example={"definition": docs.EXAMPLE_BODY["definition"], "sample": 5})})
