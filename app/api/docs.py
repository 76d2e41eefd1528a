"""The OpenAPI 3 document, generated from the marshmallow schemas, and a Swagger UI page."""

from __future__ import annotations

import sys

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from app import schemas
from app.api import history, imports, tags, webhooks
from app.api.definition_schema import add_definition_schemas
from app.input_rules import MAX_PATH_INT
from cohort_engine.definition import MAX_COHORT_ID, MAX_USER_KEY
from core import dialects

bp = Blueprint("docs", __name__)

BEARER = [{"bearer": []}]
ERROR_ANSWERS = {
    "400": "invalid input (body, query parameter, path variable or header; docs/api.md); nothing was written",
    "401": "missing or invalid token",
    "403": "the body names another project than the token's",
    "404": "unknown id (or another project's), or no such route",
    "409": "conflicts with the current state (see the message)",
    "413": "request body larger than COHORTS_MAX_BODY_BYTES (ID uploads: COHORTS_IMPORT_MAX_BYTES)",
    "415": "unsupported Content-Type (ID uploads: text/csv or multipart/form-data)",
    "422": "the computation ended failed (error_code and the job in the body)",
    "503": "PostgreSQL, Redis or the project's Druid broker unreachable; nothing was written",
}


def _json(schema_name: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


def _responses(success_code: str, schema_name: str, description: str, *errors: str,
               secured: bool = True, body: bool = False) -> dict:
    """The success answer and every error answer an operation can give (all in the Errors shape)."""
    codes = ["400", *(["401"] if secured else []), "404", *errors, *(["413"] if body else []), "503"]
    answers = {success_code: {"description": description, **_json(schema_name)}}
    for code in sorted(set(codes)):
        answers[code] = {"description": ERROR_ANSWERS[code], **_json("Errors")}
    return answers


EXAMPLE_BODY = {"name": "paid_last_week", "display_name": "Paid in the last 7 days", "definition": {
    "type": "event", "event": "pay", "window": {"last": 7}, "cmp": "gte", "values": [1]}}
# PUT replaces the whole cohort: every editable field (tests/app/test_openapi_examples.py sends each example).
PUT_EXAMPLE = {**EXAMPLE_BODY, "definition": {"op": "and", "children": [
    EXAMPLE_BODY["definition"], {"type": "profile", "property": "user_level", "cmp": "gte", "values": [3]}]},
    "dynamic": True, "cron": "0 3 * * *", "owner": "analytics"}


def _operation(summary: str, responses: dict, parameters=(), body: str | None = None, example=None) -> dict:
    operation = {"summary": summary, "security": BEARER, "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body:
        operation["requestBody"] = {"required": True, **_json(body)}
        operation["requestBody"]["content"]["application/json"]["example"] = example or EXAMPLE_BODY
    return operation


RESPONSE_SCHEMAS = ("Project", "Job", "Cohort", "CohortWithJob", "CohortPage", "JobPage", "MembersPage", "Membership",
                    "Refresh", "Deleted", "Health", "Errors")


def _change_responses() -> dict:
    """PUT and PATCH: 202 with the job when the definition changed, 200 (job null) when it did not."""
    answers = _responses("202", "CohortWithJob", "updated; the job computes the new definition", "403", "409",
                         body=True)
    answers["200"] = {"description": "updated; the definition is unchanged, so no job (job: null)",
                      **_json("CohortWithJob")}
    return answers


def build_spec() -> dict:
    spec = APISpec(title="Cohort service", version="1.0.0", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Cohorts computed as asynchronous jobs. Poll GET /api/v1/jobs/{id}. "
                                        "Input rules and limits: docs/api.md. Any path also answers 405 "
                                        "(with Allow) to a method it does not have. The vendor dialects' APIs keep their "
                                        "vendors' shapes (docs/dialects/, docs/druid.md); their paths are listed here "
                                        "too. The dashboard is at /."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "the project's token: Authorization: Bearer <token>"})
    add_definition_schemas(spec)
    for name in ("CohortCreate", "CohortUpdate", "CohortPatch", *RESPONSE_SCHEMAS):
        spec.components.schema(name, schema=getattr(schemas, name + "Schema"))
    cohort_id = {"name": "cohort_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_COHORT_ID}}
    job_id = {"name": "job_id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PATH_INT}}
    user_key = {"name": "user_key", "in": "path", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER_KEY, "pattern": "^[^\\x00]+$"}}
    spec.path("/api/v1/cohorts", operations={
        "post": _operation("Create a cohort; its first version is computed by a job",
                           _responses("202", "CohortWithJob", "cohort created, job queued", "403", "409",
                                      body=True), body="CohortCreate"),
        "get": _operation("List cohorts (paged, filter by latest version status)",
                          _responses("200", "CohortPage", "a page of cohorts"),
                          [{"in": "query", "schema": schemas.CohortListQuery}]),
    })
    spec.path("/api/v1/cohorts/{cohort_id}", operations={
        "get": _operation("A cohort with its latest version", _responses("200", "Cohort", "the cohort"),
                          [cohort_id]),
        "put": _operation("Replace the whole cohort (every field required); a changed definition gets a job",
                          _change_responses(), [cohort_id], body="CohortUpdate", example=PUT_EXAMPLE),
        "patch": _operation("Change only the fields given; a changed definition gets a job",
                            _change_responses(), [cohort_id], body="CohortPatch",
                            example={"display_name": "Paid in the last 7 days"}),
        "delete": _operation("Delete a cohort and its bitmaps",
                             _responses("200", "Deleted", "deleted", "409"), [cohort_id]),
    })
    spec.path("/api/v1/cohorts/{cohort_id}/refresh", operations={
        "post": _operation("Recompute now (coalesced with a running computation)",
                           _responses("202", "Refresh", "job queued, or the running one joined"), [cohort_id])})
    members = _responses("200", "MembersPage", "members", "409")
    members["200"]["content"]["text/csv"] = {"schema": {"type": "string", "description": "one user key a line"}}
    members["200"]["headers"] = {"X-Total-Count": {"description": "number of members (text/csv)",
                                                   "schema": {"type": "integer"}}}
    spec.path("/api/v1/cohorts/{cohort_id}/members", operations={
        "get": _operation("Members: text/csv stream (one key a line) or JSON pages (format=json)", members,
                          [cohort_id, {"in": "query", "schema": schemas.MembersQuery}])})
    spec.path("/api/v1/cohorts/{cohort_id}/members/{user_key}", operations={
        "get": _operation("Is this user a member?", _responses("200", "Membership", "member or not", "409"),
                          [cohort_id, user_key])})
    spec.path("/api/v1/project", operations={
        "get": _operation("The token's project: name, time zone and rule backend (without secrets)",
                          _responses("200", "Project", "the project"))})
    spec.path("/api/v1/jobs", operations={
        "get": _operation("List jobs", _responses("200", "JobPage", "a page of jobs"),
                          [{"in": "query", "schema": schemas.JobListQuery}])})
    spec.path("/api/v1/jobs/{job_id}", operations={
        "get": _operation("Job status and progress", _responses("200", "Job", "the job"), [job_id])})
    spec.path("/api/v1/jobs/{job_id}/cancel", operations={
        "post": _operation("Cancel: a computing job stops at its next leaf and ends failed/cancelled",
                           _responses("202", "Job", "cancel requested", "409"), [job_id])})
    imports.add_paths(spec, sys.modules[__name__])
    tags.add_paths(spec, sys.modules[__name__])
    for add_paths in (history.add_paths, webhooks.add_paths):
        add_paths(spec, sys.modules[__name__], cohort_id)
    # The enabled dialects' paths (Dialect(openapi="module:attr"), called as add_paths(spec, this module)).
    for dialect in dialects.enabled(current_app.config["SETTINGS"]):
        if dialect.openapi:
            dialects.load(dialect.openapi)(spec, sys.modules[__name__])
    health = _responses("200", "Health", "all reachable", secured=False)
    health["503"] = {"description": "something is down", **_json("Health")}
    spec.path("/healthz", operations={"get": {"summary": "PostgreSQL, Redis and workers reachable",
                                              "responses": health}})
    return spec.to_dict()


def _object(description: str, **properties) -> dict:
    return {"type": "object", "description": description, **({"properties": properties} if properties else {})}


# The helpers a dialect's add_paths(spec, docs) builds its operations with.
operation, responses, object_schema = _operation, _responses, _object


@bp.get("/openapi.json")
def openapi():
    return jsonify(build_spec())


DOCS_PAGE = """<!doctype html><html><head><title>Cohort service API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>"""


@bp.get("/docs")
def docs_page():
    return DOCS_PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@bp.get("/docs/static/<path:name>")
def docs_static(name):
    return send_from_directory(swagger_ui_path, name)
