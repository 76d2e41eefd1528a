"""Native REST API, /api/v1: cohorts, their members, and jobs."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from app.auth import require_project
from app.db import get_db, get_redis, settings
from app.errors import ApiError
from app.input_rules import user_key_arg
from app.schemas import (
    EDITABLE,
    CohortCreateSchema,
    CohortListQuery,
    CohortPatchSchema,
    CohortUpdateSchema,
    JobListQuery,
    MembersQuery,
    check_schedule,
)
from app.services import cohort_service
from cohort_engine import bitmaps
from cohort_engine.project import ProjectEngine
from core.data import cohorts, jobs, projects, versions
from core.services.backends import public_backend
from core.services.cohorts import SETTING_FIELDS

bp = Blueprint("native", __name__, url_prefix="/api/v1")


def json_body() -> dict:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "the request body must be JSON (Content-Type: application/json)",
                       errors={"_body": ["not valid JSON"]})
    return body


def iso(value):
    return value.isoformat() if value is not None else None


def cohort_view(cohort: dict) -> dict:
    latest = versions.get(get_db(), cohort["latest_version_id"])
    return {
        "id": cohort["id"], "project": g.project["name"], "name": cohort["name"],
        "display_name": cohort["display_name"], "dialect": cohort["dialect"], "definition": cohort["definition"],
        "dynamic": cohort["dynamic"], "cron": cohort["cron"], "scheduler_running": cohort["scheduler_running"],
        "owner": cohort["owner"], "created_at": iso(cohort["created_at"]), "updated_at": iso(cohort["updated_at"]),
        "schedule_error": None if cohort["schedule_error"] is None else {
            "message": cohort["schedule_error"], "at": iso(cohort["schedule_error_at"])},
        "latest_version": None if latest is None else {
            "id": latest["id"], "status": latest["status"], "count": latest["count"],
            "base_time": iso(latest["base_time"]), "computed_at": iso(latest["finished_at"])},
    }


def load_cohort(cohort_id: int) -> dict:
    return cohort_service().get(cohort_id)


@bp.post("/cohorts")
@require_project
def create_cohort():
    data = CohortCreateSchema().load(json_body())
    service = cohort_service()
    service.check_project(data["project"])
    cohort = service.create(data["name"], data["definition"], display_name=data["display_name"],
                            request_body=request.get_json(), dynamic=data["dynamic"], cron=data["cron"],
                            scheduler_running=data["dynamic"], owner=data["owner"])
    submitted = service.submit(cohort, "create")
    service.commit_and_enqueue([submitted])
    return jsonify({"cohort": cohort_view(cohort), "job": jobs.public(submitted[0])}), 202


@bp.get("/cohorts")
@require_project
def list_cohorts():
    query = CohortListQuery().load(request.args)
    total, rows = cohorts.list_page(get_db(), g.project["id"], status=query["status"], limit=query["per_page"],
                                    offset=(query["page"] - 1) * query["per_page"])
    return jsonify({"total": total, "page": query["page"], "per_page": query["per_page"],
                    "cohorts": [cohort_view(c) for c in rows]})


@bp.get("/cohorts/<int:cohort_id>")
@require_project
def get_cohort(cohort_id):
    return jsonify(cohort_view(load_cohort(cohort_id)))


@bp.put("/cohorts/<int:cohort_id>")
@require_project
def replace_cohort(cohort_id):
    body = json_body()
    return change_cohort(cohort_id, CohortUpdateSchema().load(body), body)


@bp.patch("/cohorts/<int:cohort_id>")
@require_project
def patch_cohort(cohort_id):
    data = CohortPatchSchema().load(json_body())
    if not set(data) & set(EDITABLE):
        raise ApiError(400, "name at least one field to change", errors={"_body": [
            "name at least one of: " + ", ".join(EDITABLE)]})
    return change_cohort(cohort_id, data, None)


def change_cohort(cohort_id: int, data: dict, body: dict | None, service=None, view=cohort_view, key="cohort"):
    """Apply the fields named in data (all of them for PUT); a changed definition gets a new job.

    service, view, key: the tag API changes tags with the same steps (app/api/tags.py).
    """
    service = service or cohort_service()
    service.check_project(data.get("project"))
    cohort = service.get(cohort_id, lock=True)
    merged = {field: data.get(field, cohort[field]) for field in EDITABLE}
    check_schedule(merged["dynamic"], merged["cron"])
    changed = {field: merged[field] for field in EDITABLE if merged[field] != cohort[field]}
    if not changed:
        return jsonify({key: view(cohort), "job": None}), 200
    fields = {field: changed[field] for field in SETTING_FIELDS if field in changed}
    if "dynamic" in changed:
        fields["scheduler_running"] = merged["dynamic"]
    # The stored request is the whole cohort as it now stands (a PATCH body alone would not be).
    request_body = body if body is not None else {**{f: merged[f] for f in EDITABLE}, "project": g.project["name"]}
    # A changed or resumed cron takes effect from its next fire time, not from fires it would have had.
    restart = bool(merged["cron"]) and ("cron" in changed or "dynamic" in changed)
    cohort = service.update(cohort, merged["definition"], request_body, fields, restart_schedule=restart)
    if "definition" not in changed:
        service.commit_and_enqueue([])
        return jsonify({key: view(cohort), "job": None}), 200
    submitted = service.submit(cohort, "recalculate", supersede=True)
    service.commit_and_enqueue([submitted])
    return jsonify({key: view(cohort), "job": jobs.public(submitted[0])}), 202


@bp.delete("/cohorts/<int:cohort_id>")
@require_project
def delete_cohort(cohort_id):
    service = cohort_service()
    service.delete(service.get(cohort_id, lock=True))
    return jsonify({"deleted": cohort_id})


@bp.post("/cohorts/<int:cohort_id>/refresh")
@require_project
def refresh_cohort(cohort_id):
    job, created = cohort_service().refresh(cohort_id)
    return jsonify({"job": jobs.public(job), "coalesced": not created}), 202


def published_bitmap(cohort_id: int):
    load_cohort(cohort_id)
    key = bitmaps.cohort_key(settings().engine.key_prefix, g.project["id"], cohort_id)
    bitmap = bitmaps.load_cached(get_redis(), key, lambda: versions.published_bitmap(get_db(), cohort_id))
    if bitmap is None:
        raise ApiError(409, f"cohort {cohort_id} has no computed version yet; " + _next_step(cohort_id))
    return bitmap


def _next_step(cohort_id: int) -> str:
    """What a client waiting for a cohort's first version can do, from its latest job."""
    latest = jobs.list_page(get_db(), g.project["id"], cohort_id=cohort_id, limit=1)
    if latest and latest[0]["status"] == "failed":
        job = latest[0]
        return (f"its last job {job['id']} failed ({job['error_code']}: {job['error_message']}); "
                f"POST /api/v1/cohorts/{cohort_id}/refresh once the cause is fixed")
    if latest:
        return f"poll job {latest[0]['id']} (GET /api/v1/jobs/{latest[0]['id']}) until it succeeds"
    return f"POST /api/v1/cohorts/{cohort_id}/refresh to compute it"


@bp.get("/cohorts/<int:cohort_id>/members")
@require_project
def list_members(cohort_id):
    query = MembersQuery().load(request.args)
    bitmap = published_bitmap(cohort_id)
    engine = ProjectEngine(settings().engine, g.project["name"])
    if query["format"] == "json":
        start = (query["page"] - 1) * query["per_page"]
        page = bitmap[start:start + query["per_page"]]
        return jsonify({"total": len(bitmap), "page": query["page"], "per_page": query["per_page"],
                        "members": list(engine.iter_keys(page))})

    def rows():
        for key in engine.iter_keys(bitmap):
            yield key + "\n"

    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"X-Total-Count": str(len(bitmap))})


@bp.get("/cohorts/<int:cohort_id>/members/<path:user_key>")
@require_project
def is_member(cohort_id, user_key):
    bitmap = published_bitmap(cohort_id)
    uid = ProjectEngine(settings().engine, g.project["name"]).lookup(user_key_arg(user_key))
    return jsonify({"member": uid is not None and uid in bitmap})


@bp.get("/project")
@require_project
def get_project():
    """The caller's project, its rule backend shown without secrets."""
    backend = public_backend(projects.backend(get_db(), g.project["id"]))
    return jsonify({"name": g.project["name"], "timezone": g.project["timezone"], "backend": backend})


@bp.get("/jobs/<int:job_id>")
@require_project
def get_job(job_id):
    job = jobs.get(get_db(), job_id, g.project["id"])
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    return jsonify(jobs.public(job))


@bp.get("/jobs")
@require_project
def list_jobs():
    query = JobListQuery().load(request.args)
    rows = jobs.list_page(get_db(), g.project["id"], status=query["status"], cohort_id=query["cohort_id"],
                          limit=query["per_page"], offset=(query["page"] - 1) * query["per_page"])
    return jsonify({"page": query["page"], "per_page": query["per_page"], "jobs": [jobs.public(j) for j in rows]})


@bp.post("/jobs/<int:job_id>/cancel")
@require_project
def cancel_job(job_id):
    conn = get_db()
    job = jobs.get(conn, job_id, g.project["id"])
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    if job["status"] in ("succeed", "failed"):
        raise ApiError(409, f"job {job_id} already ended {job['status']}")
    jobs.request_cancel(conn, job_id)
    if job["status"] == "new":
        jobs.fail(conn, job_id, "cancelled", "the job was cancelled on request before it started")
    conn.commit()
    return jsonify(jobs.public(jobs.get(conn, job_id))), 202
