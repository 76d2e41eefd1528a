"""A brute-force Python reading of Druid filters and aggregators over plain row dicts, for tests."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone


def _number(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except ValueError:
        return None


def _text(value):
    return None if value is None else str(value)


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def matches(spec: dict, row: dict):
    """True, False or None (unknown) under SQL three-valued logic, as Druid 28+ filters."""
    kind = spec["type"]
    if kind == "true":
        return True
    if kind == "and":
        results = [matches(f, row) for f in spec["fields"]]
        return False if False in results else (None if None in results else True)
    if kind == "or":
        results = [matches(f, row) for f in spec["fields"]]
        return True if True in results else (None if None in results else False)
    if kind == "not":
        inner = matches(spec["field"], row)
        return None if inner is None else not inner
    name = spec.get("dimension", spec.get("column"))
    value = row.get(name)
    if kind == "null":
        return value is None
    if kind == "selector" and spec.get("value") is None:
        return value is None
    if kind == "in" and value is None:
        return True if None in spec["values"] else None
    if value is None:
        return None
    numeric_column = isinstance(value, (int, float))
    if kind in ("selector", "equals"):
        target = spec.get("value", spec.get("matchValue"))
        if numeric_column:
            number = _number(target)
            return number is not None and float(value) == float(number)
        return value == str(target)
    if kind == "in":
        if numeric_column:
            return any(_number(v) is not None and float(value) == float(_number(v)) for v in spec["values"] if v is not None)
        return value in spec["values"]
    if kind in ("bound", "range"):
        numeric = spec.get("ordering") == "numeric" or spec.get("matchValueType") in ("LONG", "DOUBLE")
        if numeric:
            subject = _number(value)
            if subject is None:
                return None
        else:
            subject = _text(value).encode()
        lower_open = spec.get("lowerStrict", spec.get("lowerOpen", False))
        upper_open = spec.get("upperStrict", spec.get("upperOpen", False))
        if spec.get("lower") is not None:
            bound = float(spec["lower"]) if numeric else str(spec["lower"]).encode()
            if subject < bound or (lower_open and subject == bound):
                return False
        if spec.get("upper") is not None:
            bound = float(spec["upper"]) if numeric else str(spec["upper"]).encode()
            if subject > bound or (upper_open and subject == bound):
                return False
        return True
    text = _text(value)
    if kind == "like":
        escape = spec.get("escape")
        pattern = ""
        chars = iter(spec["pattern"])
        for ch in chars:
            if escape is not None and ch == escape:
                pattern += re.escape(next(chars))
            elif ch == "%":
                pattern += ".*"
            elif ch == "_":
                pattern += "."
            else:
                pattern += re.escape(ch)
        return re.fullmatch(pattern, text, re.S) is not None
    if kind == "regex":
        return re.search(spec["pattern"], text) is not None
    if kind == "search":
        query = spec["query"]
        values = query.get("values") or [query["value"]]
        sensitive = query["type"] != "insensitive_contains" and query.get("caseSensitive", False)
        subject = text if sensitive else text.lower()
        return all((v if sensitive else v.lower()) in subject for v in values)
    if kind == "interval":
        for interval in spec["intervals"]:
            start, end = interval.split("/")
            if _ms(start) <= value < _ms(end):
                return True
        return False
    raise AssertionError(f"reference does not know filter {kind}")


def aggregate(spec: dict, rows: list[dict]):
    """One aggregator over rows, with SQL-compatible nulls (sum of no values is None)."""
    kind = spec["type"].removeprefix("lucene_")
    if kind == "filtered":
        return aggregate(spec["aggregator"], [r for r in rows if matches(spec["filter"], r) is True])
    if kind == "count":
        return len(rows)
    if kind == "cardinality":
        return float(len({r[spec["fields"][0]] for r in rows if r.get(spec["fields"][0]) is not None}))
    values = [r.get(spec["fieldName"]) for r in rows]
    values = [v for v in values if v is not None]
    if kind.startswith("long"):
        values = [math.trunc(v) for v in values]
    else:
        values = [float(v) for v in values]
    if not values:
        return None
    if kind.endswith("Sum"):
        return sum(values)
    return min(values) if kind.endswith("Min") else max(values)
