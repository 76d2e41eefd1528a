"""The OpenAPI 3 document, generated from the marshmallow schemas, and a Swagger UI page."""

from __future__ import annotations

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from app import schemas

bp = Blueprint("docs", __name__)

BEARER = [{"bearer": []}]


def _json(schema_name: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


def _responses(success_code: str, schema_name: str, description: str) -> dict:
    return {
        success_code: {"description": description, **_json(schema_name)},
        "400": {"description": "invalid input; nothing was written", **_json("Errors")},
        "401": {"description": "missing or invalid token"},
        "404": {"description": "unknown id (or another project's)"},
        "503": {"description": "PostgreSQL or Redis unreachable; nothing was written"},
    }


def _change_responses() -> dict:
    """PUT and PATCH: 202 with the job when the definition changed, 200 (job null) when it did not."""
    return {**_responses("202", "CohortWithJob", "updated; the job computes the new definition"),
            "200": {"description": "updated; the definition is unchanged, so no job (job: null)",
                    **_json("CohortWithJob")},
            "403": {"description": "`project` names another project than the token's"},
            "409": {"description": "another cohort of the project has that name"}}


def build_spec() -> dict:
    spec = APISpec(title="Cohort service", version="1.0.0", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Cohorts computed as asynchronous jobs. Poll GET /api/v1/jobs/{id}."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name in ("Job", "Cohort", "CohortCreate", "CohortUpdate", "CohortPatch", "CohortWithJob", "Errors"):
        spec.components.schema(name, schema=getattr(schemas, name + "Schema"))
    cohort_id = {"name": "cohort_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    spec.path("/api/v1/cohorts", operations={
        "post": {"summary": "Create a cohort; its first version is computed by a job", "security": BEARER,
                 "requestBody": {"required": True, **_json("CohortCreate")},
                 "responses": _responses("202", "CohortWithJob", "cohort created, job queued")},
        "get": {"summary": "List cohorts (paged, filter by latest version status)", "security": BEARER,
                "parameters": [{"in": "query", "schema": schemas.CohortListQuery}],
                "responses": {"200": {"description": "a page of cohorts"}}},
    })
    spec.path("/api/v1/cohorts/{cohort_id}", operations={
        "get": {"summary": "A cohort with its latest version", "security": BEARER, "parameters": [cohort_id],
                "responses": _responses("200", "Cohort", "the cohort")},
        "put": {"summary": "Replace the whole cohort (every field required); a changed definition gets a job",
                "security": BEARER, "parameters": [cohort_id], "requestBody": {"required": True, **_json("CohortUpdate")},
                "responses": _change_responses()},
        "patch": {"summary": "Change only the fields given; a changed definition gets a job", "security": BEARER,
                  "parameters": [cohort_id], "requestBody": {"required": True, **_json("CohortPatch")},
                  "responses": _change_responses()},
        "delete": {"summary": "Delete a cohort and its bitmaps", "security": BEARER, "parameters": [cohort_id],
                   "responses": {"200": {"description": "deleted"}, "409": {"description": "referenced by others"}}},
    })
    spec.path("/api/v1/cohorts/{cohort_id}/refresh", operations={
        "post": {"summary": "Recompute now (coalesced with a running computation)", "security": BEARER,
                 "parameters": [cohort_id], "responses": {"202": {"description": "{job, coalesced}"}}}})
    spec.path("/api/v1/cohorts/{cohort_id}/members", operations={
        "get": {"summary": "Members: text/csv stream (one key a line) or JSON pages (format=json)",
                "security": BEARER, "parameters": [cohort_id, {"in": "query", "schema": schemas.MembersQuery}],
                "responses": {"200": {"description": "members"}, "409": {"description": "not computed yet"}}}})
    spec.path("/api/v1/cohorts/{cohort_id}/members/{user_key}", operations={
        "get": {"summary": "Is this user a member?", "security": BEARER,
                "parameters": [cohort_id, {"name": "user_key", "in": "path", "required": True,
                                           "schema": {"type": "string"}}],
                "responses": {"200": {"description": '{"member": true|false}'}}}})
    spec.path("/api/v1/jobs", operations={
        "get": {"summary": "List jobs", "security": BEARER,
                "parameters": [{"in": "query", "schema": schemas.JobListQuery}],
                "responses": {"200": {"description": "a page of jobs"}}}})
    spec.path("/api/v1/jobs/{job_id}", operations={
        "get": {"summary": "Job status and progress", "security": BEARER, "parameters": [job_id],
                "responses": _responses("200", "Job", "the job")}})
    spec.path("/api/v1/jobs/{job_id}/cancel", operations={
        "post": {"summary": "Cancel: a computing job stops at its next leaf and ends failed/cancelled",
                 "security": BEARER, "parameters": [job_id],
                 "responses": {"202": {"description": "cancel requested"}, "409": {"description": "already ended"}}}})
    spec.path("/healthz", operations={
        "get": {"summary": "PostgreSQL, Redis and workers reachable", "responses": {
            "200": {"description": "all reachable"}, "503": {"description": "something is down"}}}})
    return spec.to_dict()


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
