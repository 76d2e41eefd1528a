"""Every request example of /openapi.json (what "Try it out" in /docs pre-fills) is accepted by its endpoint.

Against the real app and stores; jobs go to a queue no worker consumes, so the Sugo examples'
targets (the demo's: db 2 of a Redis on 127.0.0.1:6379, the hproxy stand-in) are allowed for the
test project but never contacted.
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import replace

from marshmallow import Schema

from app.api import definition_schema
from cohort_engine import db
from cohort_engine import definition as engine_definition
from core.data import sugo_targets
from core.queue import urgent_queue
from tests.services import allow_sugo_targets

# Ids in example bodies that name things which must exist: replaced by ones this test created.
SENSORS_ID_PATHS = ("/segmenter/execute", "/segmenter/status")


def examples(spec: dict):
    """(method, path, example body) of every documented request example, creating operations first."""
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in content:
                found.append((method, path, content["example"]))
    return sorted(found, key=lambda f: (f[1].count("{"), f[0] != "post"))


def test_every_documented_request_example_is_accepted(service_settings, api_project, database_url):
    from app import create_app
    from workers.celery_app import create_celery

    settings = replace(service_settings, queue="examples-" + uuid.uuid4().hex[:8], sugo_wait_seconds=0.05)
    sender = create_celery(settings)
    client = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": sender}).test_client()
    project_name, project_id, headers = api_project
    allow_sugo_targets(database_url, project_id, redis=["127.0.0.1:6379/2"], hproxy=["127.0.0.1:8085"])
    with db.connection(database_url) as conn:  # the webhook example's receiver (never called: no worker)
        sugo_targets.add(conn, project_id, "webhook", "127.0.0.1", 9000)
    try:
        check_examples(client, project_name, project_id, headers["Authorization"].split()[1])
    finally:
        # The accepted jobs were never run: nothing may run them later (a sweeper would resend a job left
        # `new`), so the project goes, with its jobs, cohorts and allowed targets, and so do their messages.
        with db.connection(database_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM jobs WHERE project_id = %s", (project_id,))
            cur.execute("DELETE FROM projects WHERE id = %s", (project_id,))
        with sender.connection_for_write() as connection:
            connection.default_channel.client.delete(settings.queue, urgent_queue(settings.queue))


def credentials(spec: dict, operation: dict, project_name: str, token: str) -> tuple[dict, dict]:
    """The headers and query parameters the operation's first documented security alternative asks for
    (Ark's appKey names the project; ThinkingData's token is a query parameter)."""
    headers, query = {}, {}
    for scheme_name in (operation.get("security") or [{}])[0]:
        scheme = spec["components"]["securitySchemes"][scheme_name]
        if scheme["type"] == "http":
            headers["Authorization"] = f"Bearer {token}"
        elif scheme["in"] == "header":
            headers[scheme["name"]] = project_name if scheme["name"] == "appKey" else token
        elif scheme["in"] == "query":
            query[scheme["name"]] = token
    return headers, query


def query_parameters(operation: dict, body, project_id: int, created: dict) -> dict:
    """Required query parameters: ThinkingData's projectId (also in bodies) is this test's project, its
    clusterId the cluster the add example created, any other its documented example."""
    if isinstance(body, dict) and "projectId" in body:
        body["projectId"] = project_id
    values = {"projectId": project_id, "clusterId": created.get("/open/user-cluster-add", 0)}
    return {p["name"]: values.get(p["name"], p.get("example")) for p in operation.get("parameters", [])
            if p.get("in") == "query" and p.get("required")}


def check_examples(client, project_name: str, project_id: int, token: str) -> None:
    spec = client.get("/openapi.json").get_json()
    created: dict[str, int] = {}
    tried = []
    for method, path, example in examples(spec):
        body = copy.deepcopy(example)
        if path in SENSORS_ID_PATHS:
            for entry in body:
                entry["id"] = created["/segmenter/rule"]
        url = path.replace("{cohort_id}", str(created.get("/api/v1/cohorts", 0))).replace(
            "{tag_id}", str(created.get("/api/v1/tags", 0)))
        operation = spec["paths"][path][method]
        headers, query = credentials(spec, operation, project_name, token)
        query.update(query_parameters(operation, body, project_id, created))
        response = getattr(client, method)(url, data=json.dumps(body), content_type="application/json",
                                           headers=headers, query_string=query)
        answer = response.get_json(silent=True)
        # Not refused as input; a state the example cannot bring about may still answer its documented 409
        # (pushing a tag that no worker has computed here).
        assert response.status_code != 400 and response.status_code < 500, (method, path, response.status_code,
                                                                              answer)
        documented = spec["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code, sorted(documented))
        tried.append(f"{method.upper()} {path}")
        if response.status_code >= 300:
            continue
        if path == "/api/v1/cohorts":
            created[path] = answer["cohort"]["id"]
        if path == "/api/v1/tags":
            created[path] = answer["tag"]["id"]
        if path == "/segmenter/rule":
            created[path] = answer["id"]
        if path == "/open/user-cluster-add":
            created[path] = answer["data"]
    # Every dialect with request bodies is there: native, Sensors, Sugo and the embedded broker.
    assert {"POST /api/v1/cohorts", "PUT /api/v1/cohorts/{cohort_id}", "POST /segmenter/rule", "POST /api/v1/tags",
            "POST /ant/usergroup/single", "POST /ant/usergroup/multi", "POST /druid/v2"} <= set(tried), tried


def test_definition_is_typed_from_the_rule_tree():
    spec_schema = definition_schema.SCHEMAS
    for name, engine_name in definition_schema.ENGINE_SCHEMAS.items():
        schema: Schema = getattr(engine_definition, engine_name)()
        documented = spec_schema[name]
        assert set(documented["properties"]) == set(schema.fields), name
        required = {field for field, f in schema.fields.items() if f.required}
        assert set(documented["required"]) == required, name
    # Every leaf kind of the engine is one of Definition's choices.
    choices = {ref["$ref"].rsplit("/", 1)[1] for ref in spec_schema["Definition"]["oneOf"]}
    kinds = {spec_schema[c]["properties"]["type"]["enum"][0] for c in choices if "type" in spec_schema[c]["properties"]}
    assert kinds == set(engine_definition.LEAF_SCHEMAS)


def test_the_create_body_references_the_definition_schema(client):
    spec = client.get("/openapi.json").get_json()
    definition = spec["components"]["schemas"]["CohortCreate"]["properties"]["definition"]
    assert definition["allOf"] == [{"$ref": "#/components/schemas/Definition"}]
    assert "Definition" in spec["components"]["schemas"]
