"""Canonical cohort definition: the one rule tree every dialect translates into."""

from __future__ import annotations

import re
import threading
from datetime import date, datetime

import duckdb
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

PROPERTY_COMPARATORS = (
    "eq", "ne", "gt", "gte", "lt", "lte", "between", "contains", "not_contains", "starts_with",
    "ends_with", "regex", "is_true", "is_false", "is_set", "not_set", "is_empty", "not_empty",
    "date_between", "within_last", "before_last",
)
AGGREGATE_COMPARATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "between")
AGGREGATE_FUNCTIONS = ("count", "count_distinct", "sum", "avg", "min", "max", "days")
FUNCTIONS_NEEDING_PROPERTY = ("count_distinct", "sum", "avg", "min", "max")
WINDOW_UNITS = ("day", "week", "month")
DURATION_UNITS = ("minute", "hour", "day", "week", "month")

NO_VALUE = ("is_true", "is_false", "is_set", "not_set", "is_empty", "not_empty")
ONE_VALUE = ("gt", "gte", "lt", "lte")
ONE_STRING = ("contains", "not_contains", "starts_with", "ends_with", "regex")
TWO_VALUES = ("between", "date_between")
DURATION = ("within_last", "before_last")
MAX_DEPTH = 32
# Bounds that keep every window and duration inside what datetime arithmetic (and the store) can
# represent, with room for a time zone shift: 100 years of each unit, dates in years 1000-9998.
MAX_UNITS = {"minute": 100 * 366 * 24 * 60, "hour": 100 * 366 * 24, "day": 100 * 366, "week": 100 * 53,
             "month": 100 * 12}
MIN_DATE, MAX_DATE = date(1000, 1, 1), date(9998, 12, 31)
MAX_COHORT_ID = 2**31 - 1  # cohort ids are PostgreSQL integers
MAX_USER_KEY = 512  # characters of one user key, wherever a request names one
_regex_check = threading.local()


class DefinitionError(ValueError):
    """A cohort definition that cannot be computed; `errors` maps paths to messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("; ".join(f"{path}: {', '.join(msgs)}" for path, msgs in errors.items()))


def check_values(cmp: str, values: list) -> None:
    """Raise ValidationError(field 'values') when the values do not fit the comparator."""
    def fail(message):
        raise ValidationError(message, field_name="values")

    if cmp in NO_VALUE:
        if values:
            fail(f"{cmp} takes no values")
        return
    if any(v is None or isinstance(v, (dict, list)) for v in values):
        fail("values must be strings, numbers or booleans")
    # Floats too: PostgreSQL stores 1e20 as the integer 100000000000000000000, which the job reads back.
    if any(_is_number(v) and not -2**63 <= v < 2**63 for v in values):
        fail("numbers must lie within -2^63 .. 2^63-1 (about 9.2e18)")
    if cmp in ("eq", "ne"):
        if not values:
            fail(f"{cmp} needs at least one value")
    elif cmp in ONE_VALUE:
        if len(values) != 1:
            fail(f"{cmp} takes exactly one value")
    elif cmp in ONE_STRING:
        if len(values) != 1 or not isinstance(values[0], str):
            fail(f"{cmp} takes exactly one string")
        if cmp == "regex":
            problem = regex_problem(values[0])
            if problem:
                fail(f"not a valid regular expression (RE2 syntax, as the event store runs it): {problem}")
    elif cmp in TWO_VALUES:
        if len(values) != 2:
            fail(f"{cmp} takes exactly two values [low, high]")
        if cmp == "date_between":
            lo, hi = (_parse_date(v, fail) for v in values)
            if lo > hi:
                fail("date_between needs low <= high")
        elif all(_is_number(v) for v in values) and values[0] > values[1]:
            fail("between needs low <= high")
    elif cmp in DURATION:
        if len(values) != 2 or not _is_int(values[0]) or values[0] < 0 or values[1] not in DURATION_UNITS:
            fail(f"{cmp} takes [N >= 0, unit] with unit one of {', '.join(DURATION_UNITS)}")
        if values[0] > MAX_UNITS[values[1]]:
            fail(f"{cmp} reaches back at most 100 years: N <= {MAX_UNITS[values[1]]} for unit {values[1]}")


def regex_problem(pattern: str) -> str | None:
    """Why DuckDB's regexp_matches (RE2) cannot run the pattern, or None if it can."""
    # The engine runs regexes in DuckDB, whose RE2 lacks backreferences and lookaround that
    # Python's re has, so only DuckDB itself can tell whether a job will be able to run one.
    con = getattr(_regex_check, "con", None)
    if con is None:
        con = _regex_check.con = duckdb.connect(":memory:")
    try:
        con.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
    except duckdb.Error as exc:
        return str(exc).removeprefix("Invalid Input Error: ")
    return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_date(value, fail) -> date:
    try:
        day = date.fromisoformat(value)
    except (TypeError, ValueError):
        fail(f"{value!r} is not a date (YYYY-MM-DD)")
    if not MIN_DATE <= day <= MAX_DATE:
        fail(f"{value!r} is outside {MIN_DATE} .. {MAX_DATE}")
    return day


class ConditionSchema(Schema):
    property = fields.String(required=True, validate=validate.Length(min=1, max=200))
    cmp = fields.String(required=True, validate=validate.OneOf(PROPERTY_COMPARATORS))
    values = fields.List(fields.Raw(allow_none=True), load_default=list)

    @validates_schema
    def _values_fit(self, data, **kwargs):
        check_values(data["cmp"], data["values"])


class FilterField(fields.Field):
    """An event filter: a condition or an and/or group of filters."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        if "children" in value or value.get("op") in ("and", "or"):
            return FilterGroupSchema().load(value)
        return ConditionSchema().load(value)


class FilterGroupSchema(Schema):
    op = fields.String(required=True, validate=validate.OneOf(("and", "or")))
    children = fields.List(FilterField(), required=True, validate=validate.Length(min=1))


class WindowField(fields.Field):
    """A time window: absolute dates, absolute datetimes, or relative to the base time."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        if "last" in value:
            return RelativeWindowSchema().load(value)
        return AbsoluteWindowSchema().load(value)


class RelativeWindowSchema(Schema):
    last = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, error="must be >= 1"))
    offset = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0, error="must be >= 0"))
    unit = fields.String(load_default="day", validate=validate.OneOf(WINDOW_UNITS))

    @validates_schema
    def _bounded(self, data, **kwargs):
        limit = MAX_UNITS[data["unit"]]
        if data["last"] + data["offset"] > limit:
            raise ValidationError(f"last + offset reach back at most 100 years: <= {limit} for unit {data['unit']}",
                                  "last")


class AbsoluteWindowSchema(Schema):
    start = fields.String(required=True)
    end = fields.String(required=True)

    @validates_schema
    def _ordered(self, data, **kwargs):
        kinds = {_window_bound_kind(data["start"], "start"), _window_bound_kind(data["end"], "end")}
        if len(kinds) != 1:
            raise ValidationError("start and end must both be dates or both be datetimes", "end")
        for name in ("start", "end"):
            if not MIN_DATE <= date.fromisoformat(data[name][:10]) <= MAX_DATE:
                raise ValidationError(f"must be within {MIN_DATE} .. {MAX_DATE}", name)
        if "date" in kinds and date.fromisoformat(data["start"]) > date.fromisoformat(data["end"]):
            raise ValidationError("must not be before start", "end")
        if "datetime" in kinds and datetime.fromisoformat(data["start"]) >= datetime.fromisoformat(data["end"]):
            raise ValidationError("must be after start", "end")


def _window_bound_kind(value: str, field: str) -> str:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            date.fromisoformat(value)
            return "date"
        except ValueError:
            pass
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?", value):
        try:
            datetime.fromisoformat(value)
            return "datetime"
        except ValueError:
            pass
    raise ValidationError("must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (local time, no zone)", field)


class AggregateSchema(Schema):
    fn = fields.String(required=True, validate=validate.OneOf(AGGREGATE_FUNCTIONS))
    property = fields.String(validate=validate.Length(min=1, max=200))

    @validates_schema
    def _property_when_needed(self, data, **kwargs):
        if data["fn"] in FUNCTIONS_NEEDING_PROPERTY and not data.get("property"):
            raise ValidationError(f"{data['fn']} needs a property", "property")


class ProfileLeafSchema(ConditionSchema):
    type = fields.Constant("profile", required=True)


class EventLeafSchema(Schema):
    type = fields.Constant("event", required=True)
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    filter = FilterField()
    agg = fields.Nested(AggregateSchema, load_default=lambda: {"fn": "count"})
    window = WindowField(required=True)
    cmp = fields.String(required=True, validate=validate.OneOf(AGGREGATE_COMPARATORS))
    values = fields.List(fields.Raw(allow_none=True), required=True)

    @validates_schema
    def _numeric_values(self, data, **kwargs):
        check_values(data["cmp"], data["values"])
        if not all(_is_number(v) for v in data["values"]):
            raise ValidationError("aggregate comparisons take numbers", "values")


class StepSchema(Schema):
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    filter = FilterField()


class SequenceLeafSchema(Schema):
    type = fields.Constant("sequence", required=True)
    steps = fields.List(fields.Nested(StepSchema), required=True, validate=validate.Length(min=1, max=20))
    window = WindowField(required=True)


class CohortLeafSchema(Schema):
    type = fields.Constant("cohort", required=True)
    cohort_id = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=MAX_COHORT_ID))


class TagLeafSchema(Schema):
    """Users by the value of a tag's latest good version; comparators as for a property of the tag's type."""

    type = fields.Constant("tag", required=True)
    tag_id = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=MAX_COHORT_ID))
    cmp = fields.String(required=True, validate=validate.OneOf(PROPERTY_COMPARATORS))
    values = fields.List(fields.Raw(allow_none=True), load_default=list)

    @validates_schema
    def _values_fit(self, data, **kwargs):
        check_values(data["cmp"], data["values"])


class IdsLeafSchema(Schema):
    type = fields.Constant("ids", required=True)
    keys = fields.List(fields.String(validate=validate.Length(min=1, max=MAX_USER_KEY)), required=True)


MAX_UPLOAD_ID = 2**63 - 1  # uploads ids are PostgreSQL bigints


def _strict_bool(value) -> None:
    if not isinstance(value, bool):
        raise ValidationError("must be true or false")


class ImportSourceSchema(Schema):
    """Where a routine import re-reads its IDs: a path under the import directory, or a URL."""

    path = fields.String(validate=validate.Length(min=1, max=1024))
    url = fields.String(validate=validate.Length(min=1, max=2048))

    @validates_schema
    def _one(self, data, **kwargs):
        if len(data) != 1:
            raise ValidationError("give exactly one of path (under the import directory) or url", "_schema")


class ImportLeafSchema(Schema):
    """Users named by an ID import (docs/imports.md): an uploaded file by id, or a source re-read per compute."""

    type = fields.Constant("import", required=True)
    upload_id = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_UPLOAD_ID))
    source = fields.Nested(ImportSourceSchema)
    # A profile property the IDs are values of (ThinkingData's mainColumnName); none: the user key.
    match = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=200))
    keep_unmatched = fields.Raw(load_default=False, validate=_strict_bool)
    header = fields.String(load_default="auto", validate=validate.OneOf(("auto", "true", "false")))

    @validates_schema
    def _one_origin(self, data, **kwargs):
        if ("upload_id" in data) == ("source" in data):
            raise ValidationError("give exactly one of upload_id (an uploaded file) or source (re-read on "
                                  "every compute)", "upload_id")
        if data.get("keep_unmatched") is True and data.get("match"):
            raise ValidationError("keeping unmatched IDs as new users needs matching on the user key "
                                  "(leave match out)", "keep_unmatched")


LEAF_SCHEMAS = {
    "profile": ProfileLeafSchema,
    "event": EventLeafSchema,
    "sequence": SequenceLeafSchema,
    "cohort": CohortLeafSchema,
    "ids": IdsLeafSchema,
    "import": ImportLeafSchema,
    "tag": TagLeafSchema,
}


class NodeField(fields.Field):
    """A rule tree node: an and/or/not group or one of the leaf types."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        if "op" in value:
            op = value["op"]
            if op in ("and", "or"):
                return AndOrSchema().load(value)
            if op == "not":
                return NotSchema().load(value)
            raise ValidationError({"op": ["must be one of: and, or, not"]})
        kind = value.get("type")
        if not isinstance(kind, str) or kind not in LEAF_SCHEMAS:
            raise ValidationError({"type": [f"must be one of: {', '.join(LEAF_SCHEMAS)} (or give op)"]})
        return LEAF_SCHEMAS[kind]().load(value)


class AndOrSchema(Schema):
    op = fields.String(required=True, validate=validate.OneOf(("and", "or")))
    children = fields.List(NodeField(), required=True, validate=validate.Length(min=1))


class NotSchema(Schema):
    op = fields.Constant("not", required=True)
    child = NodeField(required=True)


def flatten_errors(messages, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error dict into {"children[1].window.last": [...]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, sub in messages.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == "_schema":
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            for p, msgs in flatten_errors(sub, path).items():
                flat.setdefault(p, []).extend(msgs)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        flat[prefix or "_root"] = [m[0].lower() + m[1:] if m else m for m in messages]
    elif isinstance(messages, list):
        for m in messages:
            for p, msgs in flatten_errors(m, prefix).items():
                flat.setdefault(p, []).extend(msgs)
    else:
        flat[prefix or "_root"] = [str(messages)]
    return flat


def _depth(tree) -> int:
    """How deep groups nest, rule groups and filter groups alike (checked before loading, which recurses).

    Any JSON value is accepted: malformed nodes are reported by the schemas afterwards.
    """
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH or not isinstance(node, dict):
            continue
        for key in ("children", "child", "filter", "steps"):
            sub = node.get(key)
            for child in sub if isinstance(sub, list) else [sub]:
                if isinstance(child, dict):
                    stack.append((child, level + (key != "steps")))
    return deepest


def parse_definition(tree) -> dict:
    """Validate a canonical tree and return it with defaults filled in; raise DefinitionError."""
    if not isinstance(tree, dict):
        raise DefinitionError({"_root": ["must be an object"]})
    if _depth(tree) > MAX_DEPTH:
        raise DefinitionError({"_root": [f"nested deeper than {MAX_DEPTH} levels"]})
    try:
        return NodeField().deserialize(tree)
    except ValidationError as exc:
        raise DefinitionError(flatten_errors(exc.messages)) from None


def iter_leaves(node):
    """Yield the leaves of a tree, left to right."""
    if "children" in node:
        for child in node["children"]:
            yield from iter_leaves(child)
    elif "child" in node:
        yield from iter_leaves(node["child"])
    else:
        yield node


def cohort_references(tree) -> set[int]:
    """The ids a tree (or a tag definition) refers to through `cohort` and `tag` leaves.

    Cohorts and tags share one id space (docs/tags.md), so one walk covers both kinds of edge.
    """
    if "kind" in tree:  # a tag definition: the trees of a values tag
        trees = [v["definition"] for v in tree.get("values", [])] if tree.get("kind") == "values" else []
    else:
        trees = [tree]
    return {leaf["cohort_id"] if leaf.get("type") == "cohort" else leaf["tag_id"]
            for t in trees for leaf in iter_leaves(t) if leaf.get("type") in ("cohort", "tag")}


def import_leaves(tree) -> list[dict]:
    """The `import` leaves of a tree, left to right."""
    return [leaf for leaf in iter_leaves(tree) if leaf.get("type") == "import"]


def check_no_cycle(cohort_id: int | None, tree, load_definition) -> None:
    """Reject a tree whose cohort or tag references lead back to cohort_id or to a missing cohort.

    load_definition(id) returns the referenced cohort's canonical tree (or tag's definition), or
    None if it does not exist.
    """
    seen: set[int] = set()
    stack = [(ref, [ref]) for ref in sorted(cohort_references(tree))]
    while stack:
        ref, path = stack.pop()
        if ref == cohort_id:
            chain = " -> ".join(str(p) for p in [cohort_id, *path])
            raise DefinitionError({"_root": [f"cohort references form a cycle: {chain}"]})
        if ref in seen:
            continue
        seen.add(ref)
        referenced = load_definition(ref)
        if referenced is None:
            raise DefinitionError({"_root": [f"cohort {ref} does not exist"]})
        stack.extend((r, [*path, r]) for r in sorted(cohort_references(referenced)))
