"""Sensors Analytics segmenter API (v1.13) over the job system: rules, base_time partitions, their status.

Shapes and choices: docs/dialects/sensors.md, "HTTP endpoints".
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from flask import Blueprint, g, jsonify, request
from marshmallow import ValidationError

from app.auth import TokenPolicy, require_project
from app.db import get_db
from app.errors import ApiError
from app.services import cohort_service
from cohort_engine.definition import DefinitionError, import_leaves
from core.data import cohorts, jobs
from core.errors import DuplicateName, Invalid
from dialects.sensors.translate import (
    BASE_TIME_FORMAT,
    IMPORT_ONCE,
    IMPORT_ROUTINE,
    IMPORT_TYPES,
    ROUTINE,
    RUN_ONCE,
    load_partitions,
    load_rule,
)

bp = Blueprint("sensors", __name__, url_prefix="/segmenter")

DIALECT = "sensors"
# Import cohorts (types 5, 6) saved without an `import` (the body field naming their IDs' upload or
# source) are stored with an empty id list, which the execute endpoint refuses to compute.
IMPORT_DEFINITION = {"type": "ids", "keys": []}
# The seed's error_code is an integer; our job error codes are names. 0 = no error.
ERROR_CODES = {
    "internal_error": 1, "timeout": 2, "worker_lost": 3, "backend_unavailable": 4, "backend_error": 5,
    "cancelled": 6, "superseded": 7, "cohort_deleted": 8, "claim_lost": 9, "bad_definition": 10,
    "unknown_property": 11, "type_mismatch": 12, "bad_value": 13, "cohort_not_ready": 14, "unsupported": 15,
    "import_no_match": 16, "import_bad_rows": 17, "import_source_error": 18, "import_missing": 19,
}
UNKNOWN_ERROR_CODE = 99


# Sensors clients send the token as ?token=; the header works too.
AUTH = TokenPolicy(query_token=True,
                   missing="missing token: send ?token=<project token> or 'Authorization: Bearer <project token>'")


def require_token(view):
    """Resolve the project from `Authorization: Bearer <token>` or, as Sensors clients send it, `?token=`."""
    return require_project(view, policy=AUTH)


def service():
    """The cohort commands, worded as Sensors words them (a cohort is a rule)."""
    return cohort_service(noun="rule")


def zone() -> ZoneInfo:
    return ZoneInfo(g.project["timezone"])


def local_text(moment: datetime | None) -> str | None:
    """A timestamp as the seed writes it: 'YYYY-MM-DD HH:MM:SS' in the project's time zone."""
    return None if moment is None else moment.astimezone(zone()).strftime(BASE_TIME_FORMAT)


def parse_base_time(text: str) -> datetime:
    return datetime.strptime(text, BASE_TIME_FORMAT).replace(tzinfo=zone())


def rule_type(cohort: dict) -> int | None:
    return (cohort["request_body"] or {}).get("type")


def load_segmenter(cohort_id: int, lock: bool = False, path: str | None = None) -> dict:
    """This project's Sensors cohort, or 404 (cohorts of other dialects are not segmenter rules)."""
    return service().get(cohort_id, lock=lock, dialect=DIALECT, noun="segmenter rule", field=path)


def duplicate_name(name: str) -> ValidationError:
    return ValidationError({"name": [f"a cohort named {name!r} already exists in this project"]})


def partition_view(base_time: str, job: dict | None) -> dict:
    """One entry of /segmenter/status; a base time never executed is `new`."""
    if job is None:
        return {"base_time": base_time, "count": 0, "status": "new", "finished_time": None, "error_code": 0,
                "error_message": None}
    code = job["error_code"]
    return {"base_time": base_time, "count": job["version_count"] if job["status"] == "succeed" else 0,
            "status": job["status"], "finished_time": local_text(job["finished_at"]),
            "error_code": ERROR_CODES.get(code, UNKNOWN_ERROR_CODE) if code else 0,
            "error_message": job["error_message"]}


def rule_view(cohort: dict, summary: dict) -> dict:
    body = cohort["request_body"] or {}
    scheduler = body.get("scheduler") or {}
    last = summary["last"]
    last_partition = None
    if last is not None:
        status = "finish" if last["status"] == "succeed" else last["status"]  # the seed's listing word
        last_partition = {
            "base_time": local_text(last["base_time"]), "finished_time": local_text(last["finished_at"]),
            "count": last["version_count"] if last["status"] == "succeed" else 0,
            "app_push_list": body.get("app_push_list", []), "status": status, "content": body.get("content")}
    return {
        "id": cohort["id"], "name": cohort["name"], "cname": cohort["display_name"], "user_name": cohort["owner"],
        "create_time": local_text(cohort["created_at"]), "type": body.get("type"), "dir_id": body.get("dir_id") or 0,
        "scheduler": {"running": cohort["scheduler_running"], "cron": scheduler.get("cron", ""),
                      "execute_cron": scheduler.get("execute_cron") or scheduler.get("cron", "")},
        "failed_partition_count": summary["failed"], "content": body.get("content"), "last_partition": last_partition,
    }


@bp.post("/rule")
@require_token
def save_rule():
    body = request.get_json(silent=True)
    conn, project_id = get_db(), g.project["id"]
    data = load_rule(body, resolve_cohort=lambda name: cohorts.id_by_name(conn, project_id, name))
    kind, cohort_id, name = data["type"], data["id"], data["name"]
    definition = data["definition"] or IMPORT_DEFINITION
    scheduler = data.get("scheduler") or {}
    # A routine import (6) is scheduled once it names a source to re-read; without one it is stored only.
    importing = data["definition"] is not None and kind in IMPORT_TYPES
    cron = scheduler.get("cron_expression") if kind == ROUTINE or (kind == IMPORT_ROUTINE and importing) else None
    running = bool(cron and scheduler.get("running"))
    fields = {"name": name, "display_name": data["cname"], "dynamic": cron is not None, "cron": cron,
              "scheduler_running": running}
    rules = service()
    try:
        if cohort_id == 0:
            cohort = rules.create(definition=definition, dialect=DIALECT, request_body=body, **fields)
            job_kind = "create"
        else:
            # Checked before the rule is looked up: a bad definition is answered before an unknown id.
            rules.check_definition(cohort_id, definition)
            before = load_segmenter(cohort_id, lock=True, path="id")
            # A new or resumed schedule starts at its next fire time; fires missed while stopped are not made up.
            restart = running and (cron != before["cron"] or not before["scheduler_running"])
            cohort = rules.update(before, definition, body, fields, restart_schedule=restart, check=False)
            job_kind = "recalculate"
    except DefinitionError as exc:
        raise ValidationError({"content": [m for messages in exc.errors.values() for m in messages]}) from None
    except DuplicateName:
        raise duplicate_name(name) from None
    except Invalid as exc:
        # The import's checks name canonical paths (definition.upload_id, definition.source.url).
        raise ValidationError({"import." + path.rsplit(".", 1)[-1]: messages
                               for path, messages in (exc.errors or {}).items()}) from None
    base_time, submitted = None, []
    if kind == RUN_ONCE or (kind == IMPORT_ONCE and importing):
        base_time = datetime.now(zone()).replace(microsecond=0)
        submitted.append(rules.submit(cohort, job_kind, base_time, supersede=True))
    elif running:
        base_time = croniter(cron, cohort["updated_at"].astimezone(zone())).get_next(datetime)
    rules.commit_and_enqueue(submitted)
    return jsonify({"id": cohort["id"], "base_time": local_text(base_time)})


def requested_partitions():
    """Each entry of an /execute or /status body, in order: (its path, its rule or 404, {text: base time})."""
    for index, item in enumerate(load_partitions(request.get_json(silent=True))):
        path = f"[{index}].id"
        yield path, load_segmenter(item["id"], path=path), {text: parse_base_time(text) for text in item["base_time_list"]}


@bp.post("/execute")
@require_token
def execute():
    targets = []
    for path, cohort, wanted in requested_partitions():
        if rule_type(cohort) in IMPORT_TYPES and not import_leaves(cohort["definition"]):
            raise ApiError(409, f"segmenter rule {cohort['id']} is an import cohort without an import; save it with "
                                "`import` (docs/dialects/sensors.md) to compute it",
                           errors={path: ["import cohorts (type 5, 6) are computed from their `import`"]})
        targets.append((cohort, list(wanted.values())))
    service().execute_partitions(targets)
    return jsonify({})


@bp.post("/status")
@require_token
def status():
    answer = []
    for _, cohort, wanted in requested_partitions():
        newest = jobs.latest_per_base_time(get_db(), cohort["id"], wanted.values())
        answer.append({"id": cohort["id"], "result": [partition_view(text, newest.get(moment))
                                                      for text, moment in wanted.items()]})
    return jsonify(answer)


@bp.delete("/rule/<int:cohort_id>")
@require_token
def delete_rule(cohort_id):
    service().delete(load_segmenter(cohort_id, lock=True))
    return jsonify({})


@bp.get("/rule/all")
@require_token
def list_rules():
    rows = cohorts.list_by_dialect(get_db(), g.project["id"], DIALECT)
    summaries = jobs.partition_summaries(get_db(), [c["id"] for c in rows])
    return jsonify({"total": len(rows), "result": [rule_view(c, summaries[c["id"]]) for c in rows]})


@bp.get("/rule/<int:cohort_id>")
@require_token
def get_rule(cohort_id):
    cohort = load_segmenter(cohort_id)
    return jsonify(rule_view(cohort, jobs.partition_summaries(get_db(), [cohort_id])[cohort_id]))
