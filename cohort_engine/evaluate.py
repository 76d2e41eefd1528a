"""Evaluation: each leaf is one backend query returning user ids; groups are Roaring bitmap operations."""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import duckdb
from pyroaring import BitMap

from .bitmaps import to_bitmap
from .store import Snapshot, property_kind, quote
from .timewin import day_range, duration_before, parse_local, resolve_window, to_utc_naive

log = logging.getLogger(__name__)

# A negative comparator is the complement of a positive one, so that users whose value is null
# or who have no row at all match it (DESIGN.md: `ne` matches null/absent).
NEGATIONS = {"ne": "eq", "not_contains": "contains", "not_set": "is_set", "is_empty": "not_empty"}
SQL_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
PY_OPERATORS = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
ZERO_WHEN_ABSENT = ("count", "count_distinct", "sum", "days")


class EngineError(Exception):
    """A definition that cannot be evaluated against this data; `code` is stable for clients."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass
class EvalContext:
    """What evaluation needs from outside: data snapshot, time frame, and lookups."""

    snapshot: Snapshot
    tz: ZoneInfo
    base_time: datetime
    encode_keys: Callable[[list[str]], object] | None = None
    load_cohort: Callable[[int], BitMap | None] | None = None
    progress: Callable[[int, int], None] | None = None


@dataclass
class Result:
    bitmap: BitMap
    timings: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.bitmap)


def evaluate(tree: dict, ctx: EvalContext) -> Result:
    """The member bitmap of a validated canonical tree."""
    evaluator = _Evaluator(ctx)
    try:
        bitmap = evaluator.node(tree, "")
    finally:
        evaluator.close()
    return Result(bitmap, evaluator.timings)


def count_steps(tree: dict) -> int:
    """Leaves plus group merges: the units progress is reported in."""
    if "children" in tree:
        return 1 + sum(count_steps(c) for c in tree["children"])
    if "child" in tree:
        return 1 + count_steps(tree["child"])
    return 1


class _Evaluator:
    def __init__(self, ctx: EvalContext):
        self.ctx = ctx
        self.base_time = ctx.base_time if ctx.base_time.tzinfo else ctx.base_time.replace(tzinfo=ctx.tz)
        self.total = 0
        self.done = 0
        self.timings: list[dict] = []
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self.ctx.snapshot.connect()
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()

    def step(self) -> None:
        self.done += 1
        if self.ctx.progress:
            self.ctx.progress(self.done, self.total)

    def node(self, node: dict, path: str) -> BitMap:
        if not self.total:
            self.total = count_steps(node)
            if self.ctx.progress:
                self.ctx.progress(0, self.total)
        op = node.get("op")
        if op in ("and", "or"):
            parts = [self.node(c, f"{path}.children[{i}]".lstrip(".")) for i, c in enumerate(node["children"])]
            result = BitMap.intersection(*parts) if op == "and" else BitMap.union(*parts)
            self.step()
            return result
        if op == "not":
            result = self.ctx.snapshot.universe() - self.node(node["child"], f"{path}.child".lstrip("."))
            self.step()
            return result
        started = time.perf_counter()
        result = getattr(self, "leaf_" + node["type"])(node)
        self.timings.append({"leaf": path or "_root", "type": node["type"],
                             "seconds": time.perf_counter() - started, "count": len(result)})
        self.step()
        return result

    # -- leaves -------------------------------------------------------------------------------

    def query_ids(self, sql: str, params: list) -> BitMap:
        try:
            column = self.con.execute(sql, params).fetchnumpy()["uid"]
        except duckdb.Error as exc:
            raise EngineError("backend_error", f"the event store rejected a query: {exc}") from None
        return to_bitmap(column)

    def leaf_ids(self, leaf: dict) -> BitMap:
        if not leaf["keys"]:
            return BitMap()
        if self.ctx.encode_keys is None:
            raise EngineError("unsupported", "ids leaves need a user-key dictionary")
        return to_bitmap(self.ctx.encode_keys(list(leaf["keys"])))

    def leaf_cohort(self, leaf: dict) -> BitMap:
        bitmap = self.ctx.load_cohort(leaf["cohort_id"]) if self.ctx.load_cohort else None
        if bitmap is None:
            raise EngineError("cohort_not_ready",
                              f"cohort {leaf['cohort_id']} has no computed version yet; compute it first")
        return bitmap

    def leaf_profile(self, leaf: dict) -> BitMap:
        positive = NEGATIONS.get(leaf["cmp"], leaf["cmp"])
        condition, params = self.condition(
            {**leaf, "cmp": positive}, self.ctx.snapshot.user_columns, "profile")
        hits = self.query_ids(f"SELECT uid FROM users WHERE {condition}", params)
        return self.ctx.snapshot.universe() - hits if positive != leaf["cmp"] else hits

    def leaf_event(self, leaf: dict) -> BitMap:
        where, params = self.event_scope(leaf["event"], leaf.get("filter"), leaf["window"])
        agg = leaf["agg"]
        agg_sql = self.aggregate(agg)
        cmp, values = leaf["cmp"], leaf["values"]
        test_sql, test_params = _compare(agg_sql, cmp, values)
        if agg["fn"] in ZERO_WHEN_ABSENT and _holds(0, cmp, values):
            # Users without a matching event have the value 0 and satisfy the comparison, so the
            # members are everyone except those whose value fails it.
            failing = self.query_ids(
                f"SELECT uid FROM events WHERE {where} GROUP BY uid HAVING NOT ({test_sql})", params + test_params)
            return self.ctx.snapshot.universe() - failing
        return self.query_ids(
            f"SELECT uid FROM events WHERE {where} GROUP BY uid HAVING {test_sql}", params + test_params)

    def leaf_sequence(self, leaf: dict) -> BitMap:
        ctes, params = [], []
        for i, step in enumerate(leaf["steps"]):
            where, step_params = self.event_scope(step["event"], step.get("filter"), leaf["window"])
            if i == 0:
                ctes.append(f"s0 AS (SELECT uid, min(time) AS t FROM events WHERE {where} GROUP BY uid)")
            else:
                # Greedy: the earliest qualifying time of each step keeps every later step possible.
                ctes.append(
                    f"s{i} AS (SELECT e.uid, min(e.time) AS t FROM events e JOIN s{i - 1} p"
                    f" ON e.uid = p.uid AND e.time > p.t WHERE {where} GROUP BY e.uid)")
            params += step_params
        return self.query_ids(f"WITH {', '.join(ctes)} SELECT uid FROM s{len(ctes) - 1}", params)

    # -- SQL pieces ---------------------------------------------------------------------------

    def event_scope(self, event: str, filter_: dict | None, window: dict) -> tuple[str, list]:
        start, end = resolve_window(window, self.base_time, self.ctx.tz)
        where, params = ["time >= ?", "time < ?"], [start, end]
        if event != "*":
            where.append("event = ?")
            params.append(event)
        if filter_:
            sql, filter_params = self.row_filter(filter_)
            where.append(sql)
            params += filter_params
        return " AND ".join(where), params

    def row_filter(self, node: dict) -> tuple[str, list]:
        if "children" in node:
            parts = [self.row_filter(c) for c in node["children"]]
            joiner = " AND " if node["op"] == "and" else " OR "
            return "(" + joiner.join(p[0] for p in parts) + ")", [x for p in parts for x in p[1]]
        positive = NEGATIONS.get(node["cmp"], node["cmp"])
        sql, params = self.condition({**node, "cmp": positive}, self.ctx.snapshot.event_columns, "event")
        if positive != node["cmp"]:
            return f"(NOT coalesce({sql}, false))", params
        return f"coalesce({sql}, false)", params

    def aggregate(self, agg: dict) -> str:
        fn = agg["fn"]
        if fn == "count":
            return "count(*)"
        if fn == "days":
            zone = "'" + self.ctx.tz.key.replace("'", "''") + "'"
            return f"count(DISTINCT CAST(timezone({zone}, CAST(time AS TIMESTAMPTZ)) AS DATE))"
        column = self.column(agg["property"], self.ctx.snapshot.event_columns, "event")
        kind = property_kind(self.ctx.snapshot.event_columns[agg["property"]])
        if fn == "count_distinct":
            return f"count(DISTINCT {column})"
        if kind != "number":
            raise EngineError("type_mismatch", f"{fn} needs a numeric property; {agg['property']!r} is {kind}")
        return f"coalesce(sum({column}), 0)" if fn == "sum" else f"{fn}({column})"

    def column(self, name: str, columns: dict[str, str], where: str) -> str:
        if name not in columns or name == "uid":
            known = ", ".join(sorted(c for c in columns if c != "uid")) or "none"
            raise EngineError("unknown_property", f"{where} property {name!r} does not exist (known: {known})")
        return quote(name)

    def condition(self, cond: dict, columns: dict[str, str], where: str) -> tuple[str, list]:
        """SQL for a positive comparator on a typed column (null never satisfies it)."""
        prop, cmp, values = cond["property"], cond["cmp"], cond["values"]
        col = self.column(prop, columns, where)
        kind = property_kind(columns[prop])

        def need(*kinds):
            if kind not in kinds:
                raise EngineError("type_mismatch", f"{cmp} does not apply to {where} property {prop!r} ({kind})")

        if cmp == "is_set":
            return f"{col} IS NOT NULL", []
        if cmp == "not_empty":
            return (f"({col} IS NOT NULL AND {col} <> '')", []) if kind == "string" else (f"{col} IS NOT NULL", [])
        if cmp in ("is_true", "is_false"):
            need("boolean")
            return f"{col} = {'true' if cmp == 'is_true' else 'false'}", []
        if cmp in ("contains", "starts_with", "ends_with", "regex"):
            need("string")
            fn = {"contains": "contains", "starts_with": "starts_with", "ends_with": "suffix",
                  "regex": "regexp_matches"}[cmp]
            return f"{fn}({col}, ?)", [str(values[0])]
        if cmp == "date_between":
            need("time")
            start, end = day_range(values[0], values[1], self.ctx.tz)
            return f"({col} >= ? AND {col} < ?)", [start, end]
        if cmp == "within_last":
            need("time")
            since = duration_before(self.base_time, values[0], values[1], self.ctx.tz)
            return f"({col} >= ? AND {col} <= ?)", [since, to_utc_naive(self.base_time)]
        if cmp == "before_last":
            need("time")
            return f"{col} < ?", [duration_before(self.base_time, values[0], values[1], self.ctx.tz)]
        if kind == "boolean" and cmp != "eq":
            raise EngineError("type_mismatch", f"{cmp} does not apply to boolean property {prop!r}")
        typed = [self.coerce(v, kind, prop) for v in values]
        return _compare(col, cmp, typed)

    def coerce(self, value, kind: str, prop: str):
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
            return to_utc_naive(parse_local(str(value), self.ctx.tz))
        except (TypeError, ValueError, OverflowError):
            # OverflowError: a time at the edge of the calendar (year 1) moved out of it by the zone.
            raise EngineError("bad_value", f"{value!r} is not a valid {kind} for property {prop!r}") from None


def _compare(expr: str, cmp: str, values: list) -> tuple[str, list]:
    if cmp == "eq":
        return f"{expr} IN ({', '.join('?' * len(values))})", list(values)
    if cmp == "ne":
        return f"{expr} NOT IN ({', '.join('?' * len(values))})", list(values)
    if cmp == "between":
        return f"{expr} BETWEEN ? AND ?", list(values)
    return f"{expr} {SQL_OPERATORS[cmp]} ?", [values[0]]


def _holds(value, cmp: str, values: list) -> bool:
    """Whether a plain number satisfies an aggregate comparison."""
    if cmp == "eq":
        return any(value == v for v in values)
    if cmp == "ne":
        return all(value != v for v in values)
    if cmp == "between":
        return values[0] <= value <= values[1]
    return PY_OPERATORS[cmp](value, values[0])
