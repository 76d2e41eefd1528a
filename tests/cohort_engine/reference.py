"""Brute-force cohort evaluator over in-memory rows, written from the documented semantics.

It deliberately shares no code with cohort_engine.evaluate: windows are checked as membership
of an event's local calendar day / week / month rather than as UTC bounds, aggregates are plain
Python over the matching rows, and sequences are found by exhaustive search. Tests compare the
engine's member set with this one.

Data model: events are dicts {"key", "event", "time": aware datetime, <prop>: value...}, profiles
are dicts {"key", <prop>: value...}; an absent prop or None is null. Property kinds (string,
number, boolean, time) come from explicit type maps, as the store types a column once.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cache

KINDS = ("string", "number", "boolean", "time")
NEGATIVE_OF = {"ne": "eq", "not_contains": "contains", "not_set": "is_set", "is_empty": "not_empty"}


class RefError(Exception):
    """The reference's counterpart of EngineError: a stable code and a message."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"{code}: {message}")


@dataclass
class Dataset:
    """Users and events of one project, with the kind of every property."""

    profiles: list[dict]
    events: list[dict]
    user_kinds: dict[str, str]
    event_kinds: dict[str, str]

    def universe(self) -> set[str]:
        return {p["key"] for p in self.profiles} | {e["key"] for e in self.events}


def months_back(moment: datetime, n: int) -> datetime:
    """The same local wall time n calendar months earlier (day clamped to the month's length)."""
    total = moment.year * 12 + (moment.month - 1) - n
    year, month = divmod(total, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def minus_duration(base: datetime, n: int, unit: str, tz: tzinfo) -> datetime:
    """base minus n units: minutes/hours as elapsed time, days/weeks/months on the local calendar."""
    # Elapsed time is counted in UTC: Python's arithmetic on a zone-aware datetime is wall-clock.
    if unit == "minute":
        return base.astimezone(UTC) - timedelta(seconds=60 * n)
    if unit == "hour":
        return base.astimezone(UTC) - timedelta(seconds=3600 * n)
    wall = base.astimezone(tz).replace(tzinfo=None)
    if unit == "day":
        wall = wall - timedelta(days=n)
    elif unit == "week":
        wall = wall - timedelta(days=7 * n)
    else:
        wall = months_back(wall, n)
    return wall.replace(tzinfo=tz).astimezone(UTC)


def instant(moment: datetime) -> datetime:
    """The same instant in UTC: aware datetimes sharing one zone compare by wall clock, ignoring fold."""
    return moment.astimezone(UTC)


class Reference:
    """Evaluate canonical trees over a Dataset at one base time in one time zone."""

    def __init__(self, data: Dataset, tz: tzinfo, base_time: datetime,
                 load_cohort: Callable[[int], set[str] | None] | None = None,
                 load_tag: Callable[[int], tuple[str, dict] | None] | None = None):
        assert base_time.tzinfo is not None
        self.data = data
        self.tz = tz
        self.base = instant(base_time)
        self.load_cohort = load_cohort
        self.load_tag = load_tag
        self.universe = data.universe()
        self.profile_of = {p["key"]: p for p in data.profiles}
        # The event name and time are columns like any other, so filters may test them.
        self.event_kinds = {"event": "string", "time": "time", **data.event_kinds}

    # -- tree ---------------------------------------------------------------------------------

    def members(self, node: dict) -> set[str]:
        op = node.get("op")
        if op == "and":
            parts = [self.members(c) for c in node["children"]]
            return set.intersection(*parts)
        if op == "or":
            parts = [self.members(c) for c in node["children"]]
            return set.union(*parts)
        if op == "not":
            return self.universe - self.members(node["child"])
        kind = node["type"]
        if kind == "ids":
            return set(node["keys"])
        if kind == "cohort":
            found = self.load_cohort(node["cohort_id"]) if self.load_cohort else None
            if found is None:
                raise RefError("cohort_not_ready", f"cohort {node['cohort_id']}")
            return set(found)
        if kind == "tag":
            return self.tag_members(node)
        if kind == "profile":
            return self.profile_members(node)
        if kind == "event":
            return self.event_members(node)
        return self.sequence_members(node)

    def tag_members(self, leaf: dict) -> set[str]:
        """A tag leaf: the tag's {key: value} tested like a property; users without a value are null."""
        found = self.load_tag(leaf["tag_id"]) if self.load_tag else None
        if found is None:
            raise RefError("tag_not_ready", f"tag {leaf['tag_id']}")
        kind, values = found
        cmp = leaf["cmp"]
        if cmp in NEGATIVE_OF:
            positive = self.positive(NEGATIVE_OF[cmp], leaf["values"], kind)
            return {k for k in self.universe if not positive(values.get(k))}
        positive = self.positive(cmp, leaf["values"], kind)
        return {k for k in self.universe | set(values) if positive(values.get(k))}

    # -- tags ---------------------------------------------------------------------------------

    def tag_values(self, tag: dict) -> tuple[str, dict[str, object]]:
        """(value type, {user key: value}) of a parsed tag definition, straight from docs/definition.md."""
        kind = tag["kind"]
        if kind == "values":
            out: dict[str, object] = {}
            for entry in tag["values"]:
                for key in self.members(entry["definition"]):
                    out.setdefault(key, entry["value"])  # the first value that matches wins
            value_type = tag["type"]
            out = {k: self.tag_scalar(v, value_type) for k, v in out.items()}
        elif kind == "metric":
            value_type, out = tag["type"], {}
            rows = self.matching_rows(tag["event"], tag.get("filter"), tag["window"])
            fn, prop = tag["agg"]["fn"], tag["agg"].get("property")
            if prop is not None and fn not in ("count", "days"):
                if prop not in self.event_kinds:
                    raise RefError("unknown_property", prop)
                if fn != "count_distinct" and self.event_kinds[prop] != "number":
                    raise RefError("type_mismatch", f"{fn} of {prop}")
            for key in self.universe:
                value = aggregate(fn, prop, [r for r in rows if r["key"] == key], self.tz)
                if value is not None and tag.get("buckets"):
                    value = next((b["label"] for b in tag["buckets"]
                                  if (b["low"] is None or b["low"] <= value)
                                  and (b["high"] is None or value < b["high"])), None)
                if value is not None:
                    out[key] = value
        else:
            prop = tag["property"]
            if prop not in self.event_kinds:
                raise RefError("unknown_property", prop)
            value_type = self.event_kinds[prop]
            if tag.get("type") and tag["type"] != value_type:
                raise RefError("type_mismatch", prop)
            rows = self.matching_rows(tag["event"], tag.get("filter"), tag["window"])
            out = {}
            for key in self.universe:
                pairs = [(instant(r["time"]), instant(r[prop]) if value_type == "time" else r[prop])
                         for r in rows if r["key"] == key and r.get(prop) is not None]
                if pairs:
                    # Ties in time go to the smaller value for first, the larger for last (docs).
                    chosen = min(pairs) if tag["which"] == "first" else max(pairs)
                    out[key] = chosen[1]
        if tag.get("default") is not None:
            default = self.tag_scalar(tag["default"], value_type)
            for key in self.universe - set(out):
                out[key] = default
        return value_type, out

    def tag_scalar(self, value, value_type: str):
        return instant(local_time(value, self.tz)) if value_type == "time" else value

    def profile_members(self, leaf: dict) -> set[str]:
        kinds = self.data.user_kinds
        test = self.condition(leaf, kinds, "profile")
        out = set()
        for key in self.universe:
            row = self.profile_of.get(key, {})
            if test(row.get(leaf["property"])):
                out.add(key)
        return out

    def event_members(self, leaf: dict) -> set[str]:
        rows = self.matching_rows(leaf["event"], leaf.get("filter"), leaf["window"])
        fn = leaf["agg"]["fn"]
        prop = leaf["agg"].get("property")
        if prop is not None and fn != "count" and fn != "days":
            if prop not in self.event_kinds:
                raise RefError("unknown_property", prop)
            if fn != "count_distinct" and self.event_kinds[prop] != "number":
                raise RefError("type_mismatch", f"{fn} of {prop}")
        by_user: dict[str, list[dict]] = {}
        for row in rows:
            by_user.setdefault(row["key"], []).append(row)
        out = set()
        for key in self.universe:
            value = aggregate(fn, prop, by_user.get(key, []), self.tz)
            if value is not None and aggregate_holds(value, leaf["cmp"], leaf["values"]):
                out.add(key)
        return out

    def sequence_members(self, leaf: dict) -> set[str]:
        per_step = [self.matching_rows(s["event"], s.get("filter"), leaf["window"]) for s in leaf["steps"]]
        out = set()
        for key in self.universe:
            times = [sorted({instant(r["time"]) for r in rows if r["key"] == key}) for rows in per_step]

            @cache
            def possible(step: int, after: datetime | None, times=times) -> bool:
                if step == len(times):
                    return True
                return any((after is None or t > after) and possible(step + 1, t) for t in times[step])

            if possible(0, None):
                out.add(key)
        return out

    # -- rows ---------------------------------------------------------------------------------

    def matching_rows(self, event: str, filter_: dict | None, window: dict) -> list[dict]:
        in_window = self.window_test(window)
        passes = self.filter_test(filter_) if filter_ else (lambda row: True)
        return [r for r in self.data.events
                if (event == "*" or r["event"] == event) and in_window(r["time"]) and passes(r)]

    def filter_test(self, node: dict) -> Callable[[dict], bool]:
        if "children" in node:
            tests = [self.filter_test(c) for c in node["children"]]
            if node["op"] == "and":
                return lambda row: all(t(row) for t in tests)
            return lambda row: any(t(row) for t in tests)
        test = self.condition(node, self.event_kinds, "event")
        prop = node["property"]
        return lambda row: test(row.get(prop))

    def window_test(self, window: dict) -> Callable[[datetime], bool]:
        tz = self.tz
        if "last" in window:
            unit, last, offset = window["unit"], window["last"], window["offset"]
            base_day = self.base.astimezone(tz).date()

            def units_ago(day: date) -> int:
                if unit == "day":
                    return (base_day - day).days
                if unit == "week":
                    base_monday = base_day - timedelta(days=base_day.weekday())
                    monday = day - timedelta(days=day.weekday())
                    return (base_monday - monday).days // 7
                return (base_day.year * 12 + base_day.month) - (day.year * 12 + day.month)

            return lambda t: offset <= units_ago(t.astimezone(tz).date()) <= offset + last - 1
        if len(window["start"]) == 10:
            first, final = date.fromisoformat(window["start"]), date.fromisoformat(window["end"])
            return lambda t: first <= t.astimezone(tz).date() <= final
        start = instant(local_time(window["start"], tz))
        end = instant(local_time(window["end"], tz))
        return lambda t: start <= instant(t) < end

    # -- one comparison -----------------------------------------------------------------------

    def condition(self, cond: dict, kinds: dict[str, str], where: str) -> Callable[[object], bool]:
        """A predicate on one (possibly None) value, negatives being complements of positives."""
        prop, cmp = cond["property"], cond["cmp"]
        if prop not in kinds:
            raise RefError("unknown_property", f"{where} {prop}")
        kind = kinds[prop]
        if cmp in NEGATIVE_OF:
            positive = self.positive(NEGATIVE_OF[cmp], cond["values"], kind)
            return lambda v: not positive(v)
        return self.positive(cmp, cond["values"], kind)

    def positive(self, cmp: str, values: list, kind: str) -> Callable[[object], bool]:
        def need(*allowed):
            if kind not in allowed:
                raise RefError("type_mismatch", f"{cmp} on {kind}")

        def non_null(test):
            return lambda v: v is not None and test(v)

        if cmp == "is_set":
            return lambda v: v is not None
        if cmp == "not_empty":
            if kind == "string":
                return lambda v: v is not None and v != ""
            return lambda v: v is not None
        if cmp == "is_true":
            need("boolean")
            return lambda v: v is True
        if cmp == "is_false":
            need("boolean")
            return lambda v: v is False
        if cmp in ("contains", "starts_with", "ends_with", "regex"):
            need("string")
            needle = str(values[0])
            if cmp == "contains":
                return non_null(lambda v: needle in v)
            if cmp == "starts_with":
                return non_null(lambda v: v.startswith(needle))
            if cmp == "ends_with":
                return non_null(lambda v: v.endswith(needle))
            pattern = re.compile(needle)
            return non_null(lambda v: pattern.search(v) is not None)
        if cmp == "date_between":
            need("time")
            first, final = date.fromisoformat(values[0]), date.fromisoformat(values[1])
            return non_null(lambda v: first <= v.astimezone(self.tz).date() <= final)
        if cmp == "within_last":
            need("time")
            since = minus_duration(self.base, values[0], values[1], self.tz)
            return non_null(lambda v: since <= instant(v) <= self.base)
        if cmp == "before_last":
            need("time")
            since = minus_duration(self.base, values[0], values[1], self.tz)
            return non_null(lambda v: instant(v) < since)
        if kind == "boolean" and cmp != "eq":
            raise RefError("type_mismatch", f"{cmp} on boolean")
        typed = [coerce(v, kind, self.tz) for v in values]
        if kind == "time":
            typed = [instant(t) for t in typed]
            return self.positive_on_instants(cmp, typed)
        if cmp == "eq":
            return non_null(lambda v: any(v == t for t in typed))
        if cmp == "between":
            return non_null(lambda v: typed[0] <= v <= typed[1])
        bound = typed[0]
        return non_null({
            "gt": lambda v: v > bound, "gte": lambda v: v >= bound,
            "lt": lambda v: v < bound, "lte": lambda v: v <= bound,
        }[cmp])


    def positive_on_instants(self, cmp: str, typed: list[datetime]) -> Callable[[object], bool]:
        """eq/gt/.../between on time values, compared as UTC instants."""
        tests = {
            "eq": lambda v: any(v == t for t in typed), "between": lambda v: typed[0] <= v <= typed[1],
            "gt": lambda v: v > typed[0], "gte": lambda v: v >= typed[0],
            "lt": lambda v: v < typed[0], "lte": lambda v: v <= typed[0],
        }
        test = tests[cmp]
        return lambda v: v is not None and test(instant(v))


def local_time(text: str, tz: tzinfo) -> datetime:
    """An ISO date/datetime without zone read as wall time in tz."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def coerce(value, kind: str, tz: tzinfo):
    """A definition value converted to the column's kind, or RefError bad_value."""
    def bad():
        return RefError("bad_value", f"{value!r} as {kind}")

    if kind == "number":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return value
        try:
            return float(value)
        except ValueError:
            raise bad() from None
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        spelled = str(value).strip().lower()
        if spelled in ("true", "1"):
            return True
        if spelled in ("false", "0"):
            return False
        raise bad()
    if not isinstance(value, str):
        raise bad()
    try:
        return local_time(value, tz)
    except ValueError:
        raise bad() from None


def aggregate(fn: str, prop: str | None, rows: list[dict], tz: tzinfo):
    """One user's aggregate over their matching rows; None when avg/min/max have nothing."""
    if fn == "count":
        return len(rows)
    if fn == "days":
        return len({r["time"].astimezone(tz).date() for r in rows})
    present = [r[prop] for r in rows if r.get(prop) is not None]
    if fn == "count_distinct":
        return len(set(present))
    if fn == "sum":
        return sum(present)
    if not present:
        return None
    if fn == "avg":
        return sum(present) / len(present)
    return min(present) if fn == "min" else max(present)


def aggregate_holds(value, cmp: str, values: list) -> bool:
    """A per-user aggregate against the leaf's numbers."""
    if cmp == "eq":
        return value in values
    if cmp == "ne":
        return value not in values
    if cmp == "between":
        return values[0] <= value <= values[1]
    return {"gt": value > values[0], "gte": value >= values[0],
            "lt": value < values[0], "lte": value <= values[0]}[cmp]


# -- loading a Dataset into a real project (the engine side of a comparison) ----------------------

def _arrow_column(values: list, kind: str):
    import pyarrow as pa

    if kind == "string":
        return pa.array(values, pa.string())
    if kind == "boolean":
        return pa.array(values, pa.bool_())
    if kind == "time":
        return pa.array(values, pa.timestamp("us", tz="UTC"))
    # Integer columns stay integers in the store; any float makes the column DOUBLE.
    if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
        return pa.array(values, pa.int64())
    return pa.array([None if v is None else float(v) for v in values], pa.float64())


def write_parquet(rows: list[dict], kinds: dict[str, str], fixed: dict[str, str], path) -> None:
    """rows as a Parquet file: `fixed` maps the row's own fields to output columns (key, event, time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for field, column in fixed.items():
        values = [r[field] for r in rows]
        columns[column] = (pa.array(values, pa.timestamp("us", tz="UTC")) if field == "time"
                           else pa.array(values, pa.string()))
    for prop, kind in kinds.items():
        columns[prop] = _arrow_column([r.get(prop) for r in rows], kind)
    pq.write_table(pa.table(columns), path)


def create_project(database_url: str, tz_name: str, backend: str = "embedded") -> str:
    """A new project row in the given time zone, on the given backend kind; returns its name."""
    import json
    import uuid

    from cohort_engine import db

    name = "ref" + uuid.uuid4().hex[:12]
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name, timezone, backend) VALUES (%s, %s, %s)",
                    (name, tz_name, json.dumps({"kind": backend})))
    return name


def load_into(engine, data: Dataset, directory) -> None:
    """Ingest a Dataset through the real store: profiles, then events, from Parquet files."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if data.profiles:
        write_parquet(data.profiles, data.user_kinds, {"key": "distinct_id"}, directory / "users.parquet")
        engine.ingest_users(directory / "users.parquet")
    if data.events:
        write_parquet(data.events, data.event_kinds, {"key": "distinct_id", "event": "event", "time": "time"},
                      directory / "events.parquet")
        engine.ingest_events(directory / "events.parquet")


class EngineRunner:
    """Runs the real evaluator over an ingested project and answers in user keys, like Reference.

    One backend session serves every tree: opening one (for the embedded backend a DuckDB connection
    and its Parquet views, ~30 ms) costs more than the queries of a small tree (~2 ms).
    """

    def __init__(self, engine, known_keys: list[str]):
        self.engine = engine
        self.session = engine.open_session()
        self.key_of = {int(i): k for i, k in zip(engine.encode(known_keys), known_keys, strict=True)}

    def close(self) -> None:
        self.session.close()

    def context(self, base_time: datetime, cohorts: dict[int, set[str]] | None = None, tags: dict | None = None):
        """An EvalContext on the shared session; cohorts as {id: keys}, tags as {id: TagColumn}."""
        from pyroaring import BitMap

        from cohort_engine.evaluate import EvalContext

        def load_cohort(cohort_id):
            members = (cohorts or {}).get(cohort_id)
            return None if members is None else BitMap(self.engine.encode(sorted(members)).tolist())

        # With the engine's leaf-result cache, as a job runs: trees and base times drawn later reuse
        # the answers of earlier ones wherever their keys (resolved windows) say they may.
        return EvalContext(session=self.session, tz=self.engine.tz, base_time=base_time,
                           encode_keys=self.engine.encode, load_cohort=load_cohort, load_tag=(tags or {}).get,
                           leaf_cache=self.engine.leaf_cache, project_id=self.engine.project_id)

    def keys(self, uids) -> list[str]:
        from pyroaring import BitMap

        unknown = [int(i) for i in uids if int(i) not in self.key_of]
        if unknown:
            self.key_of.update(zip(unknown, self.engine.iter_keys(BitMap(unknown)), strict=True))
        return [self.key_of[int(i)] for i in uids]

    def members(self, tree: dict, base_time: datetime, cohorts: dict[int, set[str]] | None = None,
                tags: dict | None = None):
        """(error code, None) or (None, member keys) for a validated tree."""
        from cohort_engine.evaluate import EngineError, evaluate

        try:
            bitmap = evaluate(tree, self.context(base_time, cohorts, tags)).bitmap
        except EngineError as exc:
            return exc.code, None
        return None, set(self.keys(bitmap))

    def tag(self, definition: dict, base_time: datetime, cohorts: dict[int, set[str]] | None = None,
            tags: dict | None = None):
        """(error code, None) or (None, {key: value}) for a parsed tag definition, and the TagColumn (or None)."""
        from cohort_engine.evaluate import EngineError
        from cohort_engine.tags import compute_tag

        try:
            column = compute_tag(definition, self.context(base_time, cohorts, tags)).column
        except EngineError as exc:
            return (exc.code, None), None
        values = column.as_dict()
        return (None, dict(zip(self.keys(list(values)), values.values(), strict=True))), column


def reference_outcome(data: Dataset, tz: tzinfo, tree: dict, base_time: datetime,
                      cohorts: dict[int, set[str]] | None = None, tags: dict[int, tuple[str, dict]] | None = None):
    """(error code, None) or (None, member keys) from the reference."""
    try:
        return None, Reference(data, tz, base_time, (cohorts or {}).get, (tags or {}).get).members(tree)
    except RefError as exc:
        return exc.code, None


def reference_tag(data: Dataset, tz: tzinfo, tag: dict, base_time: datetime,
                  cohorts: dict[int, set[str]] | None = None, tags: dict[int, tuple[str, dict]] | None = None):
    """(error code, None) or (None, {key: value}) of a parsed tag definition from the reference."""
    try:
        return None, Reference(data, tz, base_time, (cohorts or {}).get, (tags or {}).get).tag_values(tag)[1]
    except RefError as exc:
        return exc.code, None
