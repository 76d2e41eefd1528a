"""Sugo `/ant` endpoints (user groups, tag batch updates) as jobs, and the embedded Druid broker `/druid/v2`.

Shapes and choices: docs/dialects/sugo.md.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, g, jsonify, request

from app.auth import MISSING_TOKEN, TokenPolicy, require_project
from app.auth import current_project as resolve_project
from app.db import check_broker, get_db, settings
from app.errors import ApiError
from app.services import send_jobs, wait_for
from cohort_engine.broker import DataSources, respond_query
from core.data import jobs, sugo_targets
from core.services.tags import TagService
from dialects.sugo import schemas as dialect
from dialects.sugo import tag_push
from dialects.sugo.broker_queries import QUERY_TYPES

log = logging.getLogger(__name__)

bp = Blueprint("sugo", __name__)

LOADERS = {"single": dialect.load_single, "multi": dialect.load_multi,
           "tag_user_group": dialect.load_tag_user_group, "tag_query": dialect.load_tag_query}
SUGO_KINDS = frozenset(dialect.ENDPOINT_KINDS.values())


# Token-less calls are what Sugo's own clients make; they are accepted only when the operator named a
# project for them (COHORTS_SUGO_PROJECT), and then act for that project.
AUTH = TokenPolicy(
    query_token=True, fallback_setting="sugo_project",
    missing=MISSING_TOKEN + " (or ?token=); token-less Sugo calls are accepted only when the operator names a "
    "project for them with COHORTS_SUGO_PROJECT",
    unknown_fallback="project {name!r} (COHORTS_SUGO_PROJECT, used when no token is sent) does not exist")


def current_project() -> dict:
    """The project of the call's token, else COHORTS_SUGO_PROJECT if the operator set one, else 401."""
    return resolve_project(AUTH)


def wants_async() -> bool:
    return request.args.get("async", "").strip().lower() in ("1", "true", "yes")


def accepted(job: dict):
    body = {"jobId": job["id"], "status": job["status"], "progress": job["progress"], "job": jobs.public(job)}
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/jobs/{job['id']}"
    return response


def ended(job: dict):
    status, body = dialect.answer(job)
    response = jsonify(body)
    response.status_code = status
    return response


def submit(endpoint: str):
    project = current_project()
    data = LOADERS[endpoint](request.get_json(silent=True))
    targets = dialect.targets_for(settings(), sugo_targets.for_project(get_db(), project["id"]))
    dialect.check_hosts(endpoint, data, targets)
    check_broker()
    kind = dialect.ENDPOINT_KINDS[endpoint]
    conn = get_db()
    job, _ = jobs.insert(conn, project["id"], kind, params={"endpoint": endpoint, "request": data},
                         max_attempts=settings().max_attempts)
    conn.commit()
    log.info("job=%s kind=%s endpoint=%s project=%s", job["id"], kind, endpoint, project["name"])
    # By kind, the job goes to the task the Sugo dialect names for it (and the sweeper resends it there).
    send_jobs([job])
    if wants_async():
        return accepted(job)
    job = wait_for(job["id"], settings().sugo_wait_seconds)
    return ended(job) if job["status"] in ("succeed", "failed") else accepted(job)


@bp.post("/ant/usergroup/single")
def usergroup_single():
    return submit("single")


@bp.post("/ant/usergroup/multi")
def usergroup_multi():
    return submit("multi")


@bp.post("/ant/tag/usergroup/batchUpdate")
def tag_usergroup_batch_update():
    return submit("tag_user_group")


@bp.post("/ant/tag/query/batchUpdate")
def tag_query_batch_update():
    return submit("tag_query")


@bp.get("/ant/jobs/<int:job_id>")
def sugo_job(job_id):
    """A Sugo job of the project, and its answer in the seed's shape once it has ended."""
    project = current_project()
    job = jobs.get(get_db(), job_id, project["id"])
    if job is None or job["kind"] not in SUGO_KINDS:
        raise ApiError(404, f"job {job_id} not found")
    body = {"job": jobs.public(job), "status": None, "answer": None}
    if job["status"] in ("succeed", "failed"):
        body["status"], body["answer"] = dialect.answer(job)
    return jsonify(body)


# -- the embedded Druid broker ----------------------------------------------------------------------


def druid_response(status: int, body) -> Response:
    indent = 2 if "pretty" in request.args else None
    return Response(json.dumps(body, ensure_ascii=False, indent=indent), status=status, mimetype="application/json")


@bp.post("/druid/v2")
@bp.post("/druid/v2/")
def druid_query():
    """A native Druid query answered from the project's embedded store, as a broker answers it."""
    project = current_project()
    datasources = DataSources.for_config(settings().engine, dialect.datasource_mapping(settings(), project["name"]))
    # Parsed under the app-wide input rules (docs/api.md; refusals in Druid's shape), then run and
    # encoded under the broker's limits (docs/druid.md "Limits").
    query = request.get_json(force=True)
    status, payload = respond_query(query, datasources, settings().druid_limits, "pretty" in request.args,
                                    query_types=QUERY_TYPES)
    return Response(payload, status=status, mimetype="application/json")


@bp.delete("/druid/v2/<query_id>")
def druid_cancel(query_id):
    """Accepted, as Druid does; embedded queries are bounded by context.timeout capped by COHORTS_DRUID_TIMEOUT_MS."""
    current_project()
    return Response(status=202)


@bp.get("/druid/v2/datasources")
def druid_datasources():
    current_project()
    return druid_response(200, sorted(dialect.datasource_mapping(settings(), "").keys()))


@bp.post("/api/v1/tags/<int:tag_id>/push/sugo")
@require_project
def push_tag(tag_id):
    """Push the tag's published version to an hproxy as one column (202 with the job; docs/tags.md)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", errors={"_body": ["not a JSON object"]})
    data = tag_push.TagPushSchema().load(body)
    service = TagService(get_db(), g.project, settings(), check_broker=check_broker, send=send_jobs)
    tag = service.get(tag_id)
    version = service.published(tag)
    tag_push.check_hosts(data, dialect.targets_for(settings(), sugo_targets.for_project(get_db(), g.project["id"])))
    check_broker()
    job = tag_push.submit(get_db(), g.project, tag, version, data, settings())
    service.commit_and_enqueue([(job, True)])
    return jsonify({"job": jobs.public(job), "version_id": version["id"]}), 202
