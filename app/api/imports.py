"""Native ID-import endpoints, /api/v1: upload an ID file into a cohort, or store it for use by id (docs/imports.md)."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from marshmallow import Schema, fields, validate

from app.api.native import cohort_view
from app.api.tags import tag_service, tag_view
from app.auth import require_project
from app.db import get_db, settings
from app.errors import ApiError
from app.schemas import NAME
from app.services import cohort_service
from cohort_engine.imports import iter_stream
from cohort_engine.tag_definition import VALUE_TYPES
from core.data import jobs, uploads
from core.fields import StrictBoolean
from core.services import imports

bp = Blueprint("imports", __name__, url_prefix="/api/v1")

CSV_TYPES = ("text/csv", "text/plain", "application/octet-stream")
HEADER = validate.OneOf(("auto", "true", "false"))


VALUE_TYPE = validate.OneOf(VALUE_TYPES)


class UploadQuery(Schema):
    kind = fields.String(load_default="cohort", validate=validate.OneOf(("cohort", "tag")),
                         metadata={"description": "cohort: one ID a line; tag: ID,value rows"})
    type = fields.String(load_default=None, validate=VALUE_TYPE, metadata={
        "description": "tag uploads: the value type the values are checked against"})
    header = fields.String(load_default="auto", validate=HEADER, metadata={
        "description": "auto: the first row is a header if its first field names an ID column (docs/imports.md)"})


class ImportQuery(Schema):
    match = fields.String(load_default=None, validate=validate.Length(min=1, max=200), metadata={
        "description": "a profile property the IDs are values of (e.g. #account_id); default: the user key"})
    keep_unmatched = StrictBoolean(load_default=False, spellings={"true": True, "false": False}, metadata={
        "description": "add IDs that match no user as new users (matching on the user key only)"})
    header = fields.String(load_default="auto", validate=HEADER)
    display_name = fields.String(load_default=None, validate=validate.Length(max=200))


class ImportCreateQuery(ImportQuery):
    name = fields.String(required=True, validate=NAME)


class TagImportQuery(ImportQuery):
    type = fields.String(load_default=None, validate=VALUE_TYPE, metadata={
        "description": "the tag's value type (default: the tag's own when replacing)"})


class TagImportCreateQuery(TagImportQuery):
    name = fields.String(required=True, validate=NAME)
    type = fields.String(required=True, validate=VALUE_TYPE, metadata={"description": "the tag's value type"})


def query_args(schema: Schema) -> dict:
    return schema.load(request.args.to_dict())


def body_chunks():
    """The ID file of the request as byte chunks: a text/csv body, or the `file` part of a multipart form."""
    limit = settings().import_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the upload is larger than {limit} bytes, the import limit (COHORTS_IMPORT_MAX_BYTES);"
                            " nothing was read")
    # Uploads have a limit of their own, above the app's JSON body limit (docs/imports.md "Limits").
    request.max_content_length = limit
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise ApiError(400, "invalid input; nothing was written",
                           errors={"file": ["send the ID file as the multipart part named `file`"]})
        return iter_stream(upload.stream)
    if mimetype in CSV_TYPES or not mimetype:
        return iter_stream(request.stream)
    raise ApiError(415, f"send the ID file as a text/csv body or a multipart/form-data part `file`, not {mimetype}")


def upload_view(upload: dict) -> dict:
    return {"id": upload["id"], "kind": upload["kind"], "rows": upload["rows"], "distinct": upload["distinct_ids"],
            "duplicates": upload["duplicates"], "empty_values": upload["empty_values"], "bytes": upload["bytes"],
            "created_at": upload["created_at"].isoformat()}


@bp.post("/uploads")
@require_project
def create_upload():
    query = query_args(UploadQuery())
    upload = imports.store_upload(cohort_service(), body_chunks(), kind=query["kind"], header=query["header"],
                                  value_type=query["type"])
    return jsonify({"upload": upload_view(upload)}), 201


@bp.get("/uploads/<int:upload_id>")
@require_project
def get_upload(upload_id):
    upload = uploads.get(get_db(), g.project["id"], upload_id)
    if upload is None:
        raise ApiError(404, f"upload {upload_id} not found")
    return jsonify({"upload": upload_view(upload)})


def outcome_view(outcome) -> dict:
    return {"cohort": cohort_view(outcome.cohort), "job": jobs.public(outcome.job), "counts": outcome.counts}


@bp.post("/cohorts/import")
@require_project
def import_cohort():
    query = query_args(ImportCreateQuery())
    outcome = imports.import_ids(cohort_service(), body_chunks(), match=query["match"],
                                 keep_unmatched=query["keep_unmatched"], name=query["name"],
                                 display_name=query["display_name"], header=query["header"],
                                 request_body={"import": dict(request.args)})
    return jsonify(outcome_view(outcome)), 202


@bp.put("/cohorts/<int:cohort_id>/import")
@require_project
def replace_import(cohort_id):
    query = query_args(ImportQuery())
    service = cohort_service()
    cohort = service.get(cohort_id, lock=True)
    outcome = imports.import_ids(service, body_chunks(), match=query["match"], keep_unmatched=query["keep_unmatched"],
                                 cohort=cohort, display_name=query["display_name"], header=query["header"],
                                 request_body={"import": dict(request.args)})
    return jsonify(outcome_view(outcome)), 202


def tag_outcome_view(outcome) -> dict:
    return {"tag": tag_view(outcome.cohort), "job": jobs.public(outcome.job), "counts": outcome.counts}


@bp.post("/tags/import")
@require_project
def import_tag():
    query = query_args(TagImportCreateQuery())
    outcome = imports.import_ids(tag_service(), body_chunks(), kind="tag", match=query["match"],
                                 keep_unmatched=query["keep_unmatched"], name=query["name"],
                                 display_name=query["display_name"], header=query["header"], value_type=query["type"],
                                 request_body={"import": dict(request.args)})
    return jsonify(tag_outcome_view(outcome)), 202


@bp.put("/tags/<int:tag_id>/import")
@require_project
def replace_tag_import(tag_id):
    query = query_args(TagImportQuery())
    service = tag_service()
    tag = service.get(tag_id, lock=True)
    outcome = imports.import_ids(service, body_chunks(), kind="tag", match=query["match"],
                                 keep_unmatched=query["keep_unmatched"], cohort=tag, display_name=query["display_name"],
                                 header=query["header"], value_type=query["type"],
                                 request_body={"import": dict(request.args)})
    return jsonify(tag_outcome_view(outcome)), 202


# -- /openapi.json --------------------------------------------------------------------------------

EXAMPLE_FILE = "user_key\nu1\nu2\nu2\n"
EXAMPLE_TAG_FILE = "user_key,value\nu1,gold\nu2,silver\n"


def _csv_body(example: str = EXAMPLE_FILE) -> dict:
    schema = {"type": "string", "description": "one ID a line (tags: ID,value); optional header; UTF-8 (BOM "
                                               "allowed), LF or CRLF"}
    return {"required": True, "content": {
        "text/csv": {"schema": schema, "example": example},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}}}}


def add_paths(spec, docs) -> None:
    """The import paths of /openapi.json (called by app/api/docs.py)."""
    spec.components.schema("Upload", docs.object_schema(
        "a stored ID file", upload=docs.object_schema("id, kind, rows, distinct, duplicates, bytes, created_at")))
    spec.components.schema("ImportAnswer", docs.object_schema(
        "the import cohort, the job computing its version, and the upload's counts",
        cohort={"type": "object"}, job={"type": "object"},
        counts=docs.object_schema("rows, distinct, duplicates, bytes, matched_ids, unmatched_ids, users, "
                                  "kept_as_new_users, upload_id")))
    cohort_id = {"name": "cohort_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}
    upload_id = {"name": "upload_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}

    def with_body(operation: dict, example: str = EXAMPLE_FILE) -> dict:
        operation["requestBody"] = _csv_body(example)
        return operation

    spec.components.schema("TagImportAnswer", docs.object_schema(
        "the import tag, the job computing its version, and the upload's counts (with empty_values)",
        tag={"type": "object"}, job={"type": "object"}, counts={"type": "object"}))
    tag_id = {"name": "tag_id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}
    spec.path("/api/v1/tags/import", operations={"post": with_body(docs.operation(
        "Create an import tag from ID,value rows; its version is computed by a job",
        docs.responses("202", "TagImportAnswer", "tag created, job queued", "409", "413", "415"),
        [{"in": "query", "schema": TagImportCreateQuery}]), EXAMPLE_TAG_FILE)})
    spec.path("/api/v1/tags/{tag_id}/import", operations={"put": with_body(docs.operation(
        "Replace an import tag's rows with a new file: a new version, computed by a job",
        docs.responses("202", "TagImportAnswer", "replaced, job queued", "409", "413", "415"),
        [tag_id, {"in": "query", "schema": TagImportQuery}]), EXAMPLE_TAG_FILE)})

    spec.path("/api/v1/uploads", operations={"post": with_body(docs.operation(
        "Store an ID file for use by id (an import leaf's upload_id; Sensors rule types 5)",
        docs.responses("201", "Upload", "stored", "413", "415"), [{"in": "query", "schema": UploadQuery}]))})
    spec.path("/api/v1/uploads/{upload_id}", operations={"get": docs.operation(
        "A stored ID file's counts", docs.responses("200", "Upload", "the upload"), [upload_id])})
    spec.path("/api/v1/cohorts/import", operations={"post": with_body(docs.operation(
        "Create an import cohort from an ID file; its version is computed by a job",
        docs.responses("202", "ImportAnswer", "cohort created, job queued", "409", "413", "415"),
        [{"in": "query", "schema": ImportCreateQuery}]))})
    spec.path("/api/v1/cohorts/{cohort_id}/import", operations={"put": with_body(docs.operation(
        "Replace a cohort's IDs with a new file: a new version, computed by a job",
        docs.responses("202", "ImportAnswer", "replaced, job queued", "409", "413", "415"),
        [cohort_id, {"in": "query", "schema": ImportQuery}]))})
