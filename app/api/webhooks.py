"""Native API, /api/v1/webhooks: register the URLs called on a project's events, and list their deliveries."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from app.api.native import json_body
from app.auth import require_project
from app.db import get_db, settings
from app.errors import ApiError
from app.schemas import DeliveryListQuery, PageQuery, WebhookCreateSchema, WebhookPatchSchema
from core import webhooks as hooks
from core.data import webhook_deliveries, webhooks
from core.services.webhooks import WebhookService

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")


def service() -> WebhookService:
    return WebhookService(get_db(), g.project, settings())


def with_secret(hook: dict) -> dict:
    return {**hooks.public(hook), "secret": hook["secret"]}


@bp.post("/webhooks")
@require_project
def create_webhook():
    data = WebhookCreateSchema().load(json_body())
    hook = service().create(data["url"], secret=data["secret"], cohort_id=data["cohort_id"], events=data["events"],
                            active=data["active"])
    return jsonify(with_secret(hook)), 201


@bp.get("/webhooks")
@require_project
def list_webhooks():
    query = PageQuery().load(request.args)
    total, rows = webhooks.list_page(get_db(), g.project["id"], limit=query["per_page"],
                                     offset=(query["page"] - 1) * query["per_page"])
    return jsonify({"total": total, "page": query["page"], "per_page": query["per_page"],
                    "webhooks": [hooks.public(h) for h in rows]})


@bp.get("/webhooks/<int:webhook_id>")
@require_project
def get_webhook(webhook_id):
    return jsonify(hooks.public(service().get(webhook_id)))


@bp.patch("/webhooks/<int:webhook_id>")
@require_project
def patch_webhook(webhook_id):
    data = WebhookPatchSchema().load(json_body())
    if not data:
        raise ApiError(400, "name at least one field to change", errors={"_body": [
            "name at least one of: " + ", ".join(webhooks.EDITABLE)]})
    hook = service().update(webhook_id, data)
    return jsonify(with_secret(hook) if "secret" in data else hooks.public(hook))


@bp.delete("/webhooks/<int:webhook_id>")
@require_project
def delete_webhook(webhook_id):
    service().delete(webhook_id)
    return jsonify({"deleted": webhook_id})


@bp.get("/webhooks/<int:webhook_id>/deliveries")
@require_project
def list_deliveries(webhook_id):
    query = DeliveryListQuery().load(request.args)
    service().get(webhook_id)
    total, rows = webhook_deliveries.list_page(get_db(), webhook_id, status=query["status"], limit=query["per_page"],
                                               offset=(query["page"] - 1) * query["per_page"])
    return jsonify({"total": total, "page": query["page"], "per_page": query["per_page"],
                    "deliveries": [hooks.public_delivery(d) for d in rows]})


EXAMPLE = {"url": "http://127.0.0.1:9000/cohort-events", "events": ["version.published", "job.failed"]}


def add_paths(spec, docs, cohort_id: dict) -> None:
    """This module's operations in /openapi.json (called by app/api/docs.py)."""
    from app import schemas
    from app.input_rules import MAX_PATH_INT

    for name in ("WebhookCreate", "WebhookPatch", "Webhook", "WebhookPage", "DeliveryPage"):
        spec.components.schema(name, schema=getattr(schemas, name + "Schema"))
    webhook_id = {"name": "webhook_id", "in": "path", "required": True,
                  "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PATH_INT}}
    allow = (" The URL's host:port must be allowed for the project first: python -m core.manage allow PROJECT "
             "--webhook HOST:PORT (the example needs 127.0.0.1:9000).")
    spec.path("/api/v1/webhooks", operations={
        "post": docs.operation("Register a webhook (project-wide, or for one cohort); the answer shows its secret "
                               "once." + allow, docs.responses("201", "Webhook", "registered", body=True),
                               body="WebhookCreate", example=EXAMPLE),
        "get": docs.operation("List the project's webhooks", docs.responses("200", "WebhookPage", "a page of webhooks"),
                              [{"in": "query", "schema": schemas.PageQuery}]),
    })
    spec.path("/api/v1/webhooks/{webhook_id}", operations={
        "get": docs.operation("A webhook", docs.responses("200", "Webhook", "the webhook"), [webhook_id]),
        "patch": docs.operation("Change a webhook's url, secret, events, cohort or active flag." + allow,
                                docs.responses("200", "Webhook", "changed", body=True), [webhook_id],
                                body="WebhookPatch", example={"active": False}),
        "delete": docs.operation("Delete a webhook and its delivery records",
                                 docs.responses("200", "Deleted", "deleted"), [webhook_id]),
    })
    spec.path("/api/v1/webhooks/{webhook_id}/deliveries", operations={
        "get": docs.operation("The webhook's deliveries, newest first, with every attempt",
                              docs.responses("200", "DeliveryPage", "a page of deliveries"),
                              [webhook_id, {"in": "query", "schema": schemas.DeliveryListQuery}])})
