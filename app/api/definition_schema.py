"""The canonical rule tree (docs/definition.md) as OpenAPI schemas: `Definition` and its parts.

Written by hand from cohort_engine.definition's marshmallow schemas (tests/app/test_openapi_examples.py
checks that each lists the same fields). JSON Schema cannot state the rules between fields (how
many values a comparator takes, dates in order, 32 levels at most): those are answered 400 naming
the field when the definition is saved.
"""

from __future__ import annotations

from cohort_engine.definition import (
    AGGREGATE_COMPARATORS,
    AGGREGATE_FUNCTIONS,
    MAX_COHORT_ID,
    MAX_UPLOAD_ID,
    PROPERTY_COMPARATORS,
    WINDOW_UNITS,
)


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


NAME = {"type": "string", "minLength": 1, "maxLength": 200}
VALUES = {"type": "array", "items": {"nullable": True}, "description": "what cmp compares with (docs/definition.md)"}
EXAMPLE = {"type": "event", "event": "pay", "window": {"last": 7, "unit": "day"}, "cmp": "gte", "values": [1]}


def closed(description: str, required: list[str], **properties) -> dict:
    return {"type": "object", "description": description, "required": required, "properties": properties,
            "additionalProperties": False}


SCHEMAS = {
    "Definition": {"description": "a node of the rule tree: an and/or/not group or a leaf (docs/definition.md)",
                   "oneOf": [ref(n) for n in ("AndOr", "Not", "ProfileLeaf", "EventLeaf", "SequenceLeaf",
                                              "CohortLeaf", "IdsLeaf", "TagLeaf", "ImportLeaf")],
                   "example": EXAMPLE},
    "AndOr": closed("intersection (and) or union (or) of the children", ["op", "children"],
                    op={"type": "string", "enum": ["and", "or"]},
                    children={"type": "array", "minItems": 1, "items": ref("Definition")}),
    "Not": closed("every known user not in child", ["op", "child"], op={"type": "string", "enum": ["not"]},
                  child=ref("Definition")),
    "ProfileLeaf": closed("a condition on a user property", ["type", "property", "cmp"],
                          type={"type": "string", "enum": ["profile"]}, property=NAME,
                          cmp={"type": "string", "enum": list(PROPERTY_COMPARATORS)}, values=VALUES),
    "EventLeaf": closed("a per-user aggregate over events in a window, compared with numbers",
                        ["type", "event", "window", "cmp", "values"],
                        type={"type": "string", "enum": ["event"]},
                        event={**NAME, "description": "an event name, or * for any event"},
                        filter=ref("Filter"), agg=ref("Aggregate"), window=ref("Window"),
                        cmp={"type": "string", "enum": list(AGGREGATE_COMPARATORS)},
                        values={"type": "array", "items": {"type": "number"}}),
    "SequenceLeaf": closed("the steps happened in this order inside the window", ["type", "steps", "window"],
                           type={"type": "string", "enum": ["sequence"]},
                           steps={"type": "array", "minItems": 1, "maxItems": 20, "items": ref("Step")},
                           window=ref("Window")),
    "CohortLeaf": closed("membership in another cohort's latest computed version", ["type", "cohort_id"],
                         type={"type": "string", "enum": ["cohort"]},
                         cohort_id={"type": "integer", "minimum": 1, "maximum": MAX_COHORT_ID}),
    "IdsLeaf": closed("exactly these user keys", ["type", "keys"], type={"type": "string", "enum": ["ids"]},
                      keys={"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 512}}),
    "TagLeaf": closed("users by the value of a tag's latest good version (docs/tags.md)", ["type", "tag_id", "cmp"],
                      type={"type": "string", "enum": ["tag"]},
                      tag_id={"type": "integer", "minimum": 1, "maximum": MAX_COHORT_ID},
                      cmp={"type": "string", "enum": list(PROPERTY_COMPARATORS)}, values=VALUES),
    "ImportLeaf": closed("users named by an ID import: an uploaded file by id, or a source re-read per compute"
                         " (docs/imports.md)", ["type"],
                         type={"type": "string", "enum": ["import"]},
                         upload_id={"type": "integer", "minimum": 1, "maximum": MAX_UPLOAD_ID},
                         source=ref("ImportSource"),
                         match={**NAME, "nullable": True,
                                "description": "the profile property the IDs are values of; none: the user key"},
                         keep_unmatched={"type": "boolean"},
                         header={"type": "string", "enum": ["auto", "true", "false"]}),
    "ImportSource": {"description": "exactly one of path (under the import directory) or url (an allowed import target)",
                     "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
                     "properties": {"path": {"type": "string", "minLength": 1, "maxLength": 1024},
                                    "url": {"type": "string", "minLength": 1, "maxLength": 2048}}},
    "Step": closed("one step of a sequence", ["event"], event=NAME, filter=ref("Filter")),
    "Aggregate": closed("what is computed per user (default count)", ["fn"],
                        fn={"type": "string", "enum": list(AGGREGATE_FUNCTIONS)},
                        property={**NAME, "description": "needed by count_distinct, sum, avg, min, max"}),
    "Filter": {"description": "a condition on each event row, or an and/or group of them",
               "oneOf": [ref("Condition"), ref("FilterGroup")]},
    "Condition": closed("a property condition", ["property", "cmp"], property=NAME,
                        cmp={"type": "string", "enum": list(PROPERTY_COMPARATORS)}, values=VALUES),
    "FilterGroup": closed("and/or of filters", ["op", "children"], op={"type": "string", "enum": ["and", "or"]},
                          children={"type": "array", "minItems": 1, "items": ref("Filter")}),
    "Window": {"description": "relative to the job's base time, or absolute dates or datetimes (project time zone)",
               "oneOf": [ref("RelativeWindow"), ref("AbsoluteWindow")]},
    "RelativeWindow": closed("the last `last` units before the base time, shifted back by `offset`", ["last"],
                             last={"type": "integer", "minimum": 1}, offset={"type": "integer", "minimum": 0},
                             unit={"type": "string", "enum": list(WINDOW_UNITS)}),
    "AbsoluteWindow": closed("from start to end: both YYYY-MM-DD (inclusive) or both YYYY-MM-DDTHH:MM:SS",
                             ["start", "end"], start={"type": "string", "example": "2024-03-01"},
                             end={"type": "string", "example": "2024-03-31"}),
}

# The marshmallow schema each OpenAPI schema describes (checked for the same fields by the tests).
ENGINE_SCHEMAS = {"AndOr": "AndOrSchema", "Not": "NotSchema", "ProfileLeaf": "ProfileLeafSchema",
                  "EventLeaf": "EventLeafSchema", "SequenceLeaf": "SequenceLeafSchema",
                  "CohortLeaf": "CohortLeafSchema", "IdsLeaf": "IdsLeafSchema", "TagLeaf": "TagLeafSchema",
                  "ImportLeaf": "ImportLeafSchema", "Step": "StepSchema",
                  "Aggregate": "AggregateSchema", "Condition": "ConditionSchema", "FilterGroup": "FilterGroupSchema",
                  "RelativeWindow": "RelativeWindowSchema", "AbsoluteWindow": "AbsoluteWindowSchema"}


def add_definition_schemas(spec) -> None:
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
