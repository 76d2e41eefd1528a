"""The ThinkingData /open paths of /openapi.json (registered by the dialect; called by app/api/docs.py)."""

from __future__ import annotations

from cohort_engine.definition import MAX_COHORT_ID
from cohort_engine.tag_definition import VALUE_TYPES
from dialects.thinkingdata.answers import CODES
from dialects.thinkingdata.translate import CATALOGS, CLUSTER_TYPES, NAME_PATTERN, TAG_KINDS

# Query text may not carry NUL or lone surrogates (app/input_rules.py refuses them everywhere).
TEXT = "^[^\\x00]*$"
TOKEN = {"name": "token", "in": "query", "required": False, "schema": {"type": "string", "pattern": TEXT},
         "description": "the project's token (or Authorization: Bearer); missing: return_code -1008"}
PROJECT = {"name": "projectId", "in": "query", "required": True,
           "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "description": "the token's project id"}
CLUSTER_ID = {"name": "clusterId", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_COHORT_ID}}
CLUSTER_NAME = {"name": "clusterName", "in": "query", "schema": {"type": "string", "pattern": f"^ *{NAME_PATTERN} *$"},
                "example": "recent_7_days_consume"}  # the add example's name, so "Try it out" finds it
EVENT = {
    "type": "object", "required": ["eventName", "taPropQuota"],
    "properties": {
        "eventName": {"type": "string"}, "comparator": {"type": "string"}, "uceCalcuSymbol": {"type": "string"},
        "num": {"type": "string"}, "recentDay": {"type": "string", "example": "1-7"},
        "startTime": {"type": "string"}, "endTime": {"type": "string"},
        "taPropQuota": {"type": "object", "properties": {"analysis": {"type": "string"}, "quota": {"type": "string"}}},
        "filts": {"type": "array", "items": {"$ref": "#/components/schemas/TdFilter"}},
        "relation": {"type": "string", "enum": ["and", "or"]}},
}
FILTER = {
    "type": "object", "required": ["columnName"],
    "properties": {"columnName": {"type": "string"}, "comparator": {"type": "string"},
                   "calcuSymbol": {"type": "string"}, "ftv": {"type": "array", "items": {"type": "string"}},
                   "tableType": {"type": "string", "enum": ["event", "user"]}},
}
UPLOAD_SETTINGS = [
    {"name": "displayName", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": 50,
                                                      "pattern": TEXT}},
    {"name": "mainColumnName", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                                                         "pattern": TEXT},
     "description": "the profile property the IDs are values of (#account_id), or #distinct_id for the user key"},
    {"name": "remarks", "in": "query", "schema": {"type": "string", "maxLength": 500, "pattern": TEXT}},
    {"name": "selectType", "in": "query", "schema": {"type": "string", "enum": list(VALUE_TYPES)},
     "description": "a tag upload's value type (default string; a modify keeps the tag's); clusters: string only"},
]
QP = {
    "type": "object", "description": "a condition cluster (docs/dialects/thinkingdata.md)",
    "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/TdEvent"}},
                   "event_relation": {"type": "string", "enum": ["and", "or"]},
                   "filts": {"type": "array", "items": {"$ref": "#/components/schemas/TdFilter"}},
                   "relation": {"type": "string", "enum": ["and", "or"]},
                   "event_user_relation": {"type": "string", "enum": ["and", "or"]}},
}
CLUSTER = {
    "type": "object", "required": ["projectId", "clusterName", "displayName"],
    "properties": {
        "projectId": {"type": "integer", "description": "the token's project id"},
        "clusterName": {"type": "string", "pattern": f"^{NAME_PATTERN}$"},
        "clusterCatalog": {"type": "string", "enum": list(CATALOGS)},
        "clusterType": {"type": "string", "enum": list(CLUSTER_TYPES)},
        "displayName": {"type": "string", "minLength": 1, "maxLength": 50},
        "remarks": {"type": "string", "maxLength": 500},
        "subConditionTabType": {"type": "string", "enum": list(TAG_KINDS)},
        "qp": {"$ref": "#/components/schemas/TdQp"}, "tagQp": {"type": "object"}},
}
UPDATE = {**CLUSTER, "required": ["projectId"]}
LIST = {
    "type": "object", "required": ["projectId"],
    "properties": {
        "projectId": {"type": "integer"}, "clusterCatalog": {"type": "string", "enum": list(CATALOGS)},
        "clusterName": {"type": "string", "maxLength": 200, "description": "a part of the name (any case)"},
        "clusterTypes": {"type": "array", "items": {"type": "string", "enum": list(CLUSTER_TYPES)}},
        "pagerHeader": {"type": "object", "properties": {
            "pageNum": {"type": "integer", "minimum": 1, "maximum": 10**6},
            "pageSize": {"type": "integer", "minimum": 1, "maximum": 1000}}}},
}
ANSWER = {
    "type": "object", "required": ["return_code", "return_message"],
    "description": "ThinkingData's envelope: return_code 0 and data on success, a negative code otherwise",
    "properties": {"return_code": {"type": "integer"}, "return_message": {"type": "string"}, "data": {}},
}
SEED_CLUSTER = {
    "projectId": 1, "clusterName": "recent_7_days_consume", "clusterCatalog": "catalog_cluster",
    "clusterType": "cluster_by_static_condition", "displayName": "recent_7_days_consume",
    "qp": {"events": [{"comparator": "greater", "eventName": "consume_item", "num": "4", "recentDay": "1-7",
                       "taPropQuota": {"analysis": "TIMES"}}],
           "event_relation": "and",
           "filts": [{"columnName": "user_level", "comparator": "equal", "ftv": ["3"], "tableType": "user"}],
           "relation": "and", "event_user_relation": "and"}}


def _responses(description: str) -> dict:
    """Every status a /open path answers, each with the envelope (error codes: docs/dialects/thinkingdata.md)."""
    answers = {"200": {"description": description}}
    for status in sorted({status for status, _ in CODES.values() if status != 500}):
        meanings = sorted({meaning for code, (code_status, meaning) in CODES.items() if code_status == status})
        answers[str(status)] = {"description": "; ".join(meanings)}
    answers["413"] = {"description": "body larger than COHORTS_MAX_BODY_BYTES"}
    return {status: {**entry, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TdAnswer"}}}}
            for status, entry in answers.items()}


def _upload(summary: str, parameters: list) -> dict:
    """An ID-upload operation: query settings and a text/csv body, one ID a line (tags: `id,value`)."""
    operation = _operation(summary, [*parameters, *UPLOAD_SETTINGS])
    operation["requestBody"] = {"required": True, "content": {"text/csv": {
        "schema": {"type": "string", "description": "one ID a line, or `id,value` rows for a tag (UTF-8; a header"
                                                    " line naming the column is skipped)"},
        "example": "acc0000001\nacc0000002\n"}}}
    return operation


def _operation(summary: str, parameters: list, body: str | None = None, example=None) -> dict:
    operation = {"summary": summary, "tags": ["ThinkingData"], "security": [{"bearer": []}, {}],
                 "parameters": [TOKEN, *parameters], "responses": _responses("success (return_code 0)")}
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}, "example": example}}}
    return operation


def add_paths(spec, docs) -> None:
    """The ThinkingData user cluster API (seed 002 shapes) into spec; docs is app/api/docs.py."""
    for name, schema in (("TdFilter", FILTER), ("TdEvent", EVENT), ("TdQp", QP), ("TdCluster", CLUSTER),
                         ("TdClusterUpdate", UPDATE), ("TdList", LIST), ("TdAnswer", ANSWER)):
        spec.components.schema(name, schema)
    either = [CLUSTER_ID, CLUSTER_NAME]
    by_id = [{**CLUSTER_ID, "required": True}]
    by_name = [{**CLUSTER_NAME, "required": True}]
    update_example = {key: value for key, value in SEED_CLUSTER.items() if key != "clusterName"}
    paths = {
        "/open/user-cluster-add": {"post": _operation(
            "Add a condition cluster; it computes at once (data: its id)", [], "TdCluster", SEED_CLUSTER)},
        "/open/user-cluster-detail": {"get": _operation("A cluster by clusterId or clusterName", [PROJECT, *either])},
        "/open/user-cluster-update": {"post": _operation(
            "Change a cluster's definition or settings; it recomputes", by_id, "TdClusterUpdate", update_example)},
        "/open/user-cluster-update-by-name": {"post": _operation(
            "The same, by clusterName", [PROJECT, *by_name], "TdClusterUpdate", update_example)},
        "/open/user-cluster-delete": {"post": _operation("Delete a cluster", [PROJECT, *by_id])},
        "/open/delete-user-cluster-by-name": {"post": _operation("Delete a cluster by name", [PROJECT, *by_name])},
        "/open/user-cluster-list": {"post": _operation(
            "A page of the project's clusters", [], "TdList",
            {"projectId": 1, "clusterCatalog": "catalog_cluster", "clusterName": "recent",
             "clusterTypes": ["cluster_by_dynamic_condition", "cluster_by_static_condition"],
             "pagerHeader": {"pageNum": 1, "pageSize": 10}})},
        "/open/user-cluster-refresh": {"post": _operation("Recompute a cluster now", [PROJECT, *by_id])},
        "/open/user-cluster-refresh-by-name": {"post": _operation("Recompute by name", [PROJECT, *by_name])},
        "/open/user-cluster-refresh-progress": {"get": _operation(
            "progress: 0-99 computing, 100 done, -1 failed", [PROJECT, *by_id])},
        "/open/user-cluster-refresh-progress-by-name": {"get": _operation("The same, by name", [PROJECT, *by_name])},
    }
    new_upload = [PROJECT, {"name": "clusterName", "in": "query", "schema": {"type": "string", "pattern": f"^{NAME_PATTERN}$"}},
                  {"name": "clusterCatalog", "in": "query", "schema": {"type": "string", "enum": list(CATALOGS)},
                   "description": "catalog_cluster (default): one ID a line; catalog_tag: `id,value` rows"}]
    paths["/open/import-id-cluster-add"] = {"post": _upload(
        "A cluster of the uploaded IDs (data: clusterId, uploadNum, userNum, unmatchedNum, tagValueNullNum)", new_upload)}
    paths["/open/import-id-cluster-modify"] = {"post": _upload("Replace an upload cluster's IDs", [PROJECT, *by_id])}
    paths["/open/import-id-cluster-modify-by-name"] = {"post": _upload("The same, by name", [PROJECT, *by_name])}
    for path, operations in paths.items():
        spec.path(path, operations=operations)
