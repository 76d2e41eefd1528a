"""Sensors Analytics segmenter API (v1.13): request schemas and translation of its rules into the canonical tree.

Semantics of every function, aggregator and time form: docs/dialects/sensors.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta

from croniter import croniter
from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from cohort_engine.definition import (
    MAX_COHORT_ID,
    MAX_DATE,
    MAX_DEPTH,
    MAX_UNITS,
    MIN_DATE,
    DefinitionError,
    check_values,
    parse_definition,
)
from core.crons import check_fires
from core.fields import StrictBoolean, numeric

CohortResolver = Callable[[str], "int | None"]

RUN_ONCE, ROUTINE, QUERY_RESULT, IMPORT_ONCE, IMPORT_ROUTINE, SQL = 0, 1, 2, 5, 6, 7
ACCEPTED_TYPES = (RUN_ONCE, ROUTINE, IMPORT_ONCE, IMPORT_ROUTINE)
ROUTINE_TYPES = (ROUTINE, IMPORT_ROUTINE)
IMPORT_TYPES = (IMPORT_ONCE, IMPORT_ROUTINE)
REFUSED_TYPES = {QUERY_RESULT: "query-result (2)", SQL: "SQL (7)"}

# Fields the seed shows only in GET /segmenter/rule/all; a client that posts back a listed rule
# sends them, and they carry nothing a new rule needs.
LISTING_ONLY_FIELDS = ("user_name", "create_time", "failed_partition_count", "last_partition")

# Sensors property function -> canonical comparator. absolute_between and relative_between are
# translated by _condition_parts because their canonical form depends on the params.
PROPERTY_FUNCTIONS = {
    "equal": "eq", "notEqual": "ne", "isTrue": "is_true", "isFalse": "is_false", "isSet": "is_set",
    "notSet": "not_set", "include": "eq", "notInclude": "ne", "isEmpty": "is_empty", "isNotEmpty": "not_empty",
    "less": "lt", "greater": "gt", "between": "between", "contain": "contains", "notContain": "not_contains",
    "absolute_between": None, "relative_within": "within_last", "relative_before": "before_last",
    "relative_between": None,
}
METRIC_FUNCTIONS = {"equal": "eq", "notEqual": "ne", "less": "lt", "greater": "gt", "between": "between"}
AGGREGATORS = {"count": "count", "sum": "sum", "avg": "avg", "max": "max", "min": "min", "uniq": "count_distinct"}
TIME_FUNCTIONS = ("absolute_between", "relative_within", "relative_between")
WINDOW_UNITS = ("day", "week", "month")
DURATION_UNITS = ("minute", "hour", "day", "week", "month")
COHORT_PREFIXES = ("segmenter_", "user_group_")
# Sensors shows a user tag as a profile property named user_tag_<tag name> (docs/dialects/sensors.md).
TAG_PREFIX = "user_tag_"
ANY_EVENT = "$Anything"
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_]{0,99}"
BASE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _one_of(choices) -> validate.OneOf:
    return validate.OneOf(choices, error="must be one of: " + ", ".join(str(c) for c in choices))


# -- scalar params ------------------------------------------------------------------------------


def _whole_number(value, what: str) -> int:
    """An int given as a JSON number or a digit string (Sensors clients send both)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # At most 18 digits: int() refuses very long strings, and the result must fit in 64 bits.
    if isinstance(value, str) and re.fullmatch(r"\d{1,18}", value.strip()):
        return int(value)
    raise ValidationError(f"{what} must be a whole number, got {value!r}")


def _number(value):
    number = numeric(value)
    if number is not None:
        return number
    raise ValidationError(f"metric comparisons take numbers, got {value!r}")


def _unit(value, units: tuple[str, ...]) -> str:
    unit = value.strip().lower() if isinstance(value, str) else value
    if unit not in units:
        raise ValidationError(f"unit must be one of: {', '.join(units)}, got {value!r}")
    return unit


def _moment(value) -> date | datetime:
    """A date (YYYY-MM-DD) or a local datetime (YYYY-MM-DD HH:MM:SS, 'T' also accepted)."""
    if isinstance(value, str):
        text = value.strip()
        moment = None
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                moment = date.fromisoformat(text)
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?", text):
                moment = datetime.fromisoformat(text.replace(" ", "T"))
        except ValueError:
            pass
        if moment is not None:
            # Ends are moved by a second or a day; the canonical bounds leave room for that.
            day = moment.date() if isinstance(moment, datetime) else moment
            if not MIN_DATE <= day <= MAX_DATE:
                raise ValidationError(f"{value!r} is outside {MIN_DATE} .. {MAX_DATE}")
            return moment
    raise ValidationError(f"{value!r} is not YYYY-MM-DD or YYYY-MM-DD HH:MM:SS")


def _duration(params: list, name: str) -> list:
    if len(params) != 2:
        raise ValidationError(f"{name} takes [N, unit]")
    return [_whole_number(params[0], "N"), _unit(params[1], DURATION_UNITS)]


# -- property conditions (profile rules and event filters) -------------------------------------


def _absolute_between(params: list) -> tuple:
    """(start, end, both_dates) of absolute_between params; unless both are dates, start is a datetime.

    Two dates come back checked (start <= end); otherwise each caller makes the end inclusive its
    own way and checks the order after.
    """
    if len(params) != 2:
        raise ValidationError("absolute_between takes [start, end]")
    start, end = _moment(params[0]), _moment(params[1])
    if not isinstance(start, datetime) and not isinstance(end, datetime):
        if start > end:
            raise ValidationError("start must not be after end")
        return start, end, True
    return (start if isinstance(start, datetime) else datetime.combine(start, datetime.min.time())), end, False


def _condition_parts(function: str, params: list) -> list[tuple[str, list]]:
    """The (canonical comparator, values) pairs whose conjunction is the Sensors condition."""
    if function == "absolute_between":
        start, end, dates = _absolute_between(params)
        if dates:
            return [("date_between", [start.isoformat(), end.isoformat()])]
        # The end is inclusive to the whole second (or whole day), as a Sensors UI writes "23:59:59".
        if isinstance(end, datetime):
            end = end.replace(microsecond=999999)
        else:
            end = datetime.combine(end, datetime.max.time())
        if start > end:
            raise ValidationError("start must not be after end")
        return [("between", [start.isoformat(), end.isoformat()])]
    if function == "relative_between":
        if len(params) != 3:
            raise ValidationError("relative_between takes [N, M, unit]")
        near, far = sorted((_whole_number(params[0], "N"), _whole_number(params[1], "M")))
        unit = _unit(params[2], DURATION_UNITS)
        return [("within_last", [far, unit]), ("before_last", [near, unit])]
    cmp = PROPERTY_FUNCTIONS[function]
    values = _duration(params, function) if cmp in ("within_last", "before_last") else list(params)
    _check_values(cmp, values, function)
    return [(cmp, values)]


def _check_values(cmp: str, values: list, function: str) -> None:
    """check_values, with messages naming the Sensors function rather than the canonical comparator."""
    try:
        check_values(cmp, values)
    except ValidationError as exc:
        messages = [m.replace(cmp, function, 1) if m.startswith(cmp + " ") else m
                    for m in exc.normalized_messages().get("values", [])]
        raise ValidationError(messages or exc.messages) from None


def _params_error(exc: ValidationError) -> ValidationError:
    """Re-home an error raised by check_values (field 'values') or a params helper onto 'params'."""
    messages = exc.messages
    if isinstance(messages, dict):
        messages = [m for msgs in messages.values() for m in (msgs if isinstance(msgs, list) else [msgs])]
    return ValidationError(messages, "params")


def _conjunction(parts: list[dict]) -> dict:
    return parts[0] if len(parts) == 1 else {"op": "and", "children": parts}


def _event_property(field_name: str | None, event: str | None) -> str:
    """The property of an `event.<event>.<property>` field, checked against the rule's event."""
    match = re.fullmatch(r"event\.([^.]+)\.([^.]+)", field_name or "")
    if not match:
        raise ValidationError(f"must be event.<event>.<property>, got {field_name!r}")
    named, prop = match.groups()
    if event is not None and named not in (event, ANY_EVENT):
        raise ValidationError(f"names event {named!r} but this rule is about event {event!r}")
    return prop


class _DialectSchema(Schema):
    """A schema that carries the cohort resolver and the current event down to nested nodes."""

    def __init__(self, *, resolve_cohort: CohortResolver | None = None, event: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.resolve_cohort = resolve_cohort
        self.event = event


def _load_node(value, schemas: dict[str, type[_DialectSchema]], **context) -> dict:
    """Load a node with the schema its `type` names."""
    if not isinstance(value, dict):
        raise ValidationError("must be an object")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in schemas:
        raise ValidationError({"type": [f"must be one of: {', '.join(schemas)}"]})
    return schemas[kind](**context).load(value)


def _filter_schemas() -> dict[str, type[_DialectSchema]]:
    return {"filter": FilterSchema, "filters_relation": FiltersRelationSchema}


class FilterNodeField(fields.Field):
    """A filter or a filters_relation (inside a filters_relation: the event comes from the parent)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return _load_node(value, _filter_schemas(), event=getattr(self.root, "event", None))


class FiltersField(fields.Field):
    """An event's `filters`: an empty list or a list of exactly one filter node (as the seed says)."""

    def __init__(self, event_of: Callable[[dict], str | None], **kwargs):
        super().__init__(**kwargs)
        self.event_of = event_of

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("must be a list")
        if not value:
            return None
        if len(value) > 1:
            raise ValidationError("takes at most one node; combine conditions with a filters_relation")
        try:
            event = self.event_of(data)
        except (AttributeError, KeyError, TypeError):
            event = None
        try:
            return _load_node(value[0], _filter_schemas(), event=event if isinstance(event, str) else None)
        except ValidationError as exc:
            raise ValidationError({0: exc.messages}) from None


class _PropertyConditionSchema(_DialectSchema):
    """The fields of a property condition, shared by event filters and profile rules."""

    type = fields.String(required=True)
    field = fields.String(required=True)
    function = fields.String(required=True, validate=_one_of(PROPERTY_FUNCTIONS))
    params = fields.List(fields.Raw(allow_none=True), load_default=list)


class FilterSchema(_PropertyConditionSchema):
    """A condition on a property of the enclosing event (`event.<event>.<property>`)."""

    @post_load
    def _to_canonical(self, data, **kwargs):
        errors = {}
        try:
            prop = _event_property(data["field"], self.event)
        except ValidationError as exc:
            errors["field"] = exc.messages
        try:
            parts = _condition_parts(data["function"], data["params"])
        except ValidationError as exc:
            errors.update(_params_error(exc).normalized_messages())
        if errors:
            raise ValidationError(errors)
        return _conjunction([{"property": prop, "cmp": cmp, "values": values} for cmp, values in parts])


class FiltersRelationSchema(_DialectSchema):
    type = fields.String(required=True)
    relation = fields.String(required=True, validate=_one_of(("and", "or")))
    subfilters = fields.List(FilterNodeField(), required=True, validate=validate.Length(min=1))

    @post_load
    def _to_canonical(self, data, **kwargs):
        return {"op": data["relation"], "children": data["subfilters"]}


# -- rules --------------------------------------------------------------------------------------


def _window(time_function: str, params: list) -> dict:
    """A canonical window for an event or sequence rule's time_function and time_params."""
    if time_function == "absolute_between":
        start, end, dates = _absolute_between(params)
        if dates:
            return {"start": start.isoformat(), "end": end.isoformat()}
        # Canonical datetime windows are [start, end); the Sensors end is inclusive (to the second).
        end = end + timedelta(seconds=1) if isinstance(end, datetime) else datetime.combine(
            end + timedelta(days=1), datetime.min.time())
        if start >= end:
            raise ValidationError("start must not be after end")
        return {"start": start.isoformat(), "end": end.isoformat()}
    if time_function == "relative_within":
        if len(params) != 2:
            raise ValidationError("relative_within takes [N, unit]")
        last = _whole_number(params[0], "N")
        if last < 1:
            raise ValidationError("N must be >= 1")
        return _bounded({"last": last, "offset": 0, "unit": _unit(params[1], WINDOW_UNITS)})
    if len(params) != 3:
        raise ValidationError("relative_between takes [N, M, unit]")
    near, far = sorted((_whole_number(params[0], "N"), _whole_number(params[1], "M")))
    return _bounded({"last": far - near + 1, "offset": near, "unit": _unit(params[2], WINDOW_UNITS)})


def _bounded(window: dict) -> dict:
    """A relative window, refused here (naming time_params) when it reaches back past the canonical bound."""
    limit = MAX_UNITS[window["unit"]]
    if window["last"] + window["offset"] > limit:
        raise ValidationError(f"reaches back at most 100 years: N, M <= {limit} for unit {window['unit']}")
    return window


def _validate_time_function(value: str) -> None:
    if value == "relative_before":
        raise ValidationError("relative_before has no start, so it cannot bound events;"
                              " use relative_between [N, M, unit]")
    if value not in TIME_FUNCTIONS:
        raise ValidationError("must be one of: " + ", ".join(TIME_FUNCTIONS))


def _event_name(name: str) -> str:
    return "*" if name == ANY_EVENT else name


class RuleNodeField(fields.Field):
    """A rules_relation or one of the three rule nodes."""

    def _deserialize(self, value, attr, data, **kwargs):
        schemas = {"rules_relation": RulesRelationSchema, "profile_rule": ProfileRuleSchema,
                   "event_rule": EventRuleSchema, "event_sequence_rule": EventSequenceRuleSchema}
        return _load_node(value, schemas, resolve_cohort=getattr(self.root, "resolve_cohort", None))


class RulesRelationSchema(_DialectSchema):
    type = fields.String(required=True, validate=_one_of(("rules_relation",)))
    relation = fields.String(required=True, validate=_one_of(("and", "or")))
    rules = fields.List(RuleNodeField(), required=True, validate=validate.Length(min=1, error="must not be empty"))

    @post_load
    def _to_canonical(self, data, **kwargs):
        return {"op": data["relation"], "children": data["rules"]}


class ProfileRuleSchema(_PropertyConditionSchema):
    """A condition on a profile property (`user.<property>`) or on membership of another rule."""

    @post_load
    def _to_canonical(self, data, **kwargs):
        if re.fullmatch(rf"user\.{TAG_PREFIX}[^.]+", data["field"]):
            tag_id = self._resolve(data["field"][len("user.") + len(TAG_PREFIX):], "tag")
            try:
                parts = _condition_parts(data["function"], data["params"])
            except ValidationError as exc:
                raise _params_error(exc) from None
            return _conjunction([{"type": "tag", "tag_id": tag_id, "cmp": cmp, "values": values}
                                 for cmp, values in parts])
        cohort_name, prop = self._parse_field(data["field"])
        condition = None
        if prop is not None:
            try:
                parts = _condition_parts(data["function"], data["params"])
            except ValidationError as exc:
                raise _params_error(exc) from None
            condition = _conjunction(
                [{"type": "profile", "property": prop, "cmp": cmp, "values": values} for cmp, values in parts])
        if cohort_name is None:
            return condition
        cohort = {"type": "cohort", "cohort_id": self._resolve(cohort_name)}
        if condition is not None:
            return {"op": "and", "children": [cohort, condition]}
        if data["function"] not in ("isTrue", "isFalse"):
            raise ValidationError("a cohort field takes isTrue or isFalse", "function")
        if data["params"]:
            raise ValidationError(f"{data['function']} takes no params", "params")
        return cohort if data["function"] == "isTrue" else {"op": "not", "child": cohort}

    def _parse_field(self, field_name: str) -> tuple[str | None, str | None]:
        """(cohort name, property) of user.<property>, user.<cohort> or user.<cohort>.<property>."""
        match = re.fullmatch(r"user\.([^.]+)(?:\.([^.]+))?", field_name)
        if not match:
            raise ValidationError(
                f"must be user.<property>, user.segmenter_<cohort> or user.segmenter_<cohort>.<property>,"
                f" got {field_name!r}", "field")
        first, second = match.groups()
        prefix = next((p for p in COHORT_PREFIXES if first.startswith(p) and len(first) > len(p)), None)
        if prefix is None:
            if second is not None:
                raise ValidationError(
                    f"{first!r} is not a cohort reference (segmenter_<name> or user_group_<name>)", "field")
            return None, first
        return first[len(prefix):], second

    def _resolve(self, name: str, noun: str = "cohort") -> int:
        # One resolver for both: cohorts and tags share names and ids; the save checks which one it is.
        cohort_id = self.resolve_cohort(name) if self.resolve_cohort else None
        if cohort_id is None:
            raise ValidationError(f"no {noun} named {name!r}", "field")
        return cohort_id


class MeasureSchema(Schema):
    type = fields.String(required=True, validate=_one_of(("event_measure",)))
    event_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    aggregator = fields.String(required=True, validate=_one_of(AGGREGATORS))
    field = fields.String(allow_none=True, load_default=None)


def _measure_event(data: dict):
    return data["measure"]["event_name"]


class EventRuleSchema(_DialectSchema):
    type = fields.String(required=True)
    measure = fields.Nested(MeasureSchema, required=True)
    time_function = fields.String(required=True, validate=_validate_time_function)
    time_params = fields.List(fields.Raw(allow_none=True), required=True)
    function = fields.String(required=True, validate=_one_of(METRIC_FUNCTIONS))
    params = fields.List(fields.Raw(allow_none=True), required=True)
    filters = FiltersField(_measure_event, load_default=None)

    @post_load
    def _to_canonical(self, data, **kwargs):
        measure, errors = data["measure"], {}
        agg = {"fn": AGGREGATORS[measure["aggregator"]]}
        if measure["aggregator"] != "count":
            try:
                agg["property"] = _event_property(measure["field"], measure["event_name"])
            except ValidationError as exc:
                errors["measure"] = {"field": exc.messages}
        try:
            window = _window(data["time_function"], data["time_params"])
        except ValidationError as exc:
            errors["time_params"] = exc.messages
        cmp = METRIC_FUNCTIONS[data["function"]]
        try:
            values = [_number(v) for v in data["params"]]
            _check_values(cmp, values, data["function"])
        except ValidationError as exc:
            errors.update(_params_error(exc).normalized_messages())
        if errors:
            raise ValidationError(errors)
        leaf = {"type": "event", "event": _event_name(measure["event_name"]), "agg": agg, "window": window,
                "cmp": cmp, "values": values}
        if data["filters"] is not None:
            leaf["filter"] = data["filters"]
        return leaf


def _step_event(data: dict):
    return data["event"]


class StepSchema(Schema):
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    filters = FiltersField(_step_event, load_default=None)

    @post_load
    def _to_canonical(self, data, **kwargs):
        step = {"event": _event_name(data["event"])}
        if data["filters"] is not None:
            step["filter"] = data["filters"]
        return step


class EventSequenceRuleSchema(_DialectSchema):
    type = fields.String(required=True)
    time_function = fields.String(required=True, validate=_validate_time_function)
    time_params = fields.List(fields.Raw(allow_none=True), required=True)
    steps = fields.List(fields.Nested(StepSchema), required=True,
                        validate=validate.Length(min=1, max=20, error="must have 1 to 20 steps"))

    @post_load
    def _to_canonical(self, data, **kwargs):
        try:
            window = _window(data["time_function"], data["time_params"])
        except ValidationError as exc:
            raise ValidationError(exc.messages, "time_params") from None
        return {"type": "sequence", "steps": data["steps"], "window": window}


def _nesting(node) -> int:
    """How deep rules, subfilters and steps nest (checked before loading, which recurses)."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(current, dict):
            for key in ("rules", "subfilters", "filters", "steps"):
                children = current.get(key)
                if isinstance(children, list):
                    stack.extend((child, level + 1) for child in children)
    return deepest


def to_canonical(content, resolve_cohort: CohortResolver | None = None) -> dict:
    """The validated canonical tree of a segmenter rule's `content`.

    resolve_cohort(name) gives the id of the project's cohort with that name, or None. Errors are
    raised as a ValidationError keyed under "content", as the field is named in the request body.
    """
    if not isinstance(content, dict):
        raise ValidationError({"content": ["must be an object"]})
    if _nesting(content) > MAX_DEPTH:
        raise ValidationError({"content": [f"nested deeper than {MAX_DEPTH} levels"]})
    try:
        tree = RulesRelationSchema(resolve_cohort=resolve_cohort).load(content)
    except ValidationError as exc:
        raise ValidationError({"content": exc.messages}) from None
    try:
        return parse_definition(tree)
    except DefinitionError as exc:
        raise ValidationError({"content": exc.errors}) from None


# -- cron ---------------------------------------------------------------------------------------


def _quartz_day_of_week(field: str) -> str:
    """Quartz numbers days 1-7 from Sunday; cron numbers them 0-6 from Sunday."""
    def shift(number: str) -> str:
        n = int(number)
        if not 1 <= n <= 7:
            raise ValidationError(f"Quartz day-of-week numbers are 1-7 (1 = Sunday), got {n}")
        return str(n - 1)

    items = []
    for item in field.split(","):
        base, sep, tail = re.match(r"([^/#]*)([/#]?)(.*)", item).groups()
        items.append(re.sub(r"\d+", lambda m: shift(m.group()), base) + sep + tail)
    return ",".join(items)


def quartz_to_cron(expression: str) -> str:
    """A croniter expression for a Quartz (6 or 7 fields) or standard 5-field cron expression.

    Quartz seconds of 0 give the 5-field form; other seconds give croniter's 6-field form, seconds last.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError("must be a cron expression")
    parts = expression.split()
    if len(parts) == 5:
        second, (minute, hour, dom, month, dow) = "0", parts
    elif len(parts) in (6, 7):
        second, minute, hour, dom, month, dow = parts[:6]
        year = parts[6] if len(parts) == 7 else "*"
        if year not in ("*", "?"):
            raise ValidationError("a year field other than * is not supported")
        if dow != "?":
            dow = _quartz_day_of_week(dow)
    else:
        raise ValidationError(
            "must have 5 fields (minute hour day month weekday) or 6-7 Quartz fields"
            " (second minute hour day month weekday [year])")
    if "?" in (second, minute, hour, month):
        raise ValidationError("? is allowed only in the day-of-month and day-of-week fields")
    dom, dow = ("*" if dom == "?" else dom), ("*" if dow == "?" else dow)
    if dom != "*" and dow != "*":
        raise ValidationError("restrict day-of-month or day-of-week, not both (give ? in the other)")
    cron_fields = [minute, hour, dom, month, dow] + ([] if second in ("0", "00") else [second])
    converted = " ".join(cron_fields)
    if not croniter.is_valid(converted):
        raise ValidationError(f"not a valid cron expression (as {len(cron_fields)}-field cron: {converted!r})")
    check_fires(converted)
    return converted


# -- request bodies -----------------------------------------------------------------------------


class SchedulerSchema(Schema):
    running = StrictBoolean(required=True)
    cron = fields.String(required=True)
    execute_cron = fields.String()


def _validate_type(value: int) -> None:
    if value in REFUSED_TYPES:
        raise ValidationError(f"this service cannot compute {REFUSED_TYPES[value]} cohorts;"
                              " accepted types are 0, 1, 5 and 6")
    if value not in ACCEPTED_TYPES:
        raise ValidationError("must be one of: 0 (run once), 1 (routine), 5 (import once), 6 (import routine)")


class ImportSchema(Schema):
    """Where an import rule's IDs come from (docs/dialects/sensors.md "Import rules")."""

    upload_id = fields.Integer(strict=True, metadata={"description": "type 5: a file stored by POST /api/v1/uploads"})
    path = fields.String(metadata={"description": "type 6: a file under the service's import directory"})
    url = fields.String(metadata={"description": "type 6: an http(s) URL allowed for the project"})
    match = fields.String(load_default=None, allow_none=True,
                          metadata={"description": "a profile property the IDs are values of; default the user key"})
    keep_unmatched = StrictBoolean(load_default=False)
    header = fields.String(load_default="auto", validate=validate.OneOf(("auto", "true", "false")))


def import_definition(kind: int, spec: dict) -> dict:
    """The canonical `import` leaf of a type 5 (upload_id) or type 6 (path or url) rule; ValidationError."""
    origins = [name for name in ("upload_id", "path", "url") if name in spec]
    wanted = ("upload_id",) if kind == IMPORT_ONCE else ("path", "url")
    if len(origins) != 1 or origins[0] not in wanted:
        raise ValidationError({"import": ["type 5 (import once) takes upload_id, a file stored by POST "
                                          "/api/v1/uploads" if kind == IMPORT_ONCE else
                                          "type 6 (routine import) re-reads a source on its cron: give path "
                                          "(under the import directory) or url (allowed for the project)"]})
    leaf = {"type": "import", "match": spec["match"], "keep_unmatched": spec["keep_unmatched"],
            "header": spec["header"]}
    if kind == IMPORT_ONCE:
        leaf["upload_id"] = spec["upload_id"]
    else:
        leaf["source"] = {origins[0]: spec[origins[0]]}
    try:
        return parse_definition(leaf)
    except DefinitionError as exc:
        raise ValidationError({"import": [m for messages in exc.errors.values() for m in messages]}) from None


class SegmenterRuleSchema(_DialectSchema):
    """Body of POST /segmenter/rule; loads to the body plus `definition` (canonical tree, or None for imports)."""

    id = fields.Integer(strict=True, required=True,
                        validate=validate.Range(min=0, max=MAX_COHORT_ID, error="must be 0 .. {max}"))
    name = fields.String(required=True, validate=validate.Regexp(
        rf"^{NAME_PATTERN}$", error="must start with a letter and hold only letters, digits and _ (at most 100)"))
    cname = fields.String(required=True, validate=validate.Length(min=1, max=200))
    type = fields.Integer(strict=True, required=True, validate=_validate_type)
    app_push_list = fields.List(fields.Integer(strict=True), load_default=list)
    dir_id = fields.Integer(strict=True, allow_none=True)
    scheduler = fields.Nested(SchedulerSchema)
    content = fields.Raw(load_default=None)
    import_ = fields.Nested(ImportSchema, data_key="import", load_default=None)

    @pre_load
    def _drop_listing_fields(self, data, **kwargs):
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in LISTING_ONLY_FIELDS}
        return data

    @validates_schema(skip_on_field_errors=False)
    def _translate(self, data, **kwargs):
        # Runs even when other fields failed, so one response names every bad field; the results
        # are stored into data (the same dict post_load returns).
        errors = {}
        kind = data.get("type")
        routine = kind in ROUTINE_TYPES
        scheduler = data.get("scheduler")
        if scheduler is None:
            if routine:
                errors["scheduler"] = ["routine cohorts (type 1, 6) need a scheduler with a cron expression"]
        else:
            for key in ("cron", "execute_cron"):
                value = scheduler.get(key)
                # A run-once cohort may carry an empty schedule (nothing to fire).
                if value is None or (not routine and not value.strip()):
                    continue
                try:
                    scheduler[key + "_expression"] = quartz_to_cron(value)
                except ValidationError as exc:
                    errors.setdefault("scheduler", {})[key] = exc.messages
        content = data.get("content")
        data["definition"] = None
        if kind in IMPORT_TYPES:
            if content is not None and not (isinstance(content, dict) and not content.get("rules")):
                errors["content"] = ["import cohorts (type 5, 6) take their members from imported files;"
                                     " leave content out or give it no rules"]
            if data.get("import_") is not None:
                try:
                    data["definition"] = import_definition(kind, data["import_"])
                except ValidationError as exc:
                    errors.update(exc.messages)
        elif data.get("import_") is not None:
            errors["import"] = ["only import rules (type 5, 6) take an import"]
        elif content is None:
            errors["content"] = ["Missing data for required field."]
        else:
            try:
                data["definition"] = to_canonical(content, self.resolve_cohort)
            except ValidationError as exc:
                errors.update(exc.messages)
        if errors:
            raise ValidationError(errors)


def _base_time(value) -> str:
    if isinstance(value, str):
        text = value.strip().replace("T", " ")
        try:
            moment = datetime.strptime(text, BASE_TIME_FORMAT)
        except ValueError:
            pass
        else:
            # strftime writes years below 1000 without padding, and windows reach up to 100 years back.
            if not MIN_DATE <= moment.date() <= MAX_DATE:
                raise ValidationError(f"must be within {MIN_DATE} .. {MAX_DATE}, got {value!r}")
            return moment.strftime(BASE_TIME_FORMAT)
    raise ValidationError(f"must be a base time like 2018-08-28 10:00:00, got {value!r}")


class BaseTimeField(fields.Field):
    """A partition base time, 'YYYY-MM-DD HH:MM:SS' (project local time), normalised to that form."""

    def _deserialize(self, value, attr, data, **kwargs):
        return _base_time(value)


class PartitionsSchema(Schema):
    """One item of POST /segmenter/execute or /segmenter/status: a cohort id and its base times."""

    id = fields.Integer(strict=True, required=True,
                        validate=validate.Range(min=1, max=MAX_COHORT_ID, error="must be 1 .. {max}"))
    base_time_list = fields.List(BaseTimeField(), required=True,
                                 validate=validate.Length(min=1, max=1000, error="must hold 1 to 1000 base times"))

    @post_load
    def _dedupe(self, data, **kwargs):
        data["base_time_list"] = list(dict.fromkeys(data["base_time_list"]))
        return data


def load_rule(body, resolve_cohort: CohortResolver | None = None) -> dict:
    """Validate and translate a POST /segmenter/rule body; raise ValidationError with paths."""
    return SegmenterRuleSchema(resolve_cohort=resolve_cohort).load(body)


def load_partitions(body) -> list[dict]:
    """Validate a POST /segmenter/execute or /segmenter/status body (a list of {id, base_time_list})."""
    if not isinstance(body, list):
        raise ValidationError({"_root": ["must be a list of {id, base_time_list}"]})
    if not body:
        raise ValidationError({"_root": ["must name at least one cohort"]})
    return PartitionsSchema(many=True).load(body)
