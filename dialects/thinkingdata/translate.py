"""ThinkingData user cluster Open API: request schemas, and translation of `qp` bodies into the canonical tree.

Every mapping (comparators, analyses, recentDay, relations) and its reading: docs/dialects/thinkingdata.md.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from cohort_engine.definition import (
    MAX_DATE,
    MAX_UNITS,
    MIN_DATE,
    DefinitionError,
    check_values,
    parse_definition,
)
from core.fields import numeric

CATALOGS = ("catalog_cluster", "catalog_tag")
# clusterType -> (catalog, how it is built). Condition kinds compute here; import kinds are built by
# the import endpoints; result and SQL kinds need TA's own query engine and are refused.
CLUSTER_TYPES = {
    "cluster_by_static_condition": ("catalog_cluster", "condition"),
    "cluster_by_dynamic_condition": ("catalog_cluster", "condition"),
    "cluster_by_result": ("catalog_cluster", "refused"),
    "cluster_by_import": ("catalog_cluster", "import"),
    "cluster_by_dynamic_sql": ("catalog_cluster", "refused"),
    "cluster_by_static_sql": ("catalog_cluster", "refused"),
    "tag_by_dynamic_condition": ("catalog_tag", "condition"),
    "tag_by_static_condition": ("catalog_tag", "condition"),
    "tag_by_import": ("catalog_tag", "import"),
    "tag_by_dynamic_sql": ("catalog_tag", "refused"),
    "tag_by_static_sql": ("catalog_tag", "refused"),
}
DYNAMIC_TYPES = ("cluster_by_dynamic_condition", "tag_by_dynamic_condition")
DEFAULT_TYPE = {"catalog_cluster": "cluster_by_static_condition", "catalog_tag": "tag_by_static_condition"}
TAG_KINDS = ("tag_condition_default", "tag_condition_by_firstlast_event", "tag_condition_by_quotation")

# The model-query API's filter operators (its "筛选表达式"), and the internal codes TA's UI and newer
# payloads carry in calcuSymbol / uceCalcuSymbol, -> canonical comparator. include / notInclude are
# substring tests; equal / notEqual with several ftv are IN / NOT IN.
PROPERTY_COMPARATORS = {
    "equal": "eq", "notEqual": "ne", "less": "lt", "lessEqual": "lte", "greater": "gt", "greaterEqual": "gte",
    "range": "between", "include": "contains", "notInclude": "not_contains", "isTrue": "is_true",
    "isFalse": "is_false", "isNull": "not_set", "notNull": "is_set", "regexp": "regex",
    "C00": "eq", "C01": "ne", "C02": "lt", "C020": "lte", "C03": "gt", "C030": "gte", "C06": "between",
    "C07": "contains", "C08": "not_contains", "C11": "regex",
}
# An event's aggregate is compared with numbers only.
AGGREGATE_COMPARATORS = {name: cmp for name, cmp in PROPERTY_COMPARATORS.items()
                         if cmp in ("eq", "ne", "lt", "lte", "gt", "gte", "between")}
# taPropQuota.analysis (the event-analysis model's aggregation) -> canonical aggregate function.
ANALYSES = {"TIMES": "count", "A200": "count", "DISTINCT": "count_distinct", "SUM": "sum", "AVG": "avg",
            "MAX": "max", "MIN": "min", "DAYS": "days"}
NEEDS_QUOTA = ("count_distinct", "sum", "avg", "max", "min")
RELATIONS = ("and", "or")
NAME_PATTERN = r"[A-Za-z0-9_]{1,24}"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_DAYS = MAX_UNITS["day"]


def _one_of(choices) -> validate.OneOf:
    return validate.OneOf(choices, error="must be one of: " + ", ".join(choices))


class Text(fields.Field):
    """A string, or a JSON number given where TA documents a string ("num": "4" or 4)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValidationError("must be a string")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError("must be a finite number")
        return value.strip() if isinstance(value, str) else str(value)


class ProjectId(fields.Field):
    """A project's numeric id, as a JSON number or a digit string (the seed's table says String)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*\d{1,10}\s*", value):
            return int(value)
        raise ValidationError("must be the project's numeric id")


def _number(text: str, what: str):
    """A number from TA's string form ("4", "2.5")."""
    number = numeric(text)
    if number is None:
        raise ValidationError(f"{what} must be a number, got {text!r}")
    return number


def _maybe_number(text: str):
    """A range bound: a number when it reads as one, else the text (a string or time column's bound)."""
    try:
        return _number(text, "a range bound")
    except ValidationError:
        return text


def _comparator(data: dict, table: dict[str, str], *names: str) -> str:
    """The canonical comparator of the first of names present in data (aliases: what TA's own docs show)."""
    for name in names:
        if data.get(name) not in (None, ""):
            given = data[name]
            if given not in table:
                raise ValidationError({name: [f"unknown comparator {given!r}; one of: " + ", ".join(table)]})
            return table[given]
    raise ValidationError({names[0]: ["missing comparator" + (f" (or {', '.join(names[1:])})" if names[1:] else "")]})


# -- property filters ----------------------------------------------------------------------------


class FilterSchema(Schema):
    """One condition of a filter list: {columnName, comparator, ftv, tableType}."""

    class Meta:
        unknown = EXCLUDE

    columnName = Text(required=True, validate=validate.Length(min=1, max=200))  # noqa: N815 (TA's names)
    comparator = fields.Raw(load_default=None)
    calcuSymbol = fields.Raw(load_default=None)  # noqa: N815
    ftv = fields.List(Text(), load_default=list)
    tableType = fields.String(load_default=None, validate=_one_of(("event", "user")))  # noqa: N815


def filter_condition(data: dict) -> dict:
    """The canonical condition (or and/or group of conditions) of one loaded filter."""
    cmp = _comparator(data, PROPERTY_COMPARATORS, "comparator", "calcuSymbol")
    prop, values = data["columnName"], list(data["ftv"])
    if cmp in ("is_true", "is_false", "is_set", "not_set"):
        values = []  # TA clients send ftv: [] or leave a stale value there; these operators take none
    elif cmp == "between":
        if len(values) != 2:
            raise ValidationError({"ftv": ["range takes two values [low, high]"]})
        values = [_maybe_number(v) for v in values]
    elif cmp in ("contains", "not_contains") and len(values) > 1:
        # Several ftv: include any of them / include none of them.
        parts = [{"property": prop, "cmp": cmp, "values": [v]} for v in values]
        return {"op": "or" if cmp == "contains" else "and", "children": parts}
    try:
        check_values(cmp, values)
    except ValidationError as exc:
        raise ValidationError({"ftv": exc.normalized_messages().get("values", exc.messages)}) from None
    return {"property": prop, "cmp": cmp, "values": values}


def _filters(items: list[dict], relation: str, table: str, where: str) -> list[dict]:
    """Conditions of a filts list, checked to name properties of the right table."""
    conditions = []
    for index, item in enumerate(items):
        if item["tableType"] not in (None, table):
            raise ValidationError({where: {index: {"tableType": [
                f"must be {table!r} here" + (": user properties go in qp.filts" if table == "event" else
                                             ": event properties go in an event's filts")]}}})
        try:
            conditions.append(filter_condition(item))
        except ValidationError as exc:
            raise ValidationError({where: {index: exc.messages}}) from None
    return conditions


def _combine(parts: list[dict], relation: str) -> dict | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"op": relation, "children": parts}


# -- time ------------------------------------------------------------------------------------------


def recent_days(text: str) -> tuple[int, int]:
    """(a, b) of recentDay "a-b": from b days ago through a days ago, 0 = today."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*-\s*(\d{1,6})\s*", text or "")
    if not match:
        raise ValidationError('must be "a-b" (from b days ago through a days ago, 0 = today), e.g. "1-7"')
    near, far = int(match.group(1)), int(match.group(2))
    if near > far:
        raise ValidationError(f"the first number (days ago the range ends) must not exceed the second, got {text!r}")
    if far >= MAX_DAYS:
        raise ValidationError(f"reaches back at most {MAX_DAYS - 1} days")
    return near, far


def _moment(text: str, field: str) -> datetime:
    for form in (TIME_FORMAT, "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text, form)
        except ValueError:
            continue
        if not MIN_DATE <= moment.date() < MAX_DATE:
            raise ValidationError({field: [f"must lie within {MIN_DATE} .. {MAX_DATE}"]})
        return moment
    raise ValidationError({field: ["must be 'YYYY-MM-DD HH:MM:SS' (or YYYY-MM-DD)"]})


def window(data: dict) -> dict:
    """The canonical window of an event: absolute startTime/endTime win over recentDay.

    Both at midnight are whole local days, both included (as the detail answer writes a resolved
    recentDay); otherwise the end is included to the second.
    """
    start, end = data.get("startTime") or "", data.get("endTime") or ""
    if start or end:
        if not (start and end):
            raise ValidationError({"startTime" if not start else "endTime": ["give both startTime and endTime"]})
        first, last = _moment(start, "startTime"), _moment(end, "endTime")
        if last < first:
            raise ValidationError({"endTime": ["must not be before startTime"]})
        if first.time() == last.time() == datetime.min.time():
            return {"start": first.date().isoformat(), "end": last.date().isoformat()}
        return {"start": first.isoformat(), "end": (last + timedelta(seconds=1)).isoformat()}
    if not data.get("recentDay"):
        raise ValidationError({"recentDay": ["give recentDay (\"a-b\") or startTime and endTime"]})
    try:
        near, far = recent_days(data["recentDay"])
    except ValidationError as exc:
        raise ValidationError({"recentDay": exc.messages}) from None
    return {"last": far - near + 1, "offset": near, "unit": "day"}


def resolved_days(text: str, today: date) -> tuple[str, str]:
    """The startTime and endTime a recentDay means on a local day, as the detail answer writes them."""
    near, far = recent_days(text)
    return ((today - timedelta(days=far)).strftime(TIME_FORMAT), (today - timedelta(days=near)).strftime(TIME_FORMAT))


# -- events ----------------------------------------------------------------------------------------


class QuotaSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    analysis = fields.String(load_default="TIMES", validate=_one_of(tuple(ANALYSES)))
    quota = fields.String(load_default="")


class EventSchema(Schema):
    """One event condition of qp.events."""

    class Meta:
        unknown = EXCLUDE

    eventName = Text(required=True, validate=validate.Length(min=1, max=200))  # noqa: N815
    comparator = fields.Raw(load_default=None)
    uceCalcuSymbol = fields.Raw(load_default=None)  # noqa: N815
    num = fields.Raw(load_default=None)
    recentDay = fields.String(load_default=None, allow_none=True)  # noqa: N815
    startTime = fields.String(load_default=None, allow_none=True)  # noqa: N815
    endTime = fields.String(load_default=None, allow_none=True)  # noqa: N815
    taPropQuota = fields.Nested(QuotaSchema, required=True)  # noqa: N815
    filts = fields.List(fields.Nested(FilterSchema), load_default=list)
    relation = fields.String(load_default="and", validate=_one_of(RELATIONS))


def _aggregate_values(cmp: str, num) -> list:
    if cmp == "between":
        bounds = num if isinstance(num, list) else re.split(r"\s*[,~]\s*", str(num or ""))
        if len(bounds) != 2:
            raise ValidationError({"num": ['range takes two numbers: "low,high" or [low, high]']})
        values = [_number(str(b).strip(), "num") for b in bounds]
        if values[0] > values[1]:
            raise ValidationError({"num": ["range needs low <= high"]})
        return values
    if num is None or num == "" or isinstance(num, (bool, list, dict)):
        raise ValidationError({"num": ["give the number the aggregate is compared with"]})
    try:
        return [_number(str(num).strip(), "num")]
    except ValidationError as exc:
        raise ValidationError({"num": exc.messages}) from None


def aggregate(quota: dict) -> dict:
    """The canonical aggregate of a taPropQuota (or a tag's {analysis, quota})."""
    fn = ANALYSES[quota["analysis"]]
    if fn in NEEDS_QUOTA:
        if not quota.get("quota"):
            raise ValidationError({"quota": [f"{quota['analysis']} needs quota: the event property it aggregates"]})
        return {"fn": fn, "property": quota["quota"]}
    return {"fn": fn}


def event_leaf(data: dict) -> dict:
    """The canonical event leaf of one loaded event condition."""
    cmp = _comparator(data, AGGREGATE_COMPARATORS, "comparator", "uceCalcuSymbol")
    try:
        agg = aggregate(data["taPropQuota"])
    except ValidationError as exc:
        raise ValidationError({"taPropQuota": exc.messages}) from None
    leaf = {"type": "event", "event": data["eventName"], "agg": agg, "window": window(data), "cmp": cmp,
            "values": _aggregate_values(cmp, data["num"])}
    conditions = _filters(data["filts"], data["relation"], "event", "filts")
    if conditions:
        leaf["filter"] = _combine(conditions, data["relation"])
    return leaf


# -- qp (a condition cohort, or a tag value's userClusterDef) ---------------------------------------


class QpSchema(Schema):
    """A condition cluster definition: events, user filters and how they combine."""

    class Meta:
        unknown = EXCLUDE

    events = fields.List(fields.Nested(EventSchema), load_default=list)
    event_relation = fields.String(load_default="and", validate=_one_of(RELATIONS))
    filts = fields.List(fields.Nested(FilterSchema), load_default=list)
    relation = fields.String(load_default="and", validate=_one_of(RELATIONS))
    event_user_relation = fields.String(load_default="and", validate=_one_of(RELATIONS))


def qp_tree(data: dict) -> dict:
    """The canonical tree of a loaded qp; raises ValidationError with paths below qp."""
    leaves = []
    for index, event in enumerate(data["events"]):
        try:
            leaves.append(event_leaf(event))
        except ValidationError as exc:
            raise ValidationError({"events": {index: exc.messages}}) from None
    users = [{"type": "profile", **c} if "property" in c else _profile_group(c)
             for c in _filters(data["filts"], data["relation"], "user", "filts")]
    parts = [part for part in (_combine(leaves, data["event_relation"]), _combine(users, data["relation"])) if part]
    if not parts:
        raise ValidationError({"events": ["give at least one event condition or user property condition (filts)"]})
    return _combine(parts, data["event_user_relation"])


def _profile_group(group: dict) -> dict:
    """An and/or group of property conditions as profile leaves (include with several ftv)."""
    return {"op": group["op"], "children": [{"type": "profile", **c} for c in group["children"]]}


def load_qp(qp, path: str = "qp") -> dict:
    """Validate a qp (or userClusterDef) and return its canonical tree, checked by the engine's parser."""
    if not isinstance(qp, dict):
        raise ValidationError({path: ["must be an object"]})
    try:
        tree = qp_tree(QpSchema().load(qp))
        return parse_definition(tree)
    except ValidationError as exc:
        raise ValidationError({path: exc.messages}) from None
    except DefinitionError as exc:
        raise ValidationError({path: exc.errors}) from None


# -- request bodies --------------------------------------------------------------------------------


class ClusterBodySchema(Schema):
    """POST /open/user-cluster-add (and -update) bodies: the settings; qp / tagQp are loaded by kind."""

    class Meta:
        unknown = EXCLUDE

    projectId = ProjectId(required=True)  # noqa: N815
    clusterName = fields.String(validate=validate.Regexp(  # noqa: N815
        NAME_PATTERN + r"\Z", error="letters, digits and _ only, at most 24 characters"))
    clusterCatalog = fields.String(load_default=None, validate=_one_of(CATALOGS))  # noqa: N815
    clusterType = fields.String(load_default=None, validate=_one_of(tuple(CLUSTER_TYPES)))  # noqa: N815
    displayName = fields.String(validate=validate.Length(min=1, max=50))  # noqa: N815
    remarks = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    subConditionTabType = fields.String(load_default=None, validate=_one_of(TAG_KINDS))  # noqa: N815
    qp = fields.Raw(load_default=None)
    tagQp = fields.Raw(load_default=None)  # noqa: N815

    @pre_load
    def _strip_name(self, data, **kwargs):
        if isinstance(data, dict) and isinstance(data.get("clusterName"), str):
            data = {**data, "clusterName": data["clusterName"].strip()}
        return data

    @validates_schema
    def _catalog_matches_type(self, data, **kwargs):
        catalog, kind = data.get("clusterCatalog"), data.get("clusterType")
        if catalog and kind and CLUSTER_TYPES[kind][0] != catalog:
            raise ValidationError(f"clusterType {kind} is not of clusterCatalog {catalog}", "clusterType")


def load_cluster(body, *, creating: bool) -> dict:
    """Validate an add / update body; return its settings with catalog and type filled in."""
    if not isinstance(body, dict):
        raise ValidationError({"_root": ["the body must be a JSON object"]})
    data = ClusterBodySchema().load(body, partial=() if creating else ("clusterName", "displayName"))
    missing = {name: ["missing field"] for name in ("clusterName", "displayName") if creating and name not in data}
    if missing:
        raise ValidationError(missing)
    kind = data["clusterType"] or DEFAULT_TYPE[data["clusterCatalog"] or "catalog_cluster"]
    data["clusterType"], data["clusterCatalog"] = kind, CLUSTER_TYPES[kind][0]
    return data


class PagerSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    pageNum = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10**6))  # noqa: N815
    pageSize = fields.Integer(load_default=10, strict=True, validate=validate.Range(min=1, max=1000))  # noqa: N815


class ListSchema(Schema):
    """POST /open/user-cluster-list: catalog, fuzzy name, types, page."""

    class Meta:
        unknown = EXCLUDE

    projectId = ProjectId(required=True)  # noqa: N815
    clusterCatalog = fields.String(load_default=None, allow_none=True, validate=_one_of(CATALOGS))  # noqa: N815
    clusterName = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))  # noqa: N815
    clusterTypes = fields.List(fields.String(validate=_one_of(tuple(CLUSTER_TYPES))), load_default=list,  # noqa: N815
                               allow_none=True)
    pagerHeader = fields.Nested(PagerSchema, load_default=dict, allow_none=True)  # noqa: N815


def load_list(body) -> dict:
    """The list query: catalog (None: both), name substring, types ([]: all), pageNum and pageSize."""
    data = ListSchema().load(body)
    pager = PagerSchema().load(data.pop("pagerHeader") or {})
    return {**data, "clusterName": (data["clusterName"] or "").strip() or None,
            "clusterTypes": data["clusterTypes"] or [], **pager}


# -- tags (tagQp) -> the canonical tag definition (docs/definition.md "Tags") -----------------------


class TagValueDefSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tagValue = Text(required=True, validate=validate.Length(min=1, max=1000))  # noqa: N815
    userClusterDef = fields.Raw(required=True)  # noqa: N815


class PropertyRefSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    columnName = Text(required=True, validate=validate.Length(min=1, max=200))  # noqa: N815
    tableType = fields.String(load_default="event", validate=_one_of(("event",)))  # noqa: N815


class CalcPropSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    property = fields.Nested(PropertyRefSchema, required=True)


class FirstLastEventSchema(Schema):
    """userTagConFirstLastEventDef.userTagConFirstLastEvent."""

    class Meta:
        unknown = EXCLUDE

    eventName = Text(required=True, validate=validate.Length(min=1, max=200))  # noqa: N815
    isFirstEvent = fields.Boolean(required=True, truthy={True}, falsy={False})  # noqa: N815
    recentDay = fields.String(load_default=None, allow_none=True)  # noqa: N815
    startTime = fields.String(load_default=None, allow_none=True)  # noqa: N815
    endTime = fields.String(load_default=None, allow_none=True)  # noqa: N815
    calcPropVo = fields.Nested(CalcPropSchema, required=True)  # noqa: N815
    filts = fields.List(fields.Nested(FilterSchema), load_default=list)
    relation = fields.String(load_default="and", validate=_one_of(RELATIONS))


class QuotaEventSchema(Schema):
    """userTagConQuotaDef.userTagConQuotaEvent."""

    class Meta:
        unknown = EXCLUDE

    eventName = Text(required=True, validate=validate.Length(min=1, max=200))  # noqa: N815
    analysis = fields.String(load_default="TIMES", validate=_one_of(tuple(ANALYSES)))
    quota = fields.String(load_default="")
    recentDay = fields.String(load_default=None, allow_none=True)  # noqa: N815
    startTime = fields.String(load_default=None, allow_none=True)  # noqa: N815
    endTime = fields.String(load_default=None, allow_none=True)  # noqa: N815
    filts = fields.List(fields.Nested(FilterSchema), load_default=list)
    relation = fields.String(load_default="and", validate=_one_of(RELATIONS))


def _event_part(data: dict) -> dict:
    """event, window and filter of a tag's event (first/last or metric), as an event leaf has them."""
    part = {"event": data["eventName"], "window": window(data)}
    conditions = _filters(data["filts"], data["relation"], "event", "filts")
    if conditions:
        part["filter"] = _combine(conditions, data["relation"])
    return part


def _nested(data, key: str, schema: Schema, path: str) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise ValidationError({path: [f"must be an object with {key}"]})
    try:
        return schema.load(data[key])
    except ValidationError as exc:
        raise ValidationError({path: {key: exc.messages}}) from None


def tag_definition(kind: str | None, tag_qp) -> dict:
    """The canonical tag definition of a tagQp of kind subConditionTabType (default: custom values)."""
    if not isinstance(tag_qp, dict):
        raise ValidationError({"tagQp": ["a condition tag needs tagQp (an object)"]})
    kind = kind or "tag_condition_default"
    if kind == "tag_condition_default":
        defs = tag_qp.get("userTagValueDefs")
        if not isinstance(defs, list) or not defs:
            raise ValidationError({"tagQp.userTagValueDefs": ["give at least one {tagValue, userClusterDef}"]})
        values = []
        for index, item in enumerate(defs):
            where = f"tagQp.userTagValueDefs[{index}]"
            try:
                loaded = TagValueDefSchema().load(item if isinstance(item, dict) else {})
            except ValidationError as exc:
                raise ValidationError({where: exc.messages}) from None
            values.append({"value": loaded["tagValue"],
                           "definition": load_qp(loaded["userClusterDef"], f"{where}.userClusterDef")})
        return {"kind": "values", "values": values}
    if kind == "tag_condition_by_firstlast_event":
        data = _nested(tag_qp.get("userTagConFirstLastEventDef"), "userTagConFirstLastEvent", FirstLastEventSchema(),
                       "tagQp.userTagConFirstLastEventDef")
        try:
            part = _event_part(data)
        except ValidationError as exc:
            raise ValidationError({"tagQp.userTagConFirstLastEventDef.userTagConFirstLastEvent": exc.messages}) from None
        return {"kind": "first_last", "which": "first" if data["isFirstEvent"] else "last", **part,
                "property": data["calcPropVo"]["property"]["columnName"]}
    data = _nested(tag_qp.get("userTagConQuotaDef"), "userTagConQuotaEvent", QuotaEventSchema(),
                   "tagQp.userTagConQuotaDef")
    try:
        return {"kind": "metric", **_event_part(data), "agg": aggregate(data)}
    except ValidationError as exc:
        raise ValidationError({"tagQp.userTagConQuotaDef.userTagConQuotaEvent": exc.messages}) from None
