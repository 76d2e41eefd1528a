"""ThinkingData user cluster and tag Open API (`/open/*`, seed 002) over the cohort service.

Shapes, codes and choices: docs/dialects/thinkingdata.md.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime
from functools import wraps
from zoneinfo import ZoneInfo

import psycopg2
import redis
from flask import Blueprint, g, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app.api.imports import body_chunks
from app.api.tags import tag_service
from app.auth import TokenPolicy, current_project
from app.db import get_db, settings
from app.errors import ApiError
from app.services import cohort_service
from cohort_engine.definition import MAX_COHORT_ID, DefinitionError, flatten_errors
from cohort_engine.tag_definition import VALUE_TYPES, parse_tag_definition
from core.crons import daily_cron
from core.data import cohorts
from core.errors import Conflict, DomainError, DuplicateName, Forbidden, NotFound, Unavailable
from core.services import imports
from dialects.thinkingdata.answers import (
    CODES,
    MISSING_TOKEN,
    TdError,
    cluster_detail,
    cluster_listed,
    envelope,
    error_body,
    progress,
)
from dialects.thinkingdata.translate import (
    CLUSTER_TYPES,
    DYNAMIC_TYPES,
    NAME_PATTERN,
    load_cluster,
    load_list,
    load_qp,
    tag_definition,
)

log = logging.getLogger(__name__)
bp = Blueprint("thinkingdata", __name__, url_prefix="/open")

DIALECT = "thinkingdata"
# TA clients send ?token=; a Bearer header works too (as on every API of this service).
AUTH = TokenPolicy(query_token=True)
# mainColumnName values that mean the user key itself (TA's distinct id) rather than a profile property.
USER_KEY_COLUMNS = ("#distinct_id", "distinct_id")
DOMAIN_CODES = ((DuplicateName, -1005), (NotFound, -1004), (Conflict, -1007), (Forbidden, -1003),
                (Unavailable, -1009))
STATUS_CODES = {400: -1001, 401: -1002, 403: -1003, 404: -1004, 405: -1001, 409: -1007, 413: -1001, 503: -1009}


def answer(body: dict, status: int = 200):
    """The JSON answer; errors get their status unless COHORTS_THINKINGDATA_ERROR_STATUS forces one."""
    forced = settings().thinkingdata_error_status
    response = jsonify(body)
    response.status_code = forced if status != 200 and forced else status
    return response


def refused(code: int, message: str):
    return answer(error_body(code, message), CODES[code][0])


def _invalid_message(messages) -> str:
    flat = flatten_errors(messages)
    return "; ".join(f"{path}: {', '.join(msgs)}" if path != "_root" else ", ".join(msgs) for path, msgs in flat.items())


@bp.errorhandler(TdError)
def _td_error(exc):
    return refused(exc.code, exc.message)


@bp.errorhandler(ValidationError)
def _validation(exc):
    return refused(-1001, "invalid parameters; nothing was written: " + _invalid_message(exc.messages))


@bp.errorhandler(DefinitionError)
def _definition(exc):
    return refused(-1001, "invalid cluster definition; nothing was written: " + _invalid_message(exc.errors))


@bp.errorhandler(DomainError)
def _domain(exc):
    code = next((code for kind, code in DOMAIN_CODES if isinstance(exc, kind)), -1001)
    details = f": {_invalid_message(exc.errors)}" if exc.errors else ""
    return refused(code, exc.message + details)


@bp.errorhandler(ApiError)
def _api_error(exc):
    message = exc.body.get("error", "")
    if exc.body.get("errors"):
        message += ": " + _invalid_message(exc.body["errors"])
    return answer(error_body(STATUS_CODES.get(exc.status, -1001), message), exc.status)


@bp.errorhandler(HTTPException)
def _http(exc):
    if exc.code >= 500:
        return refused(-1099, "internal error; the request may not have been carried out")
    return answer(error_body(STATUS_CODES.get(exc.code, -1001), exc.description), exc.code)


@bp.errorhandler(psycopg2.OperationalError)
@bp.errorhandler(redis.ConnectionError)
@bp.errorhandler(redis.TimeoutError)
def _down(exc):
    log.error("store unreachable: %s", exc)
    return refused(-1009, "a store of the service (PostgreSQL or Redis) is unreachable; nothing was written."
                          " Retry when it is back.")


def require_token(view):
    """Resolve the project of ?token= (or a Bearer token); a call without one gets the seed's -1008."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        if not request.args.get("token", "").strip() and not request.headers.get("Authorization", "").strip():
            raise TdError(-1008, MISSING_TOKEN)
        try:
            current_project(AUTH)
        except ApiError as exc:
            if exc.status == 401:
                raise TdError(-1002, "invalid token: it is no project's token") from None
            raise
        return view(*args, **kwargs)
    return wrapped


def zone() -> ZoneInfo:
    return ZoneInfo(g.project["timezone"])


def check_project(value, where: str) -> None:
    """projectId (body or query) must be the token's project: its numeric id."""
    if value is None or value == "":
        raise TdError(-1001, f"参数(projectId)为空: give projectId ({where}), the token's project id {g.project['id']}")
    if isinstance(value, str):
        value = value.strip()
        if not re.fullmatch(r"\d{1,10}", value):
            raise TdError(-1001, f"projectId ({where}) must be a number, got {value!r}")
        value = int(value)
    if value != g.project["id"]:
        raise TdError(-1003, f"projectId {value} is not the token's project (its id is {g.project['id']})")


def query_project() -> None:
    check_project(request.args.get("projectId"), "query")


def query_cluster_id() -> int | None:
    text = request.args.get("clusterId", "").strip()
    if not text:
        return None
    if not re.fullmatch(r"\d{1,10}", text) or not 1 <= int(text) <= MAX_COHORT_ID:
        raise TdError(-1001, f"clusterId must be a cluster id (1 .. {MAX_COHORT_ID}), got {text!r}")
    return int(text)


def query_cluster_name(required: bool = True) -> str | None:
    # The seed's own URLs write "clusterName= recent_7_days_consume": the blank is not part of the name.
    name = request.args.get("clusterName", "").strip()
    if not name:
        if required:
            raise TdError(-1001, "参数(clusterName)为空")
        return None
    if not re.fullmatch(NAME_PATTERN, name):
        raise TdError(-1004, f"no cluster named {name!r} in this project")
    return name


def find(cluster_id: int | None = None, name: str | None = None) -> dict:
    """The project's ThinkingData cluster by id or name, with its status columns, or -1004."""
    _, rows = cohorts.with_status(get_db(), g.project["id"], DIALECT, cohort_id=cluster_id, name=name)
    if not rows:
        what = f"id {cluster_id}" if cluster_id is not None else f"name {name!r}"
        raise TdError(-1004, f"no cluster with {what} in this project")
    return rows[0]


def target(by_name: bool | None = None) -> dict:
    """The cluster the query names: clusterId, or clusterName (by_name None: whichever is given)."""
    cluster_id = None if by_name else query_cluster_id()
    if cluster_id is None and by_name is False:
        raise TdError(-1001, "参数(clusterId)为空")
    name = None if cluster_id is not None else query_cluster_name(required=by_name is not None)
    if cluster_id is None and name is None:
        raise TdError(-1001, "give clusterId or clusterName")
    return find(cluster_id, name)


def body_json() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise TdError(-1001, "the body must be a JSON object (Content-Type: application/json)")
    return body


def condition_definition(data: dict, body: dict, current: dict | None = None) -> dict:
    """The canonical tree of an add / update body's condition kind; refuses the kinds built elsewhere."""
    kind = data["clusterType"]
    how = CLUSTER_TYPES[kind][1]
    if how == "refused":
        raise TdError(-1006, f"clusterType {kind} is not supported by this service: result and SQL clusters need"
                             " ThinkingData's own query engine; define the cluster by conditions instead")
    if how == "import":
        raise TdError(-1006, f"clusterType {kind} is built from an ID upload: use /open/import-id-cluster-add")
    if data["clusterCatalog"] == "catalog_tag":
        if body.get("tagQp") is None:
            if current is not None:
                return current["definition"]
            raise TdError(-1001, "参数(tagQp)为空: a condition tag needs tagQp")
        definition = tag_definition(data["subConditionTabType"], body["tagQp"])
        try:
            return parse_tag_definition(definition)
        except DefinitionError as exc:
            raise ValidationError({"tagQp": exc.errors}) from None
    if body.get("qp") is None:
        if current is not None:
            return current["definition"]
        raise TdError(-1001, "参数(qp)为空: a condition cluster needs qp")
    return load_qp(body["qp"])


def service_for(catalog: str):
    """The commands of a cluster (cohort rows) or a tag (tag rows, docs/tags.md): one id space, two services."""
    return tag_service() if catalog == "catalog_tag" else cohort_service(noun="cluster")


def catalog_of(row: dict) -> str:
    return "catalog_tag" if row.get("entity") == "tag" else "catalog_cluster"


def schedule(kind: str) -> dict:
    """Dynamic clusters recompute every day at the project's daily refresh time (docs/jobs.md)."""
    dynamic = kind in DYNAMIC_TYPES
    return {"dynamic": dynamic, "cron": daily_cron(g.project) if dynamic else None, "scheduler_running": dynamic,
            "daily_refresh": dynamic}


# -- add, update -----------------------------------------------------------------------------------


@bp.post("/user-cluster-add")
@require_token
def add():
    body = body_json()
    data = load_cluster(body, creating=True)
    check_project(data["projectId"], "body")
    definition = condition_definition(data, body)
    service = service_for(data["clusterCatalog"])
    daily = schedule(data["clusterType"])["daily_refresh"]
    # Stored with its defaults filled in, so that list filters and detail see the catalog and type.
    stored = {**body, "clusterName": data["clusterName"], "clusterCatalog": data["clusterCatalog"],
              "clusterType": data["clusterType"]}
    create = service.create_tag if data["clusterCatalog"] == "catalog_tag" else service.create
    cohort = create(data["clusterName"], definition, dialect=DIALECT, request_body=stored,
                    display_name=data["displayName"], daily_refresh=daily)
    submitted = service.submit(cohort, "create")
    service.commit_and_enqueue([submitted])
    log.info("cluster=%s project=%s type=%s created", cohort["id"], g.project["id"], data["clusterType"])
    return answer(envelope(cohort["id"]))


def update(by_name: bool):
    body = body_json()
    data = load_cluster(body, creating=False)
    check_project(data["projectId"], "body")
    current = target(by_name)
    stored = current["request_body"] or {}
    if data["clusterCatalog"] != catalog_of(current):
        raise TdError(-1007, f"cluster {current['id']} is a {catalog_of(current)}; its catalog cannot change")
    if CLUSTER_TYPES[stored.get("clusterType", "cluster_by_static_condition")][1] == "import":
        raise TdError(-1007, f"cluster {current['id']} is built from an ID upload: use /open/import-id-cluster-modify")
    definition = condition_definition(data, body, current)
    fields = {"display_name": data.get("displayName", current["display_name"]), **schedule(data["clusterType"])}
    if data.get("clusterName"):
        fields["name"] = data["clusterName"]
    # The stored body is what detail answers: the settings and definition as the client last sent them.
    merged = {**stored, **body, "clusterName": fields.get("name", current["name"]),
              "displayName": fields["display_name"], "clusterType": data["clusterType"],
              "clusterCatalog": data["clusterCatalog"]}
    service = service_for(catalog_of(current))
    cohort = service.get(current["id"], lock=True, dialect=DIALECT)
    restart = fields["dynamic"] and not cohort["scheduler_running"]
    cohort = service.update(cohort, definition, merged, fields, restart_schedule=restart)
    submitted = service.submit(cohort, "update", supersede=True)
    service.commit_and_enqueue([submitted])
    return answer(envelope(with_data=False))


@bp.post("/user-cluster-update")
@require_token
def update_by_id():
    return update(by_name=False)


@bp.post("/user-cluster-update-by-name")
@require_token
def update_by_name():
    query_project()
    return update(by_name=True)


# -- detail, list, progress ------------------------------------------------------------------------


@bp.get("/user-cluster-detail")
@require_token
def detail():
    query_project()
    row = target()
    return answer(envelope(cluster_detail(row, g.project["id"], zone(), datetime.now(zone()))))


@bp.post("/user-cluster-list")
@require_token
def list_clusters():
    query = load_list(body_json())
    check_project(query["projectId"], "body")
    page, size = query["pageNum"], query["pageSize"]
    values = {"clusterCatalog": [query["clusterCatalog"]]} if query["clusterCatalog"] else {}
    if query["clusterTypes"]:
        values["clusterType"] = query["clusterTypes"]
    total, rows = cohorts.with_status(get_db(), g.project["id"], DIALECT, name_contains=query["clusterName"],
                                      body_values=values, limit=size, offset=(page - 1) * size)
    return answer(envelope({"pagerResult": {"pageNum": page, "pageSize": size, "totalNum": total},
                            "userClusters": [cluster_listed(row, g.project["id"], zone()) for row in rows]}))


def progress_of(by_name: bool):
    query_project()
    return answer(envelope({"progress": progress(target(by_name))}))


@bp.get("/user-cluster-refresh-progress")
@require_token
def refresh_progress():
    return progress_of(by_name=False)


@bp.get("/user-cluster-refresh-progress-by-name")
@require_token
def refresh_progress_by_name():
    return progress_of(by_name=True)


# -- refresh, delete -------------------------------------------------------------------------------


def refresh(by_name: bool):
    query_project()
    row = target(by_name)
    if CLUSTER_TYPES.get((row["request_body"] or {}).get("clusterType"), ("", ""))[1] == "import":
        raise TdError(-1007, f"cluster {row['id']} is built from an ID upload; upload again to change it")
    service_for(catalog_of(row)).refresh(row["id"])
    return answer(envelope(with_data=False))


@bp.post("/user-cluster-refresh")
@require_token
def refresh_by_id():
    return refresh(by_name=False)


@bp.post("/user-cluster-refresh-by-name")
@require_token
def refresh_by_name():
    return refresh(by_name=True)


def delete(by_name: bool):
    query_project()
    row = target(by_name)
    service = service_for(catalog_of(row))
    service.delete(service.get(row["id"], lock=True, dialect=DIALECT))
    return answer(envelope(with_data=False))


@bp.post("/user-cluster-delete")
@require_token
def delete_by_id():
    return delete(by_name=False)


@bp.post("/delete-user-cluster-by-name")
@require_token
def delete_by_name():
    return delete(by_name=True)


# -- ID uploads (text/csv, one ID a line) ------------------------------------------------------------


def main_column(text: str) -> str | None:
    """The match of mainColumnName: None (the user key) for TA's `#distinct_id`, else that profile property."""
    return None if text in USER_KEY_COLUMNS else text


def import_settings(*, creating: bool, stored: dict | None = None, current: dict | None = None) -> dict:
    """The upload's query parameters: displayName, mainColumnName, clusterCatalog, selectType, clusterName, remarks.

    current: the cluster a modify replaces (its catalog and, for a tag, its value type are kept).
    """
    args = {key: value.strip() for key, value in request.args.items()}
    stored = stored or {}
    display = args.get("displayName") or (None if creating else stored.get("displayName"))
    if not display:
        raise TdError(-1001, "参数(displayName)为空")
    column = args.get("mainColumnName") or (None if creating else stored.get("mainColumnName"))
    if not column:
        raise TdError(-1001, "参数(mainColumnName)为空: name the user property the IDs are values of")
    checks = ((len(display) > 50, "displayName must be at most 50 characters"),
              (len(column) > 200, "mainColumnName must be at most 200 characters"),
              (len(args.get("remarks", "")) > 500, "remarks must be at most 500 characters"))
    for failed, message in checks:
        if failed:
            raise TdError(-1001, message)
    catalog = args.get("clusterCatalog") or (catalog_of(current) if current else "catalog_cluster")
    if catalog not in ("catalog_cluster", "catalog_tag"):
        raise TdError(-1001, f"clusterCatalog must be catalog_cluster or catalog_tag, got {catalog!r}")
    if current is not None and catalog != catalog_of(current):
        raise TdError(-1007, f"cluster {current['id']} is a {catalog_of(current)}; its catalog cannot change")
    value_type = upload_value_type(args.get("selectType"), catalog, current)
    name = args.get("clusterName") if creating else None
    if name and not re.fullmatch(NAME_PATTERN, name):
        raise TdError(-1001, "clusterName: letters, digits and _ only, at most 24 characters")
    tag = catalog == "catalog_tag"
    return {"clusterName": name or f"import_{uuid.uuid4().hex[:12]}", "displayName": display,
            "mainColumnName": column, "clusterCatalog": catalog,
            "clusterType": "tag_by_import" if tag else "cluster_by_import",
            **({"selectType": value_type} if tag else {}), "remarks": args.get("remarks", stored.get("remarks", ""))}


def upload_value_type(given: str | None, catalog: str, current: dict | None) -> str:
    """A tag upload's value type: selectType (string unless given; a modify keeps the tag's); clusters are strings."""
    if catalog == "catalog_cluster":
        if given and given != "string":
            raise TdError(-1001, f"selectType {given!r} is for tag uploads (clusterCatalog=catalog_tag); a cluster"
                                 " upload has no values")
        return "string"
    if not given:
        return (current or {}).get("value_type") or "string"
    if given not in VALUE_TYPES:
        raise TdError(-1001, f"selectType must be one of {', '.join(VALUE_TYPES)}, got {given[:40]!r}")
    return given


def upload_answer(outcome) -> dict:
    counts = outcome.counts
    return {"clusterId": outcome.cohort["id"], "tagValueNullNum": counts.get("empty_values", 0),
            "unmatchedNum": counts["unmatched_ids"], "uploadNum": counts["rows"], "userNum": counts["users"]}


def upload_ids(body: dict, cohort: dict | None = None):
    """Store the body's IDs (tags: `id,value` rows) into a new cluster or tag, or as cohort's new version."""
    tag = body["clusterCatalog"] == "catalog_tag"
    service = service_for(body["clusterCatalog"])
    if cohort is not None:
        cohort = service.get(cohort["id"], lock=True, dialect=DIALECT)
    outcome = imports.import_ids(service, body_chunks(), kind="tag" if tag else "cohort",
                                 match=main_column(body["mainColumnName"]), cohort=cohort,
                                 name=None if cohort else body["clusterName"], display_name=body["displayName"],
                                 header="auto", dialect=DIALECT, request_body=body,
                                 value_type=body["selectType"] if tag else None)
    log.info("cluster=%s project=%s type=%s uploaded", outcome.cohort["id"], g.project["id"], body["clusterType"])
    return answer(envelope(upload_answer(outcome)))


@bp.post("/import-id-cluster-add")
@require_token
def import_add():
    query_project()
    return upload_ids(import_settings(creating=True))


def import_modify(by_name: bool):
    query_project()
    row = target(by_name)
    stored = row["request_body"] or {}
    if stored.get("clusterType") not in ("cluster_by_import", "tag_by_import"):
        raise TdError(-1007, f"cluster {row['id']} is a {stored.get('clusterType')} cluster, not an ID upload;"
                             " change it with /open/user-cluster-update")
    body = {**stored, **import_settings(creating=False, stored=stored, current=row), "clusterName": row["name"]}
    return upload_ids(body, row)


@bp.post("/import-id-cluster-modify")
@require_token
def import_modify_by_id():
    return import_modify(by_name=False)


@bp.post("/import-id-cluster-modify-by-name")
@require_token
def import_modify_by_name():
    return import_modify(by_name=True)
