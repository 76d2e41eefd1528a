"""The Sugo /ant and embedded /druid/v2 paths of /openapi.json (registered by the dialect; called by app/api/docs.py).

The examples are the seeds' bodies pointed at the demo's targets (`make run`: the embedded broker
127.0.0.1:6061, Sugo groups in db 2 of the service's Redis, the hproxy stand-in on 127.0.0.1:8085),
which `make sugo-demo` allows for the project `default`; another project answers 400 naming the
target until an operator allows it (python -m core.manage sugo-allow).
"""

from __future__ import annotations

from dialects.sugo import tag_push
from dialects.sugo.schemas import FAILURE_STATUS

BROKER = "http://127.0.0.1:6061/druid/v2?pretty"
HPROXY = "http://127.0.0.1:8085/druid/proxy/batchupdate/ssss"
DATA_CONFIG = {"hostAndPorts": "127.0.0.1:6379", "db": 2, "clusterMode": False}
USER_GROUP_QUERY = {
    "queryType": "user_group", "dataSource": "schedule_desc", "granularity": "all", "intervals": "1000/3000",
    "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"}, "dimension": "distinct_id",
    "context": {"timeout": 180000}}
EXAMPLES = {
    "single": {"brokerUrl": BROKER, "append": False, "query": {
        **USER_GROUP_QUERY, "dataConfig": {**DATA_CONFIG, "groupId": "guangdong"}}},
    "multi": [
        {"type": "tindex", "brokerUrl": BROKER, "query": {
            **USER_GROUP_QUERY, "dataConfig": {**DATA_CONFIG, "groupId": "tmp_guangdong"}}},
        {"type": "uindex", "brokerUrl": BROKER, "op": "exclude", "query": {
            "queryType": "user_group", "dataSource": "tag_bank", "granularity": "all", "intervals": "1000/3000",
            "filter": {"type": "selector", "dimension": "ub_risk", "value": "R4"}, "dimension": "distinct_id",
            "dataConfig": {**DATA_CONFIG, "groupId": "tmp_r4"}}},
        {"type": "finalGroup", "append": False, "query": {"dataConfig": {**DATA_CONFIG, "groupId": "guangdong_not_r4"}}},
    ],
    "tag_user_group": {"hproxyUrl": HPROXY, "dataSource": "ssss", "primaryColumn": "distinct_id",
                       "userGroupConfig": {**DATA_CONFIG, "groupId": "guangdong"},
                       "dimData": {"s_test2": "sstt2233"}, "appendFlags": {"s_test2": False}},
    "tag_query": {"brokerUrl": BROKER, "hproxyUrl": HPROXY, "dataSource": "ssss",
                  "dimMap": {"distinct_id": "distinct_id", "count": "i_count"}, "appendFlags": {"i_count": False},
                  "query": {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000",
                            "granularity": "all",
                            "dimensions": [{"type": "default", "dimension": "distinct_id", "outputName": "distinct_id"}],
                            "aggregations": [{"type": "count", "name": "count"}],
                            "limitSpec": {"type": "default", "columns": [{"dimension": "distinct_id"}], "limit": 3}}},
}
DRUID_EXAMPLE = {"queryType": "timeseries", "dataSource": "schedule_desc", "granularity": "all",
                 "intervals": ["1000-01-01/3000-01-01"], "aggregations": [{"type": "count", "name": "rows"}]}
# Token, ?token= or, where the operator named a project for them (COHORTS_SUGO_PROJECT), none.
SUGO_SECURITY = [{"bearer": []}, {"sugo_token": []}, {}]
ANY = {"description": "any JSON"}


def _open(description: str, required=(), **properties) -> dict:
    """An object whose listed fields are typed; fields inside queries pass through to the broker."""
    schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def add_paths(spec, docs) -> None:
    """The Sugo user-group and tag endpoints, the embedded broker and the tag push into spec; docs is app/api/docs.py."""
    tag_push.add_paths(spec, docs)
    spec.components.security_scheme("sugo_token", {"type": "apiKey", "in": "query", "name": "token",
                                                   "description": "Sugo's spelling of the project token"})
    data_config = _open("a Sugo-format group in Redis: an allowed target of the project", ["groupId"],
                        hostAndPorts={"type": "string"}, groupId={"type": "string"}, db={"type": "integer"},
                        clusterMode={"type": "boolean"}, sentinelMode={"type": "boolean"})
    query = _open("a Druid/tindex query (user_group) whose result is written to dataConfig", ["dataConfig"],
                  dataConfig=data_config)
    spec.components.schema("SugoSingle", _open("a user group from one query", ["query"], brokerUrl={"type": "string"},
                                               broker={"type": "string"}, query=query, append={"type": "boolean"}))
    spec.components.schema("SugoMulti", {"type": "array", "minItems": 1, "items": _open(
        "a source (tindex, uindex, usergroup) or, last, the finalGroup", ["type", "query"],
        type={"type": "string", "enum": ["tindex", "uindex", "usergroup", "finalGroup"]},
        op={"type": "string", "enum": ["or", "and", "exclude"]}, brokerUrl={"type": "string"},
        broker={"type": "string"}, query=query, append={"type": "boolean"})})
    spec.components.schema("SugoTagUserGroup", _open(
        "tag values for every member of a group, sent to hproxy", ["dataSource", "userGroupConfig", "dimData"],
        hproxyUrl={"type": "string"}, hproxy={"type": "string"}, dataSource={"type": "string"},
        primaryColumn={"type": "string"}, userGroupConfig=data_config, dimData={"type": "object"},
        appendFlags={"type": "object"}))
    spec.components.schema("SugoTagQuery", _open(
        "tag values from a query's rows, sent to hproxy", ["dataSource", "query", "dimMap"],
        brokerUrl={"type": "string"}, broker={"type": "string"}, hproxyUrl={"type": "string"},
        hproxy={"type": "string"}, dataSource={"type": "string"}, dimMap={"type": "object"},
        appendFlags={"type": "object"}, query={"type": "object"}))
    spec.components.schema("SugoAnswer", {"description": "[{\"event\": {\"RowCount\": N}}] for user groups;"
                                                         " {success, failed, errors} for batch updates"})
    spec.components.schema("SugoAccepted", docs.object_schema(
        "still running: poll GET /ant/jobs/{jobId} (or /api/v1/jobs/{jobId})", jobId={"type": "integer"},
        status={"type": "string"}, progress={"type": "integer"}, job={"type": "object"}))
    spec.components.schema("SugoFailure", docs.object_schema(
        "a failed job, Druid-like: error is the job's error_code", error={"type": "string"},
        errorMessage={"type": "string"}, jobId={"type": "integer"}))
    spec.components.schema("SugoJob", docs.object_schema(
        "a Sugo job; status and answer are the HTTP status and body once it has ended (null before)",
        job={"type": "object"}, status={"type": "integer", "nullable": True}, answer=ANY))
    spec.components.schema("DruidQuery", _open("a native Druid query (docs/druid.md)", ["queryType"],
                                               queryType={"type": "string"}))
    spec.components.schema("DruidAnswer", {"description": "the query's result rows, as Druid answers (docs/druid.md)"})
    spec.components.schema("DruidError", docs.object_schema("Druid's error shape", error={"type": "string"},
                                                            errorMessage={"type": "string", "nullable": True}))

    def failure(description: str) -> dict:
        return {"description": description, "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/SugoFailure"}}}}

    def sugo_post(summary: str, body: str, example) -> dict:
        operation = docs.operation(summary, docs.responses("200", "SugoAnswer", "the job ended: the seed's answer",
                                                          body=True), body=body, example=example)
        responses = operation["responses"]
        responses["202"] = {"description": "still running after COHORTS_SUGO_WAIT_SECONDS (or ?async=true); "
                                           "Location: /api/v1/jobs/{id}",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SugoAccepted"}}}}
        codes: dict[int, list[str]] = {}
        for code, status in FAILURE_STATUS.items():
            codes.setdefault(status, []).append(code)
        for status, names in sorted(codes.items()):
            extra = "; or a refused body (Errors shape, naming the field)" if status == 400 else ""
            responses[str(status)] = failure(f"the job failed: {', '.join(names)}{extra}")
        responses["500"] = failure("the job failed: internal_error or worker_lost (docs/jobs.md)")
        responses["404"]["description"] = "COHORTS_SUGO_PROJECT names no project (token-less call)"
        operation["security"] = SUGO_SECURITY
        operation["parameters"] = [{"name": "async", "in": "query", "required": False, "schema": {
            "type": "string", "enum": ["true", "false"]}, "description": "true: answer 202 at once"}]
        return operation

    spec.path("/ant/usergroup/single", operations={"post": sugo_post(
        "Write a Sugo user group from one query", "SugoSingle", EXAMPLES["single"])})
    spec.path("/ant/usergroup/multi", operations={"post": sugo_post(
        "Combine groups and queries (or, and, exclude, left to right) into a final group", "SugoMulti",
        EXAMPLES["multi"])})
    spec.path("/ant/tag/usergroup/batchUpdate", operations={"post": sugo_post(
        "Set tag values for a group's members through hproxy", "SugoTagUserGroup", EXAMPLES["tag_user_group"])})
    spec.path("/ant/tag/query/batchUpdate", operations={"post": sugo_post(
        "Set tag values from a query's rows through hproxy", "SugoTagQuery", EXAMPLES["tag_query"])})
    job = docs.operation("A Sugo job and, once ended, its answer", docs.responses("200", "SugoJob", "the job"),
                         [{"name": "job_id", "in": "path", "required": True,
                           "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}}])
    job["security"] = SUGO_SECURITY
    spec.path("/ant/jobs/{job_id}", operations={"get": job})

    druid = docs.operation("A native Druid query over the project's embedded store (docs/druid.md)",
                           docs.responses("200", "DruidAnswer", "the result", body=True), body="DruidQuery",
                           example=DRUID_EXAMPLE)
    for code, text in (("400", "a query the broker refuses (Druid's error shape)"),
                       ("500", "the query failed inside the broker"), ("501", "a query type or feature not implemented"),
                       ("504", "context.timeout or COHORTS_DRUID_TIMEOUT_MS passed")):
        druid["responses"][code] = {"description": text, "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/DruidError"}}}}
    druid["security"] = SUGO_SECURITY
    spec.path("/druid/v2", operations={"post": druid})
    cancel = docs.operation("Cancel a query by its context.queryId (accepted, as Druid does)",
                            {"202": {"description": "accepted"}, **{c: a for c, a in docs.responses(
                                "200", "DruidAnswer", "").items() if c != "200"}},
                            [{"name": "query_id", "in": "path", "required": True, "schema": {"type": "string"}}])
    cancel["security"] = SUGO_SECURITY
    spec.path("/druid/v2/{query_id}", operations={"delete": cancel})
    datasources = docs.operation("The dataSources of the embedded broker (COHORTS_SUGO_DATASOURCES)",
                                 docs.responses("200", "DruidAnswer", "their names"))
    datasources["security"] = SUGO_SECURITY
    # DELETE /druid/v2/datasources is the cancel route of a query whose queryId is "datasources".
    cancel_named = {**cancel, "summary": "Cancel the query whose context.queryId is \"datasources\"",
                    "parameters": []}
    spec.path("/druid/v2/datasources", operations={"get": datasources, "delete": cancel_named})
