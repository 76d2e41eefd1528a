"""Canonical tag definitions: per-user values (values, metric, first_last, import), beside the cohort tree.

A tag gives each user at most one typed value. The definition reuses the cohort tree (values), and
the event leaf's filter, aggregate and window schemas (metric, first_last); docs/definition.md
"Tags" is the contract.
"""

from __future__ import annotations

import math
from datetime import datetime

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .definition import (
    MAX_DEPTH,
    AggregateSchema,
    DefinitionError,
    FilterField,
    NodeField,
    WindowField,
    _depth,
    _is_number,
    flatten_errors,
)

TAG_KINDS = ("values", "metric", "first_last", "import")
VALUE_TYPES = ("string", "number", "time", "boolean")
MAX_TAG_VALUES = 100
MAX_BUCKETS = 100
MAX_STRING_VALUE = 1000
# Built-in event columns first_last may read besides properties (their types are fixed).
BUILTIN_COLUMNS = {"time": "time", "event": "string"}


def check_typed_value(value, value_type: str, field: str) -> None:
    """Raise ValidationError(field) unless value is a valid value of the tag type."""
    def fail(message):
        raise ValidationError(message, field_name=field)

    if value_type == "number":
        if not _is_number(value) or not math.isfinite(value) or not -2**63 <= value < 2**63:
            fail("must be a finite number within -2^63 .. 2^63-1")
    elif value_type == "string":
        if not isinstance(value, str) or len(value) > MAX_STRING_VALUE:
            fail(f"must be a string of at most {MAX_STRING_VALUE} characters")
    elif value_type == "boolean":
        if not isinstance(value, bool):
            fail("must be true or false")
    else:
        if not isinstance(value, str):
            fail("must be a time YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (local time; an offset wins)")
        try:
            datetime.fromisoformat(value)
        except ValueError:
            fail("must be a time YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (local time; an offset wins)")


def infer_type(values: list) -> str | None:
    """string for strings, number for numbers, boolean for booleans; None when mixed or empty."""
    kinds = {"boolean" if isinstance(v, bool) else "number" if _is_number(v) else
             "string" if isinstance(v, str) else "other" for v in values}
    return kinds.pop() if len(kinds) == 1 and "other" not in kinds else None


class TagValueSchema(Schema):
    value = fields.Raw(required=True, allow_none=False)
    definition = NodeField(required=True)


class ValuesTagSchema(Schema):
    kind = fields.Constant("values", required=True)
    type = fields.String(validate=validate.OneOf(VALUE_TYPES))
    values = fields.List(fields.Nested(TagValueSchema), required=True,
                         validate=validate.Length(min=1, max=MAX_TAG_VALUES))
    default = fields.Raw(allow_none=True, load_default=None)

    @validates_schema
    def _typed(self, data, **kwargs):
        raw = [v["value"] for v in data["values"]]
        value_type = data.get("type") or infer_type(raw)
        if value_type is None:
            raise ValidationError("values must all be strings, all numbers or all booleans"
                                  " (or give type)", "type")
        for i, v in enumerate(raw):
            try:
                check_typed_value(v, value_type, "value")
            except ValidationError as exc:
                raise ValidationError({i: {"value": exc.messages}}, "values") from None
        if len(set(map(_value_key, raw))) != len(raw):
            raise ValidationError("each value may appear once (a user gets the first that matches)", "values")
        if data["default"] is not None:
            check_typed_value(data["default"], value_type, "default")
        data["type"] = value_type


class BucketSchema(Schema):
    label = fields.String(required=True, validate=validate.Length(min=1, max=MAX_STRING_VALUE))
    low = fields.Float(allow_none=True, load_default=None, allow_nan=False)
    high = fields.Float(allow_none=True, load_default=None, allow_nan=False)

    @validates_schema
    def _ordered(self, data, **kwargs):
        if data["low"] is not None and data["high"] is not None and data["low"] >= data["high"]:
            raise ValidationError("must be greater than low (low inclusive, high exclusive)", "high")


class MetricTagSchema(Schema):
    kind = fields.Constant("metric", required=True)
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    filter = FilterField()
    agg = fields.Nested(AggregateSchema, load_default=lambda: {"fn": "count"})
    window = WindowField(required=True)
    buckets = fields.List(fields.Nested(BucketSchema), validate=validate.Length(min=1, max=MAX_BUCKETS))
    default = fields.Raw(allow_none=True, load_default=None)
    type = fields.String(validate=validate.OneOf(VALUE_TYPES))

    @validates_schema
    def _buckets(self, data, **kwargs):
        buckets = data.get("buckets")
        value_type = "string" if buckets else "number"
        if data.get("type", value_type) != value_type:
            raise ValidationError(f"a metric tag {'with' if buckets else 'without'} buckets is of type {value_type}",
                                  "type")
        if buckets:
            labels = [b["label"] for b in buckets]
            if len(set(labels)) != len(labels):
                raise ValidationError("each label may appear once", "buckets")
            for i, (a, b) in enumerate(zip(buckets, buckets[1:], strict=False), start=1):
                if a["high"] is None or b["low"] is None or b["low"] < a["high"]:
                    raise ValidationError({i: {"low": ["buckets must be in increasing order and must not overlap:"
                                                       " low >= the previous bucket's high"]}}, "buckets")
        if data["default"] is not None:
            check_typed_value(data["default"], value_type, "default")
        data["type"] = value_type


class FirstLastTagSchema(Schema):
    kind = fields.Constant("first_last", required=True)
    which = fields.String(required=True, validate=validate.OneOf(("first", "last")))
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    filter = FilterField()
    window = WindowField(required=True)
    property = fields.String(required=True, validate=validate.Length(min=1, max=200))
    # The property's stored type; filled in when the tag is saved (the service asks the backend).
    type = fields.String(validate=validate.OneOf(VALUE_TYPES))
    default = fields.Raw(allow_none=True, load_default=None)

    @validates_schema
    def _typed(self, data, **kwargs):
        builtin = BUILTIN_COLUMNS.get(data["property"])
        if builtin and data.get("type", builtin) != builtin:
            raise ValidationError(f"the built-in column {data['property']!r} is of type {builtin}", "type")
        if builtin:
            data["type"] = builtin
        if data["default"] is not None:
            if "type" not in data:
                raise ValidationError("a default needs the tag's type", "type")
            check_typed_value(data["default"], data["type"], "default")


class ImportTagSchema(Schema):
    """Values uploaded as key,value rows; `source` is owned by the uploads code (docs/definition.md)."""

    kind = fields.Constant("import", required=True)
    type = fields.String(required=True, validate=validate.OneOf(VALUE_TYPES))
    source = fields.Dict(load_default=dict)


TAG_SCHEMAS = {"values": ValuesTagSchema, "metric": MetricTagSchema, "first_last": FirstLastTagSchema,
               "import": ImportTagSchema}


def _value_key(value):
    # 1 and 1.0 are one value; True is not 1.
    return (type(value) is bool, value)


def parse_tag_definition(definition) -> dict:
    """Validate a canonical tag definition and return it with defaults (and its `type`) filled in."""
    if not isinstance(definition, dict):
        raise DefinitionError({"_root": ["must be an object"]})
    # Depth is checked before loading, which recurses (as parse_definition does).
    if _depth(definition) > MAX_DEPTH or any(
            _depth(v.get("definition")) > MAX_DEPTH for v in definition.get("values") or [] if isinstance(v, dict)):
        raise DefinitionError({"_root": [f"nested deeper than {MAX_DEPTH} levels"]})
    kind = definition.get("kind")
    if not isinstance(kind, str) or kind not in TAG_SCHEMAS:
        raise DefinitionError({"kind": [f"must be one of: {', '.join(TAG_KINDS)}"]})
    try:
        return TAG_SCHEMAS[kind]().load(definition)
    except ValidationError as exc:
        raise DefinitionError(flatten_errors(exc.messages)) from None


def tag_type(definition: dict) -> str | None:
    """The value type of a parsed tag definition (None: a first_last whose property type is not resolved yet)."""
    return definition.get("type")


def trees_of(definition: dict) -> list[dict]:
    """The cohort trees inside a tag definition (those of a values tag)."""
    return [v["definition"] for v in definition.get("values", [])] if definition.get("kind") == "values" else []
