"""Druid filters and having specs translated to parameterised DuckDB SQL.

Druid (since 28) filters with SQL three-valued logic: a comparison against a null value is
unknown, and `not` of unknown is still unknown, so the row is not matched. DuckDB's boolean
logic is the same, so each filter becomes a SQL predicate that is NULL, not FALSE, on nulls.
"""

from __future__ import annotations

import math
import re

from .errors import BadQuery, UnknownType, Unsupported, require
from .times import JAVA_LONG_MAX, clamp_datetime, clamp_long, parse_interval

STRING, LONG, DOUBLE = "STRING", "LONG", "DOUBLE"
NUMERIC = (LONG, DOUBLE)
_NUMERIC_MATCH_TYPES = {"LONG": LONG, "DOUBLE": DOUBLE, "FLOAT": DOUBLE}
# RE2 (DuckDB's regex engine) lacks these Java regex constructs; refuse rather than misread them.
_JAVA_ONLY_REGEX = re.compile(r"\(\?[=!>]|\(\?<[=!]|\\[1-9]|[*+?}]\+")
UNSUPPORTED_FILTERS = {"columnComparison", "expression", "javascript", "extraction", "spatial", "bloom",
                       "arrayContainsElement", "istrue", "isfalse"}
FILTER_TYPES = {"selector", "equals", "null", "in", "bound", "range", "like", "regex", "search", "interval",
                "and", "or", "not", "true", "false"}
# Druid's string comparators; only the first two are implemented.
ORDERINGS = {"lexicographic", "numeric", "alphanumeric", "strlen", "version", "natural"}
SEARCH_QUERY_TYPES = {"contains", "insensitive_contains", "fragment", "regex", "all"}


def column_type(value, path) -> str:
    """A Druid ColumnType name (STRING, LONG, DOUBLE, FLOAT, ARRAY<..>, COMPLEX<..>), upper-cased."""
    text = require({"t": value}, "t", path, str).upper()
    if text in ("STRING", "LONG", "DOUBLE", "FLOAT") or re.fullmatch(r"(ARRAY|COMPLEX)<.+>", text):
        return text
    raise BadQuery(f"{path}: {value!r} is not a Druid column type (STRING, LONG, DOUBLE, FLOAT, ARRAY<..>, COMPLEX<..>)")


def ordering_of(spec, path: str, field: str = "ordering") -> str:
    """An implemented ordering name; 501 for Druid's other comparators, 400 for names Druid lacks."""
    ordering = spec.get(field, "lexicographic")
    if isinstance(ordering, dict):
        ordering = ordering.get("type")
    # Druid reads comparator names case-insensitively.
    name = ordering.lower() if isinstance(ordering, str) else ordering
    if name in ("lexicographic", "numeric"):
        return name
    if isinstance(name, str) and name in ORDERINGS:
        raise Unsupported(f"{path}.{field} {ordering!r} is not supported (lexicographic, numeric)")
    raise UnknownType(f"{path}.{field}", ordering, "StringComparator", ORDERINGS)


def to_number(value):
    """A JSON value as int or float the way Druid parses a numeric match value; None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        # Beyond a long, Druid reads the number as a double; beyond a double it is not a number.
        if abs(value) <= JAVA_LONG_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


class Columns:
    """Resolves Druid column names to SQL and Druid types; subclasses say what exists."""

    def __init__(self):
        self.used: set[str] = set()

    def type_of(self, name: str) -> str | None:
        raise NotImplementedError

    def sql(self, name: str) -> str:
        """SQL for the column, or a typed NULL when the column does not exist (as Druid treats it)."""
        if self.type_of(name) is None:
            return "CAST(NULL AS VARCHAR)"
        self.used.add(name)
        return '"' + name.replace('"', '""') + '"'

    def time_sql(self) -> str | None:
        """SQL of the raw TIMESTAMP behind __time, when there is one (lets interval filters prune)."""
        return None


class SqlParams:
    """Collects named parameters, so SQL fragments can be assembled in any order."""

    def __init__(self):
        self.values: dict = {}

    def __call__(self, value) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return "$" + name


def _unknown_when_null(column: str) -> str:
    """FALSE for a non-null value and NULL (unknown) for a null one: a match that can never happen."""
    return f"(CASE WHEN {column} IS NULL THEN NULL ELSE FALSE END)"


def _as_text(column: str, kind: str | None) -> str:
    return column if kind in (STRING, None) else f"CAST({column} AS VARCHAR)"


def _as_number(column: str, kind: str | None) -> str:
    return column if kind in NUMERIC else f"TRY_CAST({column} AS DOUBLE)"


class FilterTranslator:
    """Turns one query's filters into SQL over `columns`, adding parameters to `params`."""

    def __init__(self, columns: Columns, params: SqlParams):
        self.columns = columns
        self.p = params

    def filter(self, spec, path: str) -> str:
        if not isinstance(spec, dict):
            raise BadQuery(f"{path} must be a filter object")
        kind = require(spec, "type", path, str)
        if spec.get("extractionFn") is not None:
            raise Unsupported(f"{path}.extractionFn is not supported by the embedded engine")
        if kind in UNSUPPORTED_FILTERS:
            raise Unsupported(f"{path}: filter type {kind!r} is not supported by the embedded engine")
        if kind not in FILTER_TYPES:
            raise UnknownType(f"{path}.type", kind, "DimFilter", FILTER_TYPES | UNSUPPORTED_FILTERS)
        return getattr(self, "_" + kind)(spec, path)

    def _column(self, spec, path, field="dimension"):
        name = spec.get(field)
        if name is None and field == "dimension":
            name = spec.get("column")
        if not isinstance(name, str):
            raise BadQuery(f"{path}.{field} is required")
        return self.columns.sql(name), self.columns.type_of(name)

    def _match(self, column: str, kind: str | None, value) -> str:
        """column = value, typed by the column: numeric columns compare numerically."""
        if value is None:
            return f"({column} IS NULL)"
        if kind in NUMERIC:
            number = to_number(value)
            if number is None:
                return _unknown_when_null(column)
            return f"({column} = {self.p(number)})"
        return f"({column} = {self.p(value if isinstance(value, str) else _text_of(value))})"

    def _true(self, spec, path):
        return "TRUE"

    def _false(self, spec, path):
        return "FALSE"

    def _selector(self, spec, path):
        column, kind = self._column(spec, path)
        value = spec.get("value")
        if isinstance(value, (dict, list)):
            raise BadQuery(f"{path}.value must be a string, number or null")
        return self._match(column, kind, value)

    def _equals(self, spec, path):
        column, kind = self._column(spec, path, "column")
        match_type = column_type(require(spec, "matchValueType", path), f"{path}.matchValueType")
        value = require(spec, "matchValue", path)
        if isinstance(value, (dict, list)):
            raise BadQuery(f"{path}.matchValue must be a string, number or boolean")
        if match_type.startswith("ARRAY") or match_type.startswith("COMPLEX"):
            raise Unsupported(f"{path}.matchValueType {match_type} is not supported")
        if kind == STRING and match_type in _NUMERIC_MATCH_TYPES:
            number = to_number(value)
            if number is None:
                raise BadQuery(f"{path}.matchValue {value!r} is not a {match_type}")
            return f"({_as_number(column, kind)} = {self.p(number)})"
        return self._match(column, kind, value)

    def _null(self, spec, path):
        column, _ = self._column(spec, path, "column")
        return f"({column} IS NULL)"

    def _in(self, spec, path):
        column, kind = self._column(spec, path)
        values = spec.get("values", spec.get("sortedValues"))
        if not isinstance(values, list):
            raise BadQuery(f"{path}.values must be a list")
        has_null = any(v is None for v in values)
        present = [v for v in values if v is not None]
        if kind in NUMERIC:
            numbers = [n for n in (to_number(v) for v in present) if n is not None]
            listed = ", ".join(self.p(n) for n in numbers)
        else:
            listed = ", ".join(self.p(v if isinstance(v, str) else _text_of(v)) for v in present)
        test = f"{column} IN ({listed})" if listed else _unknown_when_null(column)
        return f"({test} OR {column} IS NULL)" if has_null else f"({test})"

    def _ordering(self, spec, path) -> str:
        return ordering_of(spec, path)

    def _bounds(self, column, lower, upper, lower_open, upper_open, numeric, path, bound_type="numeric"):
        parts = []
        for value, field, op_open, op_closed, is_open in (
                (lower, "lower", ">", ">=", lower_open), (upper, "upper", "<", "<=", upper_open)):
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                raise BadQuery(f"{path}.{field} must be a string or a number")
            if numeric:
                number = to_number(value)
                if number is None:
                    raise BadQuery(f"{path}.{field} {value!r} is not a number ({bound_type} ordering)")
                value = number
            elif not isinstance(value, str):
                value = _text_of(value)
            parts.append(f"{column} {op_open if is_open else op_closed} {self.p(value)}")
        if not parts:
            raise BadQuery(f"{path} needs a lower or an upper bound")
        return "(" + " AND ".join(parts) + ")"

    def _bound(self, spec, path):
        column, kind = self._column(spec, path)
        numeric = self._ordering(spec, path) == "numeric"
        target = _as_number(column, kind) if numeric else _as_text(column, kind)
        return self._bounds(target, spec.get("lower"), spec.get("upper"), bool(spec.get("lowerStrict")),
                            bool(spec.get("upperStrict")), numeric, path)

    def _range(self, spec, path):
        column, kind = self._column(spec, path, "column")
        match_type = column_type(require(spec, "matchValueType", path), f"{path}.matchValueType")
        if match_type == "STRING":
            numeric = False
        elif match_type in _NUMERIC_MATCH_TYPES:
            numeric = True
        else:
            raise Unsupported(f"{path}.matchValueType {match_type} is not supported (STRING, LONG, DOUBLE, FLOAT)")
        target = _as_number(column, kind) if numeric else _as_text(column, kind)
        return self._bounds(target, spec.get("lower"), spec.get("upper"), bool(spec.get("lowerOpen")),
                            bool(spec.get("upperOpen")), numeric, path, match_type)

    def _like(self, spec, path):
        column, kind = self._column(spec, path)
        pattern = require(spec, "pattern", path, str)
        escape = spec.get("escape")
        if escape is None:
            return f"({_as_text(column, kind)} LIKE {self.p(pattern)})"
        if not isinstance(escape, str) or len(escape) != 1:
            raise BadQuery(f"{path}.escape must be a single character")
        return f"({_as_text(column, kind)} LIKE {self.p(pattern)} ESCAPE {self.p(escape)})"

    def _regex(self, spec, path):
        column, kind = self._column(spec, path)
        pattern = require(spec, "pattern", path, str)
        if _JAVA_ONLY_REGEX.search(pattern):
            raise Unsupported(f"{path}.pattern uses a Java regex feature (lookaround, backreference,"
                              " possessive or atomic group) the embedded engine does not support")
        return f"regexp_matches({_as_text(column, kind)}, {self.p(pattern)})"

    def _search(self, spec, path):
        column, kind = self._column(spec, path)
        query = require(spec, "query", path, dict)
        qtype = require(query, "type", f"{path}.query", str)
        text = _as_text(column, kind)
        if qtype in ("contains", "insensitive_contains"):
            value = require(query, "value", f"{path}.query", str)
            sensitive = qtype == "contains" and bool(query.get("caseSensitive", False))
            values = [value]
        elif qtype == "fragment":
            values = require(query, "values", f"{path}.query", list)
            if not values or not all(isinstance(v, str) for v in values):
                raise BadQuery(f"{path}.query.values must be a non-empty list of strings")
            sensitive = bool(query.get("caseSensitive", False))
        elif qtype in SEARCH_QUERY_TYPES:
            raise Unsupported(f"{path}.query.type {qtype!r} is not supported (contains, insensitive_contains, fragment)")
        else:
            raise UnknownType(f"{path}.query.type", qtype, "SearchQuerySpec", SEARCH_QUERY_TYPES)
        if sensitive:
            tests = [f"contains({text}, {self.p(v)})" for v in values]
        else:
            tests = [f"contains(lower({text}), {self.p(v.lower())})" for v in values]
        return "(" + " AND ".join(tests) + ")"

    def _interval(self, spec, path):
        name = spec.get("dimension")
        if not isinstance(name, str):
            raise BadQuery(f"{path}.dimension is required")
        intervals = require(spec, "intervals", path, list)
        ranges = [parse_interval(text, f"{path}.intervals[{i}]") for i, text in enumerate(intervals)]
        time_sql = self.columns.time_sql() if name == "__time" else None
        if time_sql is not None:
            self.columns.used.add("__time")
            tests = [f"({time_sql} >= {self.p(clamp_datetime(s))} AND {time_sql} < {self.p(clamp_datetime(e))})"
                     for s, e in ranges]
        else:
            column, kind = self.columns.sql(name), self.columns.type_of(name)
            number = column if kind == LONG else f"TRY_CAST({_as_number(column, kind)} AS BIGINT)"
            tests = [f"({number} >= {self.p(clamp_long(s))} AND {number} < {self.p(clamp_long(e))})"
                     for s, e in ranges]
        if not tests:
            return "FALSE"
        return "(" + " OR ".join(tests) + ")"

    def _fields(self, spec, path):
        fields = require(spec, "fields", path, list)
        if not fields:
            raise BadQuery(f"{path}.fields must not be empty")
        return [self.filter(f, f"{path}.fields[{i}]") for i, f in enumerate(fields)]

    def _and(self, spec, path):
        return "(" + " AND ".join(self._fields(spec, path)) + ")"

    def _or(self, spec, path):
        return "(" + " OR ".join(self._fields(spec, path)) + ")"

    def _not(self, spec, path):
        return f"(NOT {self.filter(require(spec, 'field', path, dict), f'{path}.field')})"


def _text_of(value) -> str:
    """How Druid spells a JSON number or boolean match value as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise BadQuery(f"match value {value!r} must be a string or a number")


HAVING_TYPES = {"greaterThan", "lessThan", "equalTo", "dimSelector", "filter", "and", "or", "not", "always", "never"}


class HavingTranslator:
    """Having specs over the aggregated rows, whose columns are the output names."""

    def __init__(self, filters: FilterTranslator):
        self.filters = filters
        self.p = filters.p

    def having(self, spec, path: str) -> str:
        if not isinstance(spec, dict):
            raise BadQuery(f"{path} must be a having object")
        kind = require(spec, "type", path, str)
        if kind in ("greaterThan", "lessThan", "equalTo"):
            name = require(spec, "aggregation", path, str)
            number = to_number(require(spec, "value", path))
            if number is None:
                raise BadQuery(f"{path}.value must be a number")
            column = self.filters.columns.sql(name)
            op = {"greaterThan": ">", "lessThan": "<", "equalTo": "="}[kind]
            return f"({_as_number(column, self.filters.columns.type_of(name))} {op} {self.p(number)})"
        if kind == "dimSelector":
            return self.filters.filter({"type": "selector", "dimension": spec.get("dimension"),
                                        "value": spec.get("value"), "extractionFn": spec.get("extractionFn")}, path)
        if kind == "filter":
            return self.filters.filter(require(spec, "filter", path, dict), f"{path}.filter")
        if kind in ("and", "or"):
            specs = require(spec, "havingSpecs", path, list)
            if not specs:
                raise BadQuery(f"{path}.havingSpecs must not be empty")
            parts = [self.having(s, f"{path}.havingSpecs[{i}]") for i, s in enumerate(specs)]
            return "(" + f" {kind.upper()} ".join(parts) + ")"
        if kind == "not":
            return f"(NOT {self.having(require(spec, 'havingSpec', path, dict), f'{path}.havingSpec')})"
        if kind == "always":
            return "TRUE"
        if kind == "never":
            return "FALSE"
        raise UnknownType(f"{path}.type", kind, "HavingSpec", HAVING_TYPES)
