"""Definition semantics shared by leaves, tags and every backend: negative comparators, zero-valued
aggregates, aggregate comparisons, and converting a definition's values to a stored type
(docs/definition.md "Types")."""

from __future__ import annotations

import operator
from zoneinfo import ZoneInfo

from .errors import EngineError
from .timewin import parse_local, to_utc_naive

# A negative comparator is the complement of a positive one, so that users whose value is null
# or who have no row at all match it (docs/definition.md: `ne` matches null/absent).
NEGATIONS = {"ne": "eq", "not_contains": "contains", "not_set": "is_set", "is_empty": "not_empty"}
# Aggregates whose value is 0 (not null) for a user without a matching row.
ZERO_WHEN_ABSENT = ("count", "count_distinct", "sum", "days")
PY_OPERATORS = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}


def holds(value, cmp: str, values: list) -> bool:
    """Whether a plain number satisfies an aggregate comparison."""
    if cmp == "eq":
        return any(value == v for v in values)
    if cmp == "ne":
        return all(value != v for v in values)
    if cmp == "between":
        return values[0] <= value <= values[1]
    return PY_OPERATORS[cmp](value, values[0])


def coerce_value(value, kind: str, prop: str, tz: ZoneInfo):
    """value as a number (float), string, boolean or time (naive UTC); EngineError bad_value if it is none."""
    try:
        if kind == "number":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "string":
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise ValueError
        return to_utc_naive(parse_local(str(value), tz))
    except (TypeError, ValueError, OverflowError):
        # OverflowError: a time at the edge of the calendar (year 1) moved out of it by the zone.
        raise EngineError("bad_value", f"{value!r} is not a valid {kind} for property {prop!r}") from None
