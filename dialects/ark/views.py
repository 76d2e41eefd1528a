"""Analysys Ark cohort API (`/uba/api/cohort`, Ark 4.5) over the job system, in Ark's shapes and error codes.

Shapes, codes and choices: docs/dialects/ark.md.
"""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import psycopg2
import redis
from flask import Blueprint, g, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from app.auth import TokenPolicy, require_project
from app.db import get_db
from app.errors import ApiError
from app.services import cohort_service
from cohort_engine.definition import DefinitionError, flatten_errors
from core.data import cohorts, jobs, versions
from core.errors import Conflict, DomainError, DuplicateName, Unavailable
from dialects.ark.translate import load_cohort

log = logging.getLogger(__name__)

bp = Blueprint("ark", __name__, url_prefix="/uba/api/cohort")

DIALECT = "ark"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# Ark words for the job states (GET answers and the ?status= filter).
STATUS = {"new": "calculating", "computing": "calculating", "succeed": "success", "failed": "failed"}
STATUSES = ("success", "failed", "calculating")
SOURCE = "自定义分群"  # a cohort built from rules ("custom cohort"), as the seed calls it
API_OWNER = "API"  # createdUser of a cohort created without loginUser: Ark's "belongs to the API"
# Ark's `code` for an object that already exists (a taken cohort name); other errors carry their status.
CODE_EXISTS = 50101
# Ark 4.5.1+ sends that code with HTTP 501; this service answers no client error with a 5xx (a 5xx says
# "our fault, retry", and retrying a taken name never helps), so it is a 400 carrying Ark's code
# (docs/dialects/ark.md, "Errors").
EXISTS_STATUS = 400
# How a Boolean query parameter may be spelled (as Java clients write it); empty = not given.
TRUE_WORDS, FALSE_WORDS = ("true", "True", "TRUE", "1"), ("false", "False", "FALSE", "0", "")

AUTH = TokenPolicy(token_header="token", project_header="appKey",
                   missing="missing token header: send 'token: <project API token>' and 'appKey: <project>'")


def ark_error(status: int, message: str, data: dict | None = None, code: int | None = None):
    """Ark's error body: {code, message, data?}; code is the HTTP status unless Ark documents a finer one."""
    body = {"code": code or status, "message": message}
    if data:
        body["data"] = data
    response = jsonify(body)
    response.status_code = status
    return response


@bp.errorhandler(ValidationError)
def _invalid(exc):
    return ark_error(400, "invalid input; nothing was written", flatten_errors(exc.messages))


@bp.errorhandler(DefinitionError)
def _bad_definition(exc):
    return ark_error(400, "invalid cohort rules; nothing was written",
                     {f"content.{k}" if k != "_root" else "content": v for k, v in exc.errors.items()})


@bp.errorhandler(ApiError)
def _api_error(exc):
    return ark_error(exc.status, exc.body["error"], exc.body.get("errors"))


@bp.errorhandler(DomainError)
def _domain(exc):
    # Ark answers a missing object, like any request it cannot carry out, with 400; it has no 403, 404
    # (that is "no such API") or 409.
    if isinstance(exc, DuplicateName):
        return ark_error(EXISTS_STATUS, exc.message, {"name": ["a cohort of this project already has this name"]}, CODE_EXISTS)
    if isinstance(exc, Unavailable):
        return ark_error(503, exc.message, exc.errors)
    return ark_error(400, exc.message, exc.errors)


@bp.errorhandler(RequestEntityTooLarge)
@bp.errorhandler(HTTPException)
def _http(exc):
    return ark_error(exc.code or 500, exc.description)


@bp.errorhandler(InternalServerError)
def _internal(exc):
    log.error("unhandled error path=%s method=%s error=%r", request.path, request.method,
              getattr(exc, "original_exception", None))
    return ark_error(500, "internal error; the request may not have been carried out")


@bp.errorhandler(psycopg2.OperationalError)
@bp.errorhandler(redis.ConnectionError)
@bp.errorhandler(redis.TimeoutError)
def _unavailable(exc):
    log.error("store unreachable path=%s error=%s", request.path, exc)
    return ark_error(503, "PostgreSQL or Redis is unreachable; nothing was written. Retry when it is back.")


def require_ark(view):
    """The project of the `token` header, which the `appKey` header must name (401 in Ark's shape otherwise)."""
    return require_project(view, policy=AUTH)


def local_text(moment: datetime | None) -> str | None:
    """A time as Ark writes it: 'yyyy-MM-dd HH:mm:ss' in the project's time zone."""
    return None if moment is None else moment.astimezone(ZoneInfo(g.project["timezone"])).strftime(TIME_FORMAT)


def flag(name: str) -> bool:
    """A Boolean query parameter (default false); 400 for anything but true / false (or 1 / 0)."""
    text = request.args.get(name, "")
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValidationError({name: [f"must be true or false, got {request.args[name]!r}"]})


def login_user() -> str | None:
    """?loginUser= (the acting user's e-mail), or None when absent or blank."""
    user = request.args.get("loginUser", "").strip()
    if len(user) > 200:
        raise ValidationError({"loginUser": ["must be at most 200 characters"]})
    return user or None


def load_ark(cohort_id: int, lock: bool = False) -> dict:
    """This project's Ark cohort, or 400 (Ark's answer for an object that does not exist)."""
    return cohort_service().get(cohort_id, lock=lock, dialect=DIALECT, field="id")


def cohort_view(cohort: dict, last_job: dict | None, published: dict | None, more: bool) -> dict:
    """One cohort in the seed's shape; with `more`, the needMore=true fields too."""
    status = STATUS[last_job["status"]] if last_job is not None else "calculating"
    ended = last_job if last_job is not None and last_job["status"] in ("succeed", "failed") else None
    view = {
        "id": cohort["id"], "code": f"arkfq_{cohort['id']}", "name": cohort["name"], "dynamic": int(cohort["dynamic"]),
        "userNumber": published["count"] if published is not None else 0, "status": status,
        "calculatedTime": local_text(ended["finished_at"]) if ended is not None else None,
    }
    if status == "failed":
        # Not in the seed: what went wrong, so that a person can act on it.
        view["errorCode"], view["errorMessage"] = last_job["error_code"], last_job["error_message"]
    if more:
        view.update({"source": SOURCE, "createdTime": local_text(cohort["created_at"]),
                     "createdUser": cohort["owner"] or API_OWNER, "updatedTime": local_text(cohort["updated_at"]),
                     "content": (cohort["request_body"] or {}).get("content")})
    return view


def cohort_views(rows: list[dict], more: bool) -> list[dict]:
    conn = get_db()
    summaries = jobs.partition_summaries(conn, [c["id"] for c in rows])
    published = versions.by_ids(conn, [c["latest_version_id"] for c in rows if c["latest_version_id"]])
    return [cohort_view(c, summaries[c["id"]]["last"], published.get(c["latest_version_id"]), more) for c in rows]


@bp.post("")
@require_ark
def create():
    body = request.get_json()  # a body that is not JSON: 415 (wrong Content-Type) or 400, as Ark answers
    data = load_cohort(body)
    service = cohort_service()
    cohort = service.create(data["name"].strip(), data["definition"], dialect=DIALECT, request_body=body,
                            owner=login_user(), daily_refresh=data["dynamic"] == 1)
    # Dynamic cohorts are computed now too, then every day at the project's refresh time.
    submitted = service.submit(cohort, "create")
    service.commit_and_enqueue([submitted])
    return jsonify({"id": cohort["id"], "code": f"arkfq_{cohort['id']}", "name": cohort["name"],
                    "dynamic": data["dynamic"], "createTime": local_text(cohort["created_at"]),
                    "content": body["content"]})


@bp.get("/<int:cohort_id>")
@require_ark
def get_one(cohort_id):
    more = flag("needMore")
    return jsonify(cohort_views([load_ark(cohort_id)], more)[0])


@bp.get("")
@require_ark
def list_all():
    more = flag("needMore")
    wanted = request.args.get("status", "")
    if wanted and wanted not in STATUSES:
        raise ValidationError({"status": [f"must be one of: {', '.join(STATUSES)}"]})
    rows = cohorts.list_by_dialect(get_db(), g.project["id"], DIALECT)
    return jsonify([view for view in cohort_views(rows, more) if not wanted or view["status"] == wanted])


@bp.post("/<int:cohort_id>/recalculate")
@require_ark
def recalculate(cohort_id):
    load_ark(cohort_id)
    job, _ = cohort_service().refresh(cohort_id)
    return jsonify({"id": cohort_id, "status": STATUS[job["status"]]})


@bp.delete("/<int:cohort_id>")
@require_ark
def delete(cohort_id):
    user = login_user()
    cohort = load_ark(cohort_id, lock=True)
    # Ark's rule: without loginUser only cohorts created through the API without one; with it, that user's.
    if cohort["owner"] != user:
        owner = "the API (created without loginUser)" if cohort["owner"] is None else "another user"
        raise Conflict(f"cohort {cohort_id} belongs to {owner}; only its creator can delete it"
                       + (" (send ?loginUser=<the creator's e-mail>)" if cohort["owner"] is not None else
                          " (send no loginUser)"), {"loginUser": ["is not the cohort's creator"]})
    cohort_service().delete(cohort)
    return jsonify({"success": 0})
