"""Canonical leaves as native Druid queries: filters, groupBy on the user key, aggregators and having specs.

Pure functions of the leaf, the project's column catalog and the evaluation's zone and base time,
so the JSON each leaf becomes can be checked against Druid's documented shapes without a broker.
Times are epoch milliseconds (Druid's `__time`); time properties are LONG milliseconds too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ...errors import EngineError
from ...timewin import day_range, duration_before, resolve_window, to_utc_naive
from ...values import NEGATIONS, coerce_value
from .settings import DruidSettings

ETERNITY = "1000-01-01T00:00:00.000Z/3000-01-01T00:00:00.000Z"
EPOCH = datetime(1970, 1, 1)
VALUE = "value"
NON_NULL = "non_null"
NUMERIC_TYPES = ("LONG", "DOUBLE", "FLOAT")


@dataclass(frozen=True)
class Field:
    """A canonical property as Druid stores it: column name, Druid type and comparison kind."""

    column: str
    druid_type: str
    kind: str


class Catalog:
    """The properties of the events and profiles datasources, from segmentMetadata and the column mapping."""

    def __init__(self, settings: DruidSettings, event_types: dict[str, str], profile_types: dict[str, str]):
        self.settings = settings
        hidden = {"__time", settings.user_key}
        self.events = self._fields(event_types, settings.columns["events"], hidden | {settings.event_name})
        time_type = "LONG" if settings.time_column == "__time" else event_types.get(settings.time_column, "LONG")
        self.events["event"] = Field(settings.event_name, "STRING", "string")
        self.events["time"] = Field(settings.time_column, time_type, "time")
        self.profiles = self._fields(profile_types, settings.columns["profiles"], hidden)

    @staticmethod
    def _fields(types: dict[str, str], mapping, hidden: set[str]) -> dict[str, Field]:
        mapped = {c.column for c in mapping.values()}
        fields = {}
        for column, druid_type in types.items():
            if column in hidden or column in mapped:
                continue
            fields[column] = Field(column, druid_type, _kind_of(druid_type))
        for prop, spec in mapping.items():
            if spec.column in types:
                druid_type = types[spec.column]
                fields[prop] = Field(spec.column, druid_type, spec.kind or _kind_of(druid_type))
        return fields

    def kinds(self) -> dict[str, dict[str, str]]:
        return {"event": {p: f.kind for p, f in self.events.items()},
                "profile": {p: f.kind for p, f in self.profiles.items()}}


def _kind_of(druid_type: str) -> str:
    return "number" if str(druid_type).upper() in NUMERIC_TYPES else "string"


def millis(moment: datetime) -> int:
    """Epoch milliseconds of a naive UTC (or aware) datetime."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def number_text(value) -> str:
    """A bound value as Druid reads it (Java's Long/Double parsers)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def numeric_bound(column: str, lower=None, upper=None, lower_strict=False, upper_strict=False) -> dict:
    bound = {"type": "bound", "dimension": column, "ordering": "numeric"}
    if lower is not None:
        bound.update(lower=number_text(lower), lowerStrict=lower_strict)
    if upper is not None:
        bound.update(upper=number_text(upper), upperStrict=upper_strict)
    return bound


def is_null(column: str) -> dict:
    return {"type": "selector", "dimension": column, "value": None}


def negate(spec: dict) -> dict:
    return {"type": "not", "field": spec}


def all_of(specs: list[dict]) -> dict | None:
    flat = []
    for spec in specs:
        if spec is not None:
            flat.extend(spec["fields"] if spec["type"] == "and" else [spec])
    specs = flat
    if not specs:
        return None
    return specs[0] if len(specs) == 1 else {"type": "and", "fields": specs}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compare_values(column: str, cmp: str, values: list, numeric: bool) -> dict:
    """A filter testing column against an aggregate-style comparison (eq any / ne none / ranges)."""
    if numeric:
        if cmp in ("eq", "ne"):
            matches = [numeric_bound(column, v, v) for v in values]
            spec = matches[0] if len(matches) == 1 else {"type": "or", "fields": matches}
            return spec if cmp == "eq" else negate(spec)
        if cmp == "between":
            return numeric_bound(column, values[0], values[1])
        return {"gt": lambda v: numeric_bound(column, lower=v, lower_strict=True),
                "gte": lambda v: numeric_bound(column, lower=v),
                "lt": lambda v: numeric_bound(column, upper=v, upper_strict=True),
                "lte": lambda v: numeric_bound(column, upper=v)}[cmp](values[0])
    if cmp in ("eq", "ne"):
        spec = {"type": "in", "dimension": column, "values": list(values)}
        return spec if cmp == "eq" else negate(spec)
    bound = {"type": "bound", "dimension": column, "ordering": "lexicographic"}
    if cmp == "between":
        return {**bound, "lower": values[0], "upper": values[1], "lowerStrict": False, "upperStrict": False}
    lower = cmp in ("gt", "gte")
    side = "lower" if lower else "upper"
    return {**bound, side: values[0], f"{side}Strict": cmp in ("gt", "lt")}


class LeafQueries:
    """The Druid queries of the leaves of one evaluation (zone, base time) over one catalog."""

    def __init__(self, settings: DruidSettings, catalog: Catalog, tz, base_time: datetime):
        self.settings = settings
        self.catalog = catalog
        self.tz = tz
        self.base_time = base_time

    # -- filters ------------------------------------------------------------------------------

    def field(self, prop: str, fields: dict[str, Field], where: str) -> Field:
        if prop not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise EngineError("unknown_property", f"{where} property {prop!r} does not exist (known: {known})")
        return fields[prop]

    def condition(self, cond: dict, fields: dict[str, Field], where: str) -> dict:
        """The filter of a condition; a negative comparator also matches nulls, as its positive's complement."""
        positive = NEGATIONS.get(cond["cmp"], cond["cmp"])
        spec = self.positive({**cond, "cmp": positive}, fields, where)
        if positive == cond["cmp"]:
            return spec
        return {"type": "or", "fields": [negate(spec), is_null(self.field(cond["property"], fields, where).column)]}

    def positive(self, cond: dict, fields: dict[str, Field], where: str) -> dict:
        """A positive comparator as a filter; a null value never matches it."""
        prop, cmp, values = cond["property"], cond["cmp"], cond["values"]
        f = self.field(prop, fields, where)
        kind, column = f.kind, f.column

        def need(*kinds):
            if kind not in kinds:
                raise EngineError("type_mismatch", f"{cmp} does not apply to {where} property {prop!r} ({kind})")

        if cmp == "is_set":
            return negate(is_null(column))
        if cmp == "not_empty":
            if kind == "string":
                return {"type": "and", "fields": [negate(is_null(column)),
                                                  negate({"type": "selector", "dimension": column, "value": ""})]}
            return negate(is_null(column))
        if cmp in ("is_true", "is_false"):
            need("boolean")
            return self.boolean_match(f, cmp == "is_true")
        if cmp in ("contains", "starts_with", "ends_with", "regex"):
            need("string")
            text = str(values[0])
            if cmp == "regex":
                return {"type": "regex", "dimension": column, "pattern": text}
            pattern = {"contains": "%{}%", "starts_with": "{}%", "ends_with": "%{}"}[cmp].format(_like_escape(text))
            return {"type": "like", "dimension": column, "pattern": pattern, "escape": "\\"}
        if cmp == "date_between":
            need("time")
            start, end = day_range(values[0], values[1], self.tz)
            return numeric_bound(column, millis(start), millis(end), upper_strict=True)
        if cmp == "within_last":
            need("time")
            since = duration_before(self.base_time, values[0], values[1], self.tz)
            return numeric_bound(column, millis(since), millis(to_utc_naive(self.base_time)))
        if cmp == "before_last":
            need("time")
            since = duration_before(self.base_time, values[0], values[1], self.tz)
            return numeric_bound(column, upper=millis(since), upper_strict=True)
        if kind == "boolean" and cmp != "eq":
            raise EngineError("type_mismatch", f"{cmp} does not apply to boolean property {prop!r}")
        typed = [coerce_value(v, kind, prop, self.tz) for v in values]
        if kind == "boolean":
            matches = [self.boolean_match(f, v) for v in dict.fromkeys(typed)]
            return matches[0] if len(matches) == 1 else {"type": "or", "fields": matches}
        if kind == "time":
            typed = [millis(v) for v in typed]
        return compare_values(column, cmp, typed, numeric=kind in ("number", "time"))

    @staticmethod
    def boolean_match(f: Field, value: bool) -> dict:
        # Druid ingests booleans as the strings "true"/"false", or as longs 1/0 with strict booleans.
        if f.druid_type.upper() in NUMERIC_TYPES:
            return numeric_bound(f.column, int(value), int(value))
        return {"type": "selector", "dimension": f.column, "value": "true" if value else "false"}

    def row_filter(self, node: dict) -> dict:
        if "children" in node:
            return {"type": node["op"], "fields": [self.row_filter(c) for c in node["children"]]}
        return self.condition(node, self.catalog.events, "event")

    def event_scope(self, event: str, filter_: dict | None, window: dict) -> tuple[list[str], dict | None]:
        """(intervals, filter) of the event rows a leaf or step reads."""
        start, end = resolve_window(window, self.base_time, self.tz)
        start_ms, end_ms = millis(start), millis(end)
        parts = []
        if self.settings.time_column == "__time":
            intervals = [f"{iso(start_ms)}/{iso(end_ms)}"] if start_ms < end_ms else []
        else:
            intervals = [ETERNITY]
            parts.append(numeric_bound(self.settings.time_column, start_ms, end_ms, upper_strict=True))
        if event != "*":
            parts.append({"type": "selector", "dimension": self.settings.event_name, "value": event})
        if filter_:
            parts.append(self.row_filter(filter_))
        return intervals, all_of(parts)

    # -- queries ------------------------------------------------------------------------------

    def group_by(self, datasource: str, intervals: list[str], filter_: dict | None, dimensions: list,
                 aggregations: list | None = None, having: dict | None = None, granularity="all",
                 post_aggregations: list | None = None) -> dict:
        query = {"queryType": "groupBy", "dataSource": datasource, "intervals": intervals,
                 "granularity": granularity, "dimensions": dimensions, "aggregations": aggregations or []}
        if filter_ is not None:
            query["filter"] = filter_
        if post_aggregations:
            query["postAggregations"] = post_aggregations
        if having is not None:
            query["having"] = having
        return query

    def users(self, datasource: str, intervals: list[str] | None = None, filter_: dict | None = None) -> dict:
        """The distinct user keys of a datasource's rows passing filter."""
        return self.group_by(datasource, intervals or [ETERNITY], filter_, [self.settings.user_key])

    def profile(self, leaf: dict) -> tuple[dict | None, bool]:
        """(query of the users matching the positive comparator, whether the leaf is its complement)."""
        positive = NEGATIONS.get(leaf["cmp"], leaf["cmp"])
        spec = self.positive({**leaf, "cmp": positive}, self.catalog.profiles, "profile")
        if self.settings.profiles is None:
            return None, positive != leaf["cmp"]
        return self.users(self.settings.profiles, filter_=spec), positive != leaf["cmp"]

    def event_value(self, agg: dict) -> tuple[list, list, dict | None]:
        """(aggregations, post-aggregations, guard having) of an aggregate; the value is named VALUE."""
        fn = agg["fn"]
        if fn == "count":
            return [{"type": "count", "name": VALUE}], [], None
        f = self.field(agg["property"], self.catalog.events, "event")
        if f.kind != "number":
            raise EngineError("type_mismatch", f"{fn} needs a numeric property; {agg['property']!r} is {f.kind}")
        family = "long" if f.druid_type.upper() == "LONG" else "double"
        non_null = {"type": "filtered", "filter": negate(is_null(f.column)),
                    "aggregator": {"type": "count", "name": NON_NULL}, "name": NON_NULL}
        has_values = numeric_bound(NON_NULL, lower=0, lower_strict=True)
        if fn == "sum":
            return [{"type": f"{family}Sum", "name": VALUE, "fieldName": f.column}], [], None
        if fn in ("min", "max"):
            return ([{"type": f"{family}{fn.title()}", "name": VALUE, "fieldName": f.column}, non_null], [],
                    has_values)
        # avg: sum over the non-null values divided by their number.
        return ([{"type": "doubleSum", "name": "sum", "fieldName": f.column}, non_null],
                [{"type": "arithmetic", "name": VALUE, "fn": "quotient",
                  "fields": [{"type": "fieldAccess", "fieldName": "sum"},
                             {"type": "fieldAccess", "fieldName": NON_NULL}]}], has_values)

    def event(self, leaf: dict, complement: bool) -> dict:
        """The users whose aggregate passes the comparison (failing it when complement) among those with rows."""
        intervals, filter_ = self.event_scope(leaf["event"], leaf.get("filter"), leaf["window"])
        aggregations, posts, guard = self.event_value(leaf["agg"])
        test = compare_values(VALUE, leaf["cmp"], leaf["values"], numeric=True)
        if complement:
            # A null sum (no non-null value) is 0, which passes: it never fails the comparison.
            test = negate({"type": "or", "fields": [test, is_null(VALUE)]})
        having = {"type": "filter", "filter": test if guard is None else {"type": "and", "fields": [guard, test]}}
        return self.group_by(self.settings.events, intervals, filter_, [self.settings.user_key], aggregations,
                             having, post_aggregations=posts)

    def distinct_pairs(self, leaf: dict) -> dict:
        """(user, value) pairs for count_distinct, (bucket, user) rows per local day for days; counted by the caller."""
        intervals, filter_ = self.event_scope(leaf["event"], leaf.get("filter"), leaf["window"])
        key = self.settings.user_key
        if leaf["agg"]["fn"] == "days":
            query = self.group_by(self.settings.events, intervals, filter_, [key],
                                  granularity={"type": "period", "period": "P1D", "timeZone": self.tz.key})
            query["context"] = {"sortByDimsFirst": True}
            return query
        f = self.field(leaf["agg"]["property"], self.catalog.events, "event")
        dimension = {"type": "default", "dimension": f.column, "outputName": VALUE}
        return self.group_by(self.settings.events, intervals, all_of([filter_, negate(is_null(f.column))]),
                             [key, dimension])

    def sequence_step(self, step: dict, window: dict, how: str, after_ms: int | None = None) -> dict:
        """A step's rows per user: first time (how=min), last time (max), or every distinct time (all) after after_ms."""
        intervals, filter_ = self.event_scope(step["event"], step.get("filter"), window)
        key, time_column = self.settings.user_key, self.settings.time_column
        if after_ms is not None:
            filter_ = all_of([filter_, numeric_bound(time_column, lower=after_ms, lower_strict=True)])
        if how in ("min", "max"):
            return self.group_by(self.settings.events, intervals, filter_, [key],
                                 [{"type": f"long{how.title()}", "name": VALUE, "fieldName": time_column}])
        return self.group_by(self.settings.events, intervals, filter_,
                             [key, {"type": "default", "dimension": time_column, "outputName": VALUE,
                                    "outputType": "LONG"}])

    # -- per-user values (tags) and ID matching ------------------------------------------------

    def metric(self, spec: dict) -> tuple[dict, int]:
        """(query, index of the value in its array rows) of a metric tag's count/sum/min/max/avg per user.

        The event leaf's groupBy without the comparison; min/max/avg keep only users with a non-null value.
        """
        intervals, filter_ = self.event_scope(spec["event"], spec.get("filter"), spec["window"])
        aggregations, posts, guard = self.event_value(spec["agg"])
        having = None if guard is None else {"type": "filter", "filter": guard}
        query = self.group_by(self.settings.events, intervals, filter_, [self.settings.user_key], aggregations,
                              having, post_aggregations=posts)
        names = [a["name"] for a in aggregations] + [p["name"] for p in posts]
        return query, 1 + names.index(VALUE)

    def first_last(self, spec: dict) -> tuple[dict, Field]:
        """(query, the property's field) of a first_last tag.

        The built-in `time`: one row per user, its first (longMin) or last (longMax) time. Any other
        property: one row per user and distinct non-null value, with that value's first or last time;
        the caller picks each user's smallest (first) or largest (last) (time, value) pair, the ties
        rule of docs/definition.md "Tags" (Druid's stringFirst/longLast leave ties unspecified).
        """
        intervals, filter_ = self.event_scope(spec["event"], spec.get("filter"), spec["window"])
        f = self.field(spec["property"], self.catalog.events, "event")
        how = "Min" if spec["which"] == "first" else "Max"
        moment = {"type": f"long{how}", "name": MOMENT, "fieldName": self.settings.time_column}
        key = self.settings.user_key
        if spec["property"] == "time":
            return self.group_by(self.settings.events, intervals, filter_, [key], [moment]), f
        dimension = {"type": "default", "dimension": f.column, "outputName": VALUE, "outputType": output_type(f)}
        return self.group_by(self.settings.events, intervals, all_of([filter_, negate(is_null(f.column))]),
                             [key, dimension], [moment]), f

    def match_profile(self, f: Field, texts: list[str]) -> dict:
        """The (user key, value) rows of the profiles whose property is one of texts (canonical numbers for numbers)."""
        dimension = {"type": "default", "dimension": f.column, "outputName": VALUE, "outputType": output_type(f)}
        return self.group_by(self.settings.profiles, [ETERNITY], {"type": "in", "dimension": f.column, "values": texts},
                             [self.settings.user_key, dimension])


MOMENT = "moment"


def output_type(f: Field) -> str:
    """The groupBy output type that gives a property's values back typed (numbers, times, long booleans)."""
    druid_type = f.druid_type.upper()
    if druid_type == "LONG" or f.kind == "time":
        return "LONG"
    if druid_type in ("DOUBLE", "FLOAT"):
        return "DOUBLE"
    return "STRING"
