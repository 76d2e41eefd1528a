"""The Analysys Ark `/uba/api/cohort` paths of /openapi.json (registered by the dialect; called by app/api/docs.py)."""

from __future__ import annotations

# The routes' ids have at most 18 digits (app/input_rules.py); beyond a cohort id they are answered 400.
MAX_PATH_INT = 10**18 - 1

# Ark clients send `token`; a Bearer token works too (app/auth.py). appKey goes with either.
ARK_SECURITY = [{"arkToken": [], "arkAppKey": []}, {"bearer": [], "arkAppKey": []}]
ARK_ERROR_ANSWERS = {
    "400": "invalid input, no such cohort of this project (Ark answers a missing object with 400), or (code 50101)"
           " a cohort of the project already has this name; nothing was written",
    "401": "missing or wrong token / appKey pair",
    "404": "no such API (a path that is not one of these)",
    "413": "request body larger than COHORTS_MAX_BODY_BYTES",
    "415": "the body is not sent as Content-Type: application/json",
    "503": "PostgreSQL or Redis unreachable; nothing was written",
}
ARK_ERROR = {
    "type": "object", "required": ["code", "message"],
    "description": "Ark's error body: code (the HTTP status, or 50101 for a taken name), message, data (field -> "
                   "messages)",
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                   "data": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}},
}
ARK_RULE = {"type": "object", "required": ["type", "expression", "function"],
            "description": "a user rule (user.<property>) or an event rule (event.<event>[.<property>]);"
                           " docs/dialects/ark.md"}
ARK_CONTENT = {
    "type": "object", "required": ["ruleGroup"],
    "properties": {
        "ruleGroup": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
            "type": "object", "required": ["rules"],
            "properties": {"rules": {"type": "array", "minItems": 1, "maxItems": 100, "items": ARK_RULE},
                           "relation": {"type": "string", "enum": ["AND", "OR"]}}}},
        "relations": {"type": "array", "items": {"type": "string", "enum": ["AND", "AND_NOT"]}},
    },
}
ARK_CREATE = {
    "type": "object", "required": ["name", "dynamic", "content"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                   "dynamic": {"type": "integer", "enum": [0, 1],
                               "description": "1: recomputed daily at the project's refresh time; 0: once"},
                   "content": ARK_CONTENT},
}
ARK_EXAMPLE = {
    "name": "apiTest02", "dynamic": 0, "content": {
        "ruleGroup": [
            {"rules": [
                {"type": "user", "expression": "user.xwho", "function": "NOT_NULL", "params": []},
                {"type": "user", "expression": "user.$email", "function": "NOT_EQ", "params": ["xx1", "xx2"]},
                {"type": "user", "expression": "user.$signup_time", "function": "RELATIVE_TIME_OF_CUURENT",
                 "params": ["30", "day", "within"]}], "relation": "AND"},
            {"rules": [
                {"type": "event", "expression": "event.$startup", "eventAbsoluteTimeParams": ["2019-09-09", "2019-09-15"],
                 "aggregator": "TOTAL_COUNT", "function": "GTE", "params": [0]}], "relation": "AND"}],
        "relations": ["AND"]}}


def _answers(docs, success: str, description: str, *errors: str) -> dict:
    answers = {"200": {"description": description, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{success}"}}}}}
    ark, service = {"$ref": "#/components/schemas/ArkError"}, {"$ref": "#/components/schemas/Errors"}
    for code in sorted({"400", "401", "404", "503", *errors}):
        # A path the router does not match (an id of more than 18 digits, no such path) is answered by the
        # service in its own shape, also when the app-wide input rules refuse it first (400).
        schema = service if code == "404" else {"anyOf": [ark, service]} if code == "400" else ark
        answers[code] = {"description": ARK_ERROR_ANSWERS[code], "content": {"application/json": {"schema": schema}}}
    return answers


def _operation(docs, summary: str, answers: dict, parameters=(), body: str | None = None) -> dict:
    operation = docs.operation(summary, answers, parameters, body=body, example=ARK_EXAMPLE if body else None)
    operation["security"] = ARK_SECURITY
    return operation


def add_paths(spec, docs) -> None:
    """The Ark cohort API (4.5 shapes, docs/dialects/ark.md) into spec; docs is app/api/docs.py."""
    spec.components.security_scheme("arkToken", {"type": "apiKey", "in": "header", "name": "token",
                                                 "description": "the project's API token (Bearer also works)"})
    spec.components.security_scheme("arkAppKey", {"type": "apiKey", "in": "header", "name": "appKey",
                                                  "description": "the project's name or app key"})
    spec.components.schema("ArkError", ARK_ERROR)
    spec.components.schema("ArkCohortCreate", ARK_CREATE)
    spec.components.schema("ArkCreated", docs.object_schema(
        "the new cohort", id={"type": "integer"}, code={"type": "string"}, name={"type": "string"},
        dynamic={"type": "integer"}, createTime={"type": "string"}, content={"type": "object"}))
    cohort = docs.object_schema(
        "a cohort; with needMore=true also source, createdTime, createdUser, updatedTime, content",
        id={"type": "integer"}, code={"type": "string"}, name={"type": "string"}, dynamic={"type": "integer"},
        userNumber={"type": "integer"}, status={"type": "string", "enum": ["success", "failed", "calculating"]},
        calculatedTime={"type": "string", "nullable": True})
    spec.components.schema("ArkCohort", cohort)
    spec.components.schema("ArkCohorts", {"type": "array", "items": cohort})
    spec.components.schema("ArkRecalculate", docs.object_schema("recomputing", id={"type": "integer"},
                                                                status={"type": "string"}))
    spec.components.schema("ArkDeleted", docs.object_schema("deleted", success={"type": "integer"}))
    cohort_id = {"name": "cohort_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PATH_INT}}
    need_more = {"name": "needMore", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["true", "True", "TRUE", "1", "false", "False", "FALSE", "0", ""]}}
    login_user = {"name": "loginUser", "in": "query", "required": False,
                  "schema": {"type": "string", "maxLength": 200}, "description": "the acting user (creator)"}
    status = {"name": "status", "in": "query", "required": False,
              "schema": {"type": "string", "enum": ["success", "failed", "calculating", ""]}}
    spec.path("/uba/api/cohort", operations={
        "post": _operation(docs, "Create a cohort from Ark rules; it is computed now (and daily when dynamic)",
                           _answers(docs, "ArkCreated", "created; being computed", "413", "415"),
                           [login_user], body="ArkCohortCreate"),
        "get": _operation(docs, "Every Ark cohort of the project, optionally by status",
                          _answers(docs, "ArkCohorts", "the cohorts"), [need_more, status]),
    })
    spec.path("/uba/api/cohort/{cohort_id}", operations={
        "get": _operation(docs, "One cohort", _answers(docs, "ArkCohort", "the cohort"), [cohort_id, need_more]),
        "delete": _operation(docs, "Delete a cohort (only its creator: see loginUser)",
                             _answers(docs, "ArkDeleted", "deleted"), [cohort_id, login_user]),
    })
    spec.path("/uba/api/cohort/{cohort_id}/recalculate", operations={
        "post": _operation(docs, "Recompute a cohort now (joins a running computation)",
                           _answers(docs, "ArkRecalculate", "recomputing"), [cohort_id])})
