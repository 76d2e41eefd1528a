"""The Sensors segmenter paths of /openapi.json (registered by the dialect; called by app/api/docs.py)."""

from __future__ import annotations

from cohort_engine.definition import MAX_COHORT_ID

SENSORS_INTEGER_ID = {"type": "integer", "minimum": 1, "maximum": MAX_COHORT_ID}
SENSORS_RULE = {
    "type": "object", "required": ["id", "name", "cname", "type"], "additionalProperties": False,
    "description": "a segmenter rule (docs/dialects/sensors.md); content is the Sensors rule tree",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": MAX_COHORT_ID, "description": "0 creates a rule"},
        "name": {"type": "string"}, "cname": {"type": "string"}, "type": {"type": "integer", "enum": [0, 1, 5, 6]},
        "app_push_list": {"type": "array", "items": {"type": "integer"}},
        "dir_id": {"type": "integer", "nullable": True},
        "scheduler": {"type": "object", "required": ["running", "cron"], "additionalProperties": False,
                      "properties": {"running": {"type": "boolean"}, "cron": {"type": "string"},
                                     "execute_cron": {"type": "string"}}},
        "content": {"type": "object", "nullable": True},
        # Fields of a listed rule, ignored when it is posted back.
        **{name: {"description": "ignored (listing only)"} for name in
           ("user_name", "create_time", "failed_partition_count", "last_partition")},
    },
}
SENSORS_PARTITIONS = {
    "type": "array", "minItems": 1, "description": "rules and their base times (project local time)",
    "items": {"type": "object", "required": ["id", "base_time_list"], "additionalProperties": False,
              "properties": {"id": SENSORS_INTEGER_ID,
                             "base_time_list": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {
                                 "type": "string", "description": "YYYY-MM-DD HH:MM:SS"}}}},
}


def add_paths(spec, docs) -> None:
    """The Sensors segmenter API (v1.13 shapes, docs/dialects/sensors.md) into spec; docs is app/api/docs.py."""
    spec.components.schema("SegmenterRule", SENSORS_RULE)
    spec.components.schema("SegmenterPartitions", SENSORS_PARTITIONS)
    spec.components.schema("SegmenterSaved", docs.object_schema("the rule's id and its next (or only) base time",
                                                     id={"type": "integer"},
                                                     base_time={"type": "string", "nullable": True}))
    spec.components.schema("SegmenterEmpty", docs.object_schema("nothing more to say"))
    spec.components.schema("SegmenterStatus", {"type": "array", "items": docs.object_schema(
        "one rule's partitions", id={"type": "integer"}, result={"type": "array", "items": {"type": "object"}})})
    spec.components.schema("SegmenterRuleView", docs.object_schema("a rule as listed"))
    spec.components.schema("SegmenterRules", docs.object_schema("every rule of the project", total={"type": "integer"},
                                                     result={"type": "array", "items": {"type": "object"}}))
    rule_id = {"name": "cohort_id", "in": "path", "required": True, "schema": SENSORS_INTEGER_ID}
    spec.path("/segmenter/rule", operations={"post": docs.operation(
        "Create (id 0) or update a rule; a run-once rule computes now", docs.responses(
            "200", "SegmenterSaved", "saved", body=True), body="SegmenterRule", example=SENSORS_EXAMPLE)})
    spec.path("/segmenter/execute", operations={"post": docs.operation(
        "Compute the rules' partitions at these base times", docs.responses(
            "200", "SegmenterEmpty", "jobs queued", "409", body=True), body="SegmenterPartitions",
        example=[{"id": 1, "base_time_list": ["2024-03-01 03:00:00"]}])})
    spec.path("/segmenter/status", operations={"post": docs.operation(
        "Status and count of the rules' partitions", docs.responses(
            "200", "SegmenterStatus", "one entry per rule", body=True), body="SegmenterPartitions",
        example=[{"id": 1, "base_time_list": ["2024-03-01 03:00:00"]}])})
    spec.path("/segmenter/rule/all", operations={"get": docs.operation(
        "Every rule of the project", docs.responses("200", "SegmenterRules", "the rules"))})
    spec.path("/segmenter/rule/{cohort_id}", operations={
        "get": docs.operation("One rule", docs.responses("200", "SegmenterRuleView", "the rule"), [rule_id]),
        "delete": docs.operation("Delete a rule, its partitions and bitmaps",
                             docs.responses("200", "SegmenterEmpty", "deleted"), [rule_id])})


SENSORS_EXAMPLE = {
    "id": 0, "name": "paid_7d", "cname": "Paid in 7 days", "type": 0,
    "content": {"type": "rules_relation", "relation": "and", "rules": [
        {"type": "event_rule", "measure": {"type": "event_measure", "event_name": "pay", "aggregator": "count"},
         "time_function": "relative_within", "time_params": [7, "day"], "function": "greater", "params": [0],
         "filters": []}]}}
