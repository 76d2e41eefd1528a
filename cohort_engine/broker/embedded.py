"""Native Druid JSON queries answered from the embedded store, in Druid's response shapes.

Each query becomes one parameterised DuckDB statement over a store Snapshot. Druid's own query
types are built in (DRUID_QUERY_TYPES); a dialect adds its own by passing `query_types`, a map
of name -> handler(plan) (Sugo's `user_group`: dialects/sugo/broker_queries.py). The dataSource
names come only from the caller's configuration (a DataSources map). Anything the
translation does not implement answers Druid's error body with HTTP 501 (never a guess), and a
malformed query answers 400 naming the offending field.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import duckdb
import pyarrow as pa

from .. import db
from ..backends.embedded.store import Snapshot, quote
from ..dictionary import UserKeyDictionary
from .errors import BadQuery, DruidQueryError, UnknownType, Unsupported, require, type_id
from .filters import (
    DOUBLE,
    LONG,
    NUMERIC,
    STRING,
    Columns,
    FilterTranslator,
    HavingTranslator,
    SqlParams,
    column_type,
    ordering_of,
    to_number,
)
from .limits import UNLIMITED, Deadline, QueryLimits, check_shape, context_timeout_ms, exceeded
from .times import (
    DAY_MS,
    JAVA_INT_MAX,
    JAVA_LONG_MAX,
    Granularity,
    clamp_datetime,
    parse_granularity,
    parse_intervals,
)

log = logging.getLogger(__name__)

UID = "__embedded_uid"
TS = "__embedded_ts"
BUCKET = "__embedded_bucket"
DECODE_BATCH = 50_000
DEFAULT_SCAN_BATCH = 20_480
ENCODE_SLICE = 512  # result rows encoded at once between byte-limit checks
LUCENE_PREFIX = "lucene_"
_PARAM = re.compile(r"\$(p\d+)\b")
# Type ids Druid (core and bundled extensions) knows but the embedded engine does not implement:
# they answer 501; any other type id is unknown to Druid too and answers 400, as Druid does.
UNSUPPORTED_QUERY_TYPES = {"search", "timeBoundary", "dataSourceMetadata", "select",
                           "windowOperator", "movingAverage"}
AGGREGATOR_TYPES = {"count", "cardinality", "filtered", "longSum", "doubleSum", "floatSum", "longMin", "longMax",
                    "doubleMin", "doubleMax", "floatMin", "floatMax"}
UNSUPPORTED_AGGREGATORS = {
    "javascript", "histogram", "hyperUnique", "longFirst", "longLast", "doubleFirst", "doubleLast", "floatFirst",
    "floatLast", "stringFirst", "stringLast", "stringFirstFold", "stringLastFold", "longAny", "doubleAny",
    "floatAny", "stringAny", "grouping", "expression", "singleValue", "thetaSketch", "HLLSketchBuild",
    "HLLSketchMerge", "quantilesDoublesSketch", "arrayOfDoublesSketch", "approxHistogram", "approxHistogramFold",
    "fixedBucketsHistogram", "tDigestSketch", "momentSketch", "momentSketchMerge", "variance", "varianceFold",
    "bloom", "KllFloatsSketch", "KllDoublesSketch", "spectatorHistogram", "doubleMean", "nativeDoubleMean"}
POST_AGGREGATOR_TYPES = {"arithmetic", "fieldAccess", "finalizingFieldAccess", "constant", "doubleGreatest",
                         "longGreatest", "doubleLeast", "longLeast", "javascript", "hyperUniqueCardinality",
                         "expression", "thetaSketchEstimate", "HLLSketchEstimate", "quantilesDoublesSketchToQuantile"}
DIMENSION_SPEC_TYPES = {"default", "extraction", "regexFiltered", "listFiltered", "prefixFiltered", "lookup"}
DATASOURCE_TYPES = {"table", "query", "join", "union", "inline", "lookup", "unnest", "filter", "globalTable"}
TOPN_METRIC_TYPES = {"numeric", "inverted", "dimension", "lexicographic", "alphaNumeric"}
SCAN_FORMATS = {"list", "compactedList", "valueVector"}
# Python errors that only client input can cause in the translation; never a 500 (see execute).
_INPUT_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)


@dataclass(frozen=True)
class DataSourceSpec:
    """Where a Druid dataSource lives: a project's `events` or `users`, and its user-key dimension."""

    project: str
    table: str
    key_dimension: str = "distinct_id"

    def __post_init__(self):
        if self.table not in ("events", "users"):
            raise ValueError(f"datasource table must be 'events' or 'users', not {self.table!r}")


QueryTypes = Mapping[str, Callable[["Plan"], object]]


class ProjectAccess(Protocol):
    """What the executor needs from a project: a snapshot to read and a uid -> key decoder."""

    def snapshot(self) -> Snapshot: ...

    def decode(self, uids: list[int]) -> list[str | None]: ...


class EngineProjectAccess:
    """ProjectAccess over a ProjectEngine (its store and its PostgreSQL key dictionary)."""

    def __init__(self, engine):
        self.engine = engine

    def snapshot(self) -> Snapshot:
        return self.engine.store.snapshot()

    def decode(self, uids: list[int]) -> list[str | None]:
        with db.connection(self.engine.config.database_url) as conn:
            return UserKeyDictionary(conn, self.engine.project_id).decode(uids)


class DataSources:
    """The registry mapping Druid dataSource names to project tables; projects are opened once."""

    def __init__(self, open_project: Callable[[str], ProjectAccess], mapping: Mapping):
        self._open_project = open_project
        self._projects: dict[str, ProjectAccess] = {}
        self.mapping = {name: _spec(name, value) for name, value in mapping.items()}

    @classmethod
    def for_config(cls, config, mapping: Mapping) -> DataSources:
        """Registry over the engine's projects (ProjectEngine per project)."""
        from ..project import ProjectEngine

        return cls(lambda project: EngineProjectAccess(ProjectEngine(config, project)), mapping)

    def resolve(self, name: str) -> tuple[DataSourceSpec, ProjectAccess]:
        spec = self.mapping.get(name)
        if spec is None:
            known = ", ".join(sorted(self.mapping)) or "none"
            raise BadQuery(f"dataSource {name!r} is not configured (known: {known})")
        if spec.project not in self._projects:
            try:
                self._projects[spec.project] = self._open_project(spec.project)
            except LookupError as exc:
                raise BadQuery(f"dataSource {name!r} maps to project {spec.project!r}: {exc}") from None
        return spec, self._projects[spec.project]


def _spec(name, value) -> DataSourceSpec:
    if isinstance(value, DataSourceSpec):
        return value
    if isinstance(value, Mapping):
        return DataSourceSpec(**value)
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        return DataSourceSpec(*value)
    raise ValueError(f"datasource {name!r}: expected DataSourceSpec, dict or (project, table), got {value!r}")


def execute(query: dict, datasources: DataSources, limits: QueryLimits = UNLIMITED,
            query_types: QueryTypes | None = None) -> tuple[int, object]:
    """(HTTP status, JSON body) for a native Druid query, as a Druid broker would answer it."""
    try:
        return 200, run(query, datasources, limits, query_types)
    except DruidQueryError as exc:
        log.info("druid embedded query refused status=%d error=%r message=%r", exc.status, exc.error, exc.message)
        return exc.status, exc.body()


def respond(raw: bytes | str, datasources: DataSources, limits: QueryLimits = UNLIMITED,
            pretty: bool = False, query_types: QueryTypes | None = None) -> tuple[int, bytes]:
    """(HTTP status, UTF-8 JSON) for a request body, the response bytes bounded by limits."""
    try:
        query = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return _refused(BadQuery(f"the request body is not valid JSON: {str(exc)[:200]}"), pretty)
    return respond_query(query, datasources, limits, pretty, query_types)


def respond_query(query, datasources: DataSources, limits: QueryLimits = UNLIMITED,
                  pretty: bool = False, query_types: QueryTypes | None = None) -> tuple[int, bytes]:
    """(HTTP status, UTF-8 JSON) for a parsed query, the response bytes bounded by limits."""
    try:
        return 200, encode(run(query, datasources, limits, query_types), limits, pretty)
    except DruidQueryError as exc:
        return _refused(exc, pretty)


def _refused(exc: DruidQueryError, pretty: bool) -> tuple[int, bytes]:
    log.info("druid embedded query refused status=%d error=%r message=%r", exc.status, exc.error, exc.message)
    return exc.status, encode(exc.body(), UNLIMITED, pretty)


def encode(body, limits: QueryLimits = UNLIMITED, pretty: bool = False) -> bytes:
    """body as UTF-8 JSON (indented when pretty), refused once it passes limits.max_response_bytes."""
    indent = 2 if pretty else None
    if not isinstance(body, list) or not body:
        data = json.dumps(body, ensure_ascii=False, indent=indent).encode("utf-8", "backslashreplace")
        _check_bytes(len(data), limits)
        return data
    # In slices (each with the C encoder), so an oversized answer stops early at little cost.
    separator = ",\n" if pretty else ", "
    parts, size = [], 4 if pretty else 2
    for start in range(0, len(body), ENCODE_SLICE):
        text = json.dumps(body[start:start + ENCODE_SLICE], ensure_ascii=False, indent=indent)
        # Without its brackets: "[\n  a,\n  b\n]" -> "  a,\n  b", "[a, b]" -> "a, b".
        chunk = (text[2:-2] if pretty else text[1:-1]).encode("utf-8", "backslashreplace")
        parts.append(chunk)
        size += len(chunk) + (len(separator) if len(parts) > 1 else 0)
        _check_bytes(size, limits)
    inner = separator.encode().join(parts)
    return b"[\n" + inner + b"\n]" if pretty else b"[" + inner + b"]"


def _check_bytes(size: int, limits: QueryLimits) -> None:
    if limits.max_response_bytes is not None and size > limits.max_response_bytes:
        raise exceeded("the response passes the byte limit", limits.max_response_bytes,
                       "max_response_bytes, COHORTS_DRUID_MAX_RESPONSE_BYTES",
                       "add a limit, fewer columns or narrower intervals")


def run(query: dict, datasources: DataSources, limits: QueryLimits = UNLIMITED,
        query_types: QueryTypes | None = None):
    """The Druid response body for query; raises DruidQueryError (400/501/504) when it cannot.

    query_types: a dialect's extra query types (name -> handler(plan)), beside Druid's own.
    """
    return guarded(lambda: _Plan(query, datasources, limits, query_types).run())


def guarded(work):
    """work(), with a Python error that escaped validation answered as a malformed query (400)."""
    try:
        return work()
    except DruidQueryError:
        raise
    except _INPUT_ERRORS as exc:
        # Validation should have named the field; this keeps a gap in it from becoming a 500.
        log.exception("druid embedded query escaped validation error=%s", type(exc).__name__)
        raise MalformedQuery(f"the query cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None


class MalformedQuery(BadQuery):
    """A query that tripped an unexpected Python error in translation (HTTP 400; logged as a bug)."""

    error_class = "java.lang.IllegalArgumentException"


class SourceColumns(Columns):
    """The Druid view of a store table: `__time`, the user key, and the stored properties."""

    def __init__(self, spec: DataSourceSpec, snapshot: Snapshot):
        super().__init__()
        self.spec = spec
        self.is_events = spec.table == "events"
        stored = snapshot.event_columns if self.is_events else snapshot.user_columns
        self.exprs: dict[str, tuple[str, str]] = {}
        for column, sql_type in stored.items():
            if column == "uid" or (self.is_events and column == "time"):
                continue
            self.exprs[column] = _druid_typed(f"t.{quote(column)}", sql_type.upper())
        # Users have no time; they sit at the epoch, so "1000/3000"-style intervals include them.
        self.exprs["__time"] = ("epoch_ms(t.time)" if self.is_events else "CAST(0 AS BIGINT)", LONG)
        self.exprs.pop(spec.key_dimension, None)

    def type_of(self, name: str) -> str | None:
        if name == self.spec.key_dimension:
            return STRING
        entry = self.exprs.get(name)
        return entry[1] if entry else None

    def time_sql(self) -> str | None:
        return quote(TS) if self.is_events else None

    def all_names(self) -> list[str]:
        """Scan's default columns: __time, the key, then the stored columns."""
        rest = [n for n in self.exprs if n != "__time"]
        return ["__time", self.spec.key_dimension, *rest]


def _druid_typed(sql: str, sql_type: str) -> tuple[str, str]:
    if sql_type == "BIGINT" or sql_type in ("INTEGER", "SMALLINT", "TINYINT", "UINTEGER"):
        return sql, LONG
    if sql_type in ("DOUBLE", "FLOAT", "REAL") or sql_type.startswith("DECIMAL"):
        return f"CAST({sql} AS DOUBLE)", DOUBLE
    if sql_type.startswith("TIMESTAMP"):
        return f"epoch_ms({sql})", LONG
    if sql_type == "BOOLEAN":
        return f"CASE WHEN {sql} THEN 'true' WHEN NOT {sql} THEN 'false' END", STRING
    if sql_type == "VARCHAR":
        return sql, STRING
    return f"CAST({sql} AS VARCHAR)", STRING


class OutputColumns(Columns):
    """Columns of an aggregated row (dimension and aggregator output names), for having specs."""

    def __init__(self, types: dict[str, str]):
        super().__init__()
        self.types = types

    def type_of(self, name: str) -> str | None:
        return self.types.get(name)


@dataclass
class _Output:
    name: str
    sql: str
    kind: str  # STRING / LONG / DOUBLE
    empty: object = None  # the value over no rows (timeseries empty buckets)


class _Plan:
    """One query: validated, translated to SQL, executed, shaped as Druid's response."""

    def __init__(self, query, datasources: DataSources, limits: QueryLimits = UNLIMITED,
                 query_types: QueryTypes | None = None):
        if not isinstance(query, dict):
            raise BadQuery("the query must be a JSON object")
        check_shape(query, limits.max_depth)
        self.query = query
        self.limits = limits
        raw_type = require(query, "queryType", "query", str)
        self.lucene = raw_type.startswith(LUCENE_PREFIX)
        self.query_type = raw_type[len(LUCENE_PREFIX):] if self.lucene else raw_type
        self.handlers = {**DRUID_QUERY_TYPES, **(query_types or {})}
        if self.query_type not in self.handlers:
            if self.query_type in UNSUPPORTED_QUERY_TYPES:
                raise Unsupported(f"queryType {raw_type!r} is not supported by the embedded engine")
            raise UnknownType("queryType", raw_type, "Query", set(self.handlers) | UNSUPPORTED_QUERY_TYPES)
        self.context = query.get("context")
        if self.context is None:
            self.context = {}
        if not isinstance(self.context, dict):
            raise BadQuery("context must be an object")
        self.deadline = Deadline(context_timeout_ms(self.context, limits), self.context.get("queryId", ""))
        # One more row than allowed is fetched, so that "too many" is seen without reading them all.
        self.row_cap = None if limits.max_rows is None else limits.max_rows + 1
        self.datasource = self._datasource_name(query.get("dataSource"))
        self.spec, self.access = datasources.resolve(self.datasource)
        self.snapshot = self.access.snapshot()
        self.columns = SourceColumns(self.spec, self.snapshot)
        self.params = SqlParams()
        self.filters = FilterTranslator(self.columns, self.params)
        # segmentMetadata's intervals are optional (all time); the answer does not depend on them here.
        intervals = query.get("intervals")
        if intervals is None and self.query_type == "segmentMetadata":
            intervals = "1000/3000"
        self.intervals = parse_intervals(intervals)
        self.granularity = parse_granularity(query.get("granularity"))
        for field in ("virtualColumns", "subtotalsSpec"):
            if query.get(field):
                raise Unsupported(f"{field} is not supported by the embedded engine")
        if query.get("postAggregations") and self.query_type != "groupBy":
            raise Unsupported("postAggregations are supported on groupBy queries only")

    @staticmethod
    def _datasource_name(spec) -> str:
        if isinstance(spec, str):
            return spec
        if isinstance(spec, dict):
            kind = type_id(spec, "dataSource")
            if kind == "table":
                return require(spec, "name", "dataSource", str)
            if kind in DATASOURCE_TYPES:
                raise Unsupported(f"dataSource type {kind!r} is not supported (table names only)")
            raise UnknownType("dataSource.type", kind, "DataSource", DATASOURCE_TYPES)
        raise BadQuery("dataSource is required")

    # -- the shared pieces -------------------------------------------------------------------

    def filter_sql(self) -> str:
        spec = self.query.get("filter")
        return "TRUE" if spec is None else self.filters.filter(spec, "filter")

    def _interval_sql(self) -> str:
        if not self.columns.is_events:
            return "TRUE" if any(s <= 0 < e for s, e in self.intervals) else "FALSE"
        p = self.params
        return "(" + " OR ".join(f"(t.time >= {p(clamp_datetime(s))} AND t.time < {p(clamp_datetime(e))})"
                                 for s, e in self.intervals) + ")"

    def _base_sql(self) -> str:
        names = sorted(n for n in self.columns.used if n != self.spec.key_dimension)
        select = [f"t.uid AS {quote(UID)}",
                  f"{'t.time' if self.columns.is_events else 'TIMESTAMP ' + repr('1970-01-01')} AS {quote(TS)}"]
        select += [f"{self.columns.exprs[n][0]} AS {quote(n)}" for n in names]
        return f"SELECT {', '.join(select)} FROM {self.spec.table} t WHERE {self._interval_sql()}"

    def source_ctes(self, con, filter_sql: str, filter_uses_key: bool) -> str:
        """WITH base/src, decoding user keys into a keymap table only when the key is referenced."""
        base = self._base_sql()
        if self.spec.key_dimension not in self.columns.used:
            return f"WITH base AS ({base}), src AS (SELECT * FROM base) "
        # Decode only the users the query can reach: those passing the filter when it does not
        # itself test the key, else everyone in the intervals.
        where = "TRUE" if filter_uses_key else filter_sql
        sql = f"WITH base AS ({base}) SELECT DISTINCT {quote(UID)} AS uid FROM base WHERE {where}"
        uids = con.execute(sql, _bind(sql, self.params.values)).fetchnumpy()["uid"].tolist()
        keys: list[str | None] = []
        for start in range(0, len(uids), DECODE_BATCH):
            self.deadline.check()
            keys.extend(self.access.decode(uids[start:start + DECODE_BATCH]))
        con.register("keymap_arrow", pa.table({"uid": pa.array(uids, pa.uint32()), "key": pa.array(keys, pa.string())}))
        con.execute("CREATE TEMP TABLE keymap AS SELECT uid, key FROM keymap_arrow")
        con.unregister("keymap_arrow")
        return (f"WITH base AS ({base}), src AS (SELECT b.*, k.key AS {quote(self.spec.key_dimension)}"
                f" FROM base b LEFT JOIN keymap k ON k.uid = b.{quote(UID)}) ")

    def fetch(self, build: Callable[[duckdb.DuckDBPyConnection], str], capped: bool = False):
        """Rows of the SQL build(con) returns, interrupted at the deadline; capped: SQL ends in LIMIT row_cap."""
        self.deadline.check()
        con = self.snapshot.connect()
        remaining = self.deadline.remaining()
        timer = None
        if remaining is not None:
            timer = threading.Timer(remaining, con.interrupt)
            timer.daemon = True
            timer.start()
        try:
            sql = build(con)
            self.deadline.check()
            rows = con.execute(sql, _bind(sql, self.params.values)).fetchall()
        except duckdb.InterruptException:
            raise self.deadline.timeout() from None
        except (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.BinderException,
                duckdb.OutOfRangeException) as exc:
            raise BadQuery(f"query cannot be evaluated: {str(exc).splitlines()[0]}") from None
        except duckdb.Error as exc:
            log.exception("druid embedded query failed")
            raise DruidQueryError(f"embedded engine error: {str(exc).splitlines()[0]}") from None
        finally:
            if timer is not None:
                timer.cancel()
            con.close()
        if capped and self.row_cap is not None and len(rows) >= self.row_cap:
            raise exceeded(f"the {self.query_type} query produces more than {self.limits.max_rows} rows",
                           self.limits.max_rows, "max_rows, COHORTS_DRUID_MAX_ROWS",
                           "add a limit or threshold, or narrow the intervals or the filter")
        return rows

    def cap_sql(self, limit: int | None = None, offset: int | None = None) -> str:
        """LIMIT/OFFSET text: the query's own limit, lowered to row_cap (one past max_rows)."""
        caps = [c for c in (limit, self.row_cap) if c is not None]
        text = f" LIMIT {min(caps)}" if caps else ""
        return text + (f" OFFSET {offset}" if offset else "")

    def _all_timestamp(self) -> int:
        """Granularity `all` rows carry the query start, moved up to the first day holding data."""
        first = min(s for s, _ in self.intervals)
        if not self.columns.is_events:
            return max(first, 0)
        con = self.snapshot.connect()
        try:
            params = SqlParams()
            where = " OR ".join(f"(time >= {params(clamp_datetime(s))} AND time < {params(clamp_datetime(e))})"
                                for s, e in self.intervals)
            (earliest,) = con.execute(f"SELECT epoch_ms(min(time)) FROM events WHERE {where}",
                                      params.values).fetchone()
        finally:
            con.close()
        return first if earliest is None else max(first, earliest - earliest % DAY_MS)

    def _bucket_sql(self) -> str:
        if self.granularity.is_all:
            return "CAST(0 AS BIGINT)"
        return self.granularity.bucket_sql(quote(TS))

    def _timestamp(self, bucket: int, all_ts: int | None) -> str:
        return self.granularity.format(all_ts if self.granularity.is_all else bucket)

    # -- dimensions and aggregators ------------------------------------------------------------

    def _dimension(self, spec, path) -> _Output:
        if isinstance(spec, str):
            spec = {"type": "default", "dimension": spec}
        if not isinstance(spec, dict):
            raise BadQuery(f"{path} must be a dimension name or a dimension spec")
        kind = type_id(spec, path, "default")
        if kind not in DIMENSION_SPEC_TYPES:
            raise UnknownType(f"{path}.type", kind, "DimensionSpec", DIMENSION_SPEC_TYPES)
        if kind != "default" or spec.get("extractionFn") is not None:
            raise Unsupported(f"{path}: dimension spec type {kind!r} is not supported (default only)")
        name = name_field(require(spec, "dimension", path), f"{path}.dimension")
        output = name if spec.get("outputName") is None else name_field(spec["outputName"], f"{path}.outputName")
        out_type = "STRING" if spec.get("outputType") is None else column_type(spec["outputType"],
                                                                                 f"{path}.outputType")
        column, kind = self.columns.sql(name), self.columns.type_of(name)
        if out_type == "STRING":
            return _Output(output, column if kind in (STRING, None) else f"CAST({column} AS VARCHAR)", STRING)
        if out_type == "LONG":
            sql = column if kind == LONG else f"CAST(trunc(TRY_CAST({column} AS DOUBLE)) AS BIGINT)"
            return _Output(output, sql, LONG)
        if out_type in ("DOUBLE", "FLOAT"):
            return _Output(output, f"TRY_CAST({column} AS DOUBLE)", DOUBLE)
        raise Unsupported(f"{path}.outputType {out_type!r} is not supported")

    def _aggregator(self, spec, path, condition: str | None = None) -> _Output:
        if not isinstance(spec, dict):
            raise BadQuery(f"{path} must be an aggregator object")
        kind = require(spec, "type", path, str)
        if kind.startswith(LUCENE_PREFIX):
            kind = kind[len(LUCENE_PREFIX):]
        if kind not in AGGREGATOR_TYPES:
            if kind in UNSUPPORTED_AGGREGATORS:
                raise Unsupported(f"{path}: aggregator type {spec['type']!r} is not supported by the embedded engine")
            raise UnknownType(f"{path}.type", spec["type"], "AggregatorFactory", AGGREGATOR_TYPES | UNSUPPORTED_AGGREGATORS)
        if kind == "filtered":
            inner = require(spec, "aggregator", path, dict)
            test = self.filters.filter(require(spec, "filter", path, dict), f"{path}.filter")
            result = self._aggregator(inner, f"{path}.aggregator",
                                      test if condition is None else f"({condition}) AND {test}")
            name = result.name if spec.get("name") is None else name_field(spec["name"], f"{path}.name")
            return _Output(name, result.sql, result.kind, result.empty)
        name = name_field(require(spec, "name", path), f"{path}.name")
        where = "" if condition is None else f" FILTER (WHERE {condition})"
        if kind == "count":
            return _Output(name, f"count(*){where}", LONG, 0)
        if kind == "cardinality":
            return self._cardinality(spec, path, name, where)
        family = {"Sum": "sum", "Min": "min", "Max": "max"}
        for prefix, out in (("long", LONG), ("double", DOUBLE), ("float", DOUBLE)):
            if kind.startswith(prefix) and kind[len(prefix):] in family:
                if spec.get("expression") is not None:
                    raise Unsupported(f"{path}.expression is not supported")
                field = name_field(require(spec, "fieldName", path), f"{path}.fieldName")
                column, col_kind = self.columns.sql(field), self.columns.type_of(field)
                if out == LONG:
                    # Druid reads a non-long column into a long aggregator by truncating.
                    value = column if col_kind == LONG else f"CAST(trunc(TRY_CAST({column} AS DOUBLE)) AS BIGINT)"
                    fn = family[kind[len(prefix):]]
                    sql = f"CAST({fn}({value}){where} AS BIGINT)" if fn == "sum" else f"{fn}({value}){where}"
                else:
                    value = column if col_kind == DOUBLE else f"TRY_CAST({column} AS DOUBLE)"
                    sql = f"{family[kind[len(prefix):]]}({value}){where}"
                return _Output(name, sql, out)
        raise Unsupported(f"{path}: aggregator type {spec['type']!r} is not supported by the embedded engine")

    def _cardinality(self, spec, path, name, where) -> _Output:
        fields = require(spec, "fields", path, list)
        if not fields:
            raise BadQuery(f"{path}.fields must not be empty")
        columns = []
        for i, field in enumerate(fields):
            if isinstance(field, dict):
                if field.get("extractionFn") is not None or field.get("type", "default") != "default":
                    raise Unsupported(f"{path}.fields[{i}]: only plain dimensions are supported")
                field = field.get("dimension")
            if not isinstance(field, str):
                raise BadQuery(f"{path}.fields[{i}] must be a dimension name")
            column = self.columns.sql(field)
            kind = self.columns.type_of(field)
            columns.append(column if kind in (STRING, None) else f"CAST({column} AS VARCHAR)")
        # Exact distinct counts: Druid's estimate is approximate, an exact count is within its error.
        if len(columns) == 1:
            sql = f"count(DISTINCT {columns[0]}){where}"
        elif spec.get("byRow"):
            all_null = " AND ".join(f"{c} IS NULL" for c in columns)
            sql = f"count(DISTINCT CASE WHEN {all_null} THEN NULL ELSE row({', '.join(columns)}) END){where}"
        else:
            lists = ", ".join(f"list({c}){where}" for c in columns)
            sql = f"len(list_distinct(flatten([{lists}])))"
        if spec.get("round"):
            return _Output(name, f"CAST({sql} AS BIGINT)", LONG, 0)
        return _Output(name, f"CAST({sql} AS DOUBLE)", DOUBLE, 0.0)

    def _aggregators(self) -> list[_Output]:
        specs = self.query.get("aggregations") or []
        if not isinstance(specs, list):
            raise BadQuery("aggregations must be a list")
        return [self._aggregator(s, f"aggregations[{i}]") for i, s in enumerate(specs)]

    @staticmethod
    def _check_names(outputs: list[_Output]) -> None:
        seen = set()
        for out in outputs:
            if out.name in seen or out.name in (UID, TS, BUCKET):
                raise BadQuery(f"output name {out.name!r} is used twice")
            seen.add(out.name)

    # -- query types -------------------------------------------------------------------------

    def run(self):
        return self.handlers[self.query_type](self)

    def _grouped(self, dims: list[_Output], aggs: list[_Output], filter_sql: str) -> str:
        select = [f"{self._bucket_sql()} AS {quote(BUCKET)}"]
        select += [f"{d.sql} AS {quote(d.name)}" for d in dims]
        select += [f"{a.sql} AS {quote(a.name)}" for a in aggs]
        keys = ", ".join([quote(BUCKET)] + [quote(d.name) for d in dims])
        return f"SELECT {', '.join(select)} FROM src WHERE {filter_sql} GROUP BY {keys}"

    def _run_groupBy(self):
        dim_specs = self.query.get("dimensions") or []
        if not isinstance(dim_specs, list):
            raise BadQuery("dimensions must be a list")
        filter_sql = self.filter_sql()
        filter_uses_key = self.spec.key_dimension in self.columns.used
        dims = [self._dimension(s, f"dimensions[{i}]") for i, s in enumerate(dim_specs)]
        aggs = self._aggregators()
        posts = self._post_aggregators({a.name for a in aggs})
        self._check_names(dims + aggs + posts)
        outputs = OutputColumns({o.name: o.kind for o in dims + aggs + posts})
        having_sql = "TRUE"
        if self.query.get("having") is not None:
            having = HavingTranslator(FilterTranslator(outputs, self.params))
            having_sql = having.having(self.query["having"], "having")
        order_sql, limit_sql = self._limit_spec(dims, aggs + posts)
        grouped = self._grouped(dims, aggs, filter_sql)
        if posts:
            grouped = f"SELECT *, {', '.join(f'{p.sql} AS {quote(p.name)}' for p in posts)} FROM ({grouped}) a"
        rows = self.fetch(lambda con: self.source_ctes(con, filter_sql, filter_uses_key)
                             + f"SELECT * FROM ({grouped}) g"
                             f" WHERE {having_sql} ORDER BY {order_sql}{limit_sql}", capped=True)
        if _truthy(self.context.get("resultAsArray")):
            # Druid's array rows: the bucket start in milliseconds unless granularity is all, then
            # the dimensions, aggregators and post-aggregators in query order.
            # Tuples encode as JSON arrays; slicing off the bucket is the only per-row work.
            return [row[1:] for row in rows] if self.granularity.is_all else rows
        all_ts = self._all_timestamp() if self.granularity.is_all and rows else None
        version_key = "v" if self.lucene else "version"
        names = [o.name for o in dims + aggs + posts]
        return [{version_key: "v1", "timestamp": self._timestamp(row[0], all_ts),
                 "event": dict(zip(names, row[1:], strict=True))} for row in rows]

    def _post_aggregators(self, agg_names: set[str]) -> list[_Output]:
        specs = self.query.get("postAggregations") or []
        if not isinstance(specs, list):
            raise BadQuery("postAggregations must be a list")
        found: list[_Output] = []
        for i, spec in enumerate(specs):
            path = f"postAggregations[{i}]"
            name = name_field(require(spec, "name", path), f"{path}.name")
            # A post-aggregator may read the aggregators and the post-aggregators before it.
            known = {n: f"a.{quote(n)}" for n in agg_names}
            known.update({p.name: f"({p.sql})" for p in found})
            found.append(_Output(name, self._post_sql(spec, path, known), DOUBLE))
        return found

    def _post_sql(self, spec, path: str, known: dict[str, str]) -> str:
        kind = require(spec, "type", path, str)
        if kind in ("fieldAccess", "finalizingFieldAccess"):
            field = require(spec, "fieldName", path, str)
            if field not in known:
                raise BadQuery(f"{path}.fieldName {field!r} is not an aggregator of the query")
            return f"CAST({known[field]} AS DOUBLE)"
        if kind == "constant":
            number = to_number(require(spec, "value", path))
            if number is None:
                raise BadQuery(f"{path}.value must be a number")
            return f"CAST({self.params(number)} AS DOUBLE)"
        if kind == "arithmetic":
            fn = require(spec, "fn", path, str)
            fields = require(spec, "fields", path, list)
            if len(fields) < 2:
                raise BadQuery(f"{path}.fields needs at least two post-aggregators")
            parts = [self._post_sql(f, f"{path}.fields[{j}]", known) for j, f in enumerate(fields)]
            if fn in ("+", "-", "*"):
                return "(" + f" {fn} ".join(parts) + ")"
            if fn not in ("/", "quotient"):
                raise Unsupported(f"{path}.fn {fn!r} is not supported (+, -, *, /, quotient)")
            sql = parts[0]
            for part in parts[1:]:
                # Druid's "/" answers 0 for a zero divisor; quotient divides as Java doubles do.
                sql = (f"(CASE WHEN {part} = 0 THEN 0.0 ELSE {sql} / {part} END)" if fn == "/"
                       else f"({sql} / {part})")
            return sql
        if kind in POST_AGGREGATOR_TYPES:
            raise Unsupported(f"{path}: post-aggregator type {kind!r} is not supported "
                              "(arithmetic, fieldAccess, finalizingFieldAccess, constant)")
        raise UnknownType(f"{path}.type", kind, "PostAggregator", POST_AGGREGATOR_TYPES)

    def _run_segmentMetadata(self):
        """Column names and types of the dataSource, merged into one analysis (Druid's `merge: true` answer)."""
        columns = {"__time": {"typeSignature": "LONG", "type": "LONG", "hasMultipleValues": False,
                              "hasNulls": False, "size": 0, "cardinality": None, "minValue": None,
                              "maxValue": None, "errorMessage": None}}
        names = [self.spec.key_dimension, *(n for n in self.columns.exprs if n != "__time")]
        for name in names:
            kind = self.columns.type_of(name)
            columns[name] = {"typeSignature": kind, "type": kind, "hasMultipleValues": False, "hasNulls": True,
                             "size": 0, "cardinality": None, "minValue": None, "maxValue": None,
                             "errorMessage": None}
        rows = (self.snapshot.manifest.event_rows if self.columns.is_events else self.snapshot.manifest.user_rows)
        return [{"id": f"{self.datasource}_embedded_v{self.snapshot.manifest.version}", "intervals": None,
                 "columns": columns, "size": 0, "numRows": rows, "aggregators": None, "timestampSpec": None,
                 "queryGranularity": None, "rollup": None}]

    def _limit_spec(self, dims: list[_Output], aggs: list[_Output]) -> tuple[str, str]:
        spec = self.query.get("limitSpec") or {}
        if not isinstance(spec, dict):
            raise BadQuery("limitSpec must be an object")
        if type_id(spec, "limitSpec", "default") != "default":
            raise UnknownType("limitSpec.type", spec.get("type"), "LimitSpec", {"default"})
        by_name = {o.name: o for o in dims + aggs}
        agg_names = {a.name for a in aggs}
        terms, ordered = [], set()
        columns = spec.get("columns")
        if columns is not None and not isinstance(columns, list):
            raise BadQuery("limitSpec.columns must be a list")
        for i, column in enumerate(columns or []):
            path = f"limitSpec.columns[{i}]"
            if isinstance(column, str):
                column = {"dimension": column}
            name = require(column, "dimension", path, str)
            if name not in by_name:
                raise BadQuery(f"{path}.dimension {name!r} is neither a dimension nor an aggregator of the query")
            direction = str(column.get("direction", "ascending")).lower()
            if direction not in ("ascending", "descending", "asc", "desc"):
                raise BadQuery(f"{path}.direction must be ascending or descending")
            order = ordering_of(column, path, "dimensionOrder")
            numeric = name in agg_names or order == "numeric" or (by_name[name].kind in NUMERIC and
                                                                 "dimensionOrder" not in column)
            terms.append(_order_term(quote(name), by_name[name].kind, numeric, direction.startswith("desc")))
            ordered.add(name)
        tie_break = [_order_term(quote(d.name), d.kind, d.kind in NUMERIC, False) for d in dims if d.name not in ordered]
        by_dims_first = bool(self.context.get("sortByDimsFirst"))
        bucket = [] if self.granularity.is_all else [f"{quote(BUCKET)} ASC"]
        order = (terms + tie_break + bucket) if by_dims_first else (bucket + terms + tie_break)
        limit = _count(spec.get("limit"), "limitSpec.limit")
        offset = _count(spec.get("offset"), "limitSpec.offset")
        return ", ".join(order) or "1", self.cap_sql(limit, offset)

    def _run_timeseries(self):
        filter_sql = self.filter_sql()
        filter_uses_key = self.spec.key_dimension in self.columns.used
        aggs = self._aggregators()
        self._check_names(aggs)
        names = [a.name for a in aggs]
        descending = bool(self.query.get("descending"))
        limit = _count(self.query.get("limit"), "limit")
        zero_fill = not _truthy(self.context.get("skipEmptyBuckets"))
        buckets = self._data_buckets() if zero_fill and not self.granularity.is_all else []
        if self.granularity.is_all:
            # count(*) stands in for no aggregator, so that exactly one row comes back.
            select = ", ".join(f"{a.sql} AS {quote(a.name)}" for a in aggs) or "count(*)"
            rows = self.fetch(lambda con: self.source_ctes(con, filter_sql, filter_uses_key)
                                 + f"SELECT CAST(0 AS BIGINT), {select} FROM src WHERE {filter_sql}")
            results = [{"timestamp": self.granularity.format(self._all_timestamp()),
                        "result": dict(zip(names, rows[0][1:] if aggs else (), strict=True))}]
        else:
            rows = self.fetch(lambda con: self.source_ctes(con, filter_sql, filter_uses_key)
                                 + f"SELECT * FROM ({self._grouped([], aggs, filter_sql)}) g ORDER BY 1"
                                 + self.cap_sql(), capped=True)
            by_bucket = {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}
            empty = {a.name: a.empty for a in aggs}
            for bucket in buckets:
                by_bucket.setdefault(bucket, dict(empty))
            self._check_rows(len(by_bucket))
            self.deadline.check()
            results = [{"timestamp": self.granularity.format(b), "result": by_bucket[b]} for b in sorted(by_bucket)]
            if descending:
                results.reverse()
        if limit is not None:
            results = results[:limit]
        if _truthy(self.context.get("grandTotal")):
            select = ", ".join(f"{a.sql} AS {quote(a.name)}" for a in aggs) or "count(*)"
            total = self.fetch(lambda con: self.source_ctes(con, filter_sql, filter_uses_key)
                                  + f"SELECT {select} FROM src WHERE {filter_sql}")[0]
            results.append({"timestamp": None, "result": dict(zip(names, total if aggs else (), strict=True))})
        return results

    def _data_buckets(self) -> list[int]:
        """Bucket starts within the query intervals and the datasource's data span (Druid's zero-fill range)."""
        rows = self.fetch(lambda con: "SELECT epoch_ms(min(time)), epoch_ms(max(time)) FROM events"
                             if self.columns.is_events else "SELECT 0, 0")
        low, high = rows[0]
        if low is None:
            return []
        gran: Granularity = self.granularity
        spans = [(max(start, low), min(end, high + 1)) for start, end in self.intervals]
        spans = [(lo, hi) for lo, hi in spans if lo < hi]
        # Their number follows from the span and the granularity: past max_buckets the query is
        # refused here, before any bucket is made or the aggregation runs.
        expected = sum(gran.bucket_count(lo, hi) for lo, hi in spans)
        limit = self.limits.max_buckets
        if limit is not None and expected > limit:
            raise exceeded(f"granularity {json.dumps(self.query.get('granularity'))} over the data in the intervals makes"
                           f" {expected} time buckets", limit, "max_buckets, COHORTS_DRUID_MAX_BUCKETS",
                           "use a coarser granularity, narrower intervals or context.skipEmptyBuckets")
        buckets: list[int] = []
        for lo, hi in spans:
            con = self.snapshot.connect()
            try:
                (bucket,) = con.execute(f"SELECT {gran.bucket_sql('$t')}", {"t": clamp_datetime(lo)}).fetchone()
            finally:
                con.close()
            while bucket < hi:
                buckets.append(bucket)
                bucket = gran.next_bucket(bucket)
                if len(buckets) % 10_000 == 0:
                    self.deadline.check()
        return buckets

    def _check_rows(self, count: int) -> None:
        if self.limits.max_rows is not None and count > self.limits.max_rows:
            raise exceeded(f"the {self.query_type} query produces {count} rows", self.limits.max_rows,
                           "max_rows, COHORTS_DRUID_MAX_ROWS", "narrow the intervals or coarsen the granularity")

    def _run_topN(self):
        filter_sql = self.filter_sql()
        filter_uses_key = self.spec.key_dimension in self.columns.used
        dim = self._dimension(require(self.query, "dimension", "query"), "dimension")
        aggs = self._aggregators()
        self._check_names([dim, *aggs])
        threshold = _count(require(self.query, "threshold", "query"), "threshold", minimum=1)
        order, condition = self._topn_order(self.query.get("metric"), dim, {a.name for a in aggs}, "metric")
        tie = _order_term(quote(dim.name), dim.kind, dim.kind in NUMERIC, False)
        rows = self.fetch(lambda con: self.source_ctes(con, filter_sql, filter_uses_key)
                             + f"SELECT * FROM ({self._grouped([dim], aggs, filter_sql)}) g WHERE {condition}"
                             f" QUALIFY row_number() OVER (PARTITION BY {quote(BUCKET)} ORDER BY {order}, {tie})"
                             f" <= {threshold} ORDER BY {quote(BUCKET)}, {order}, {tie}{self.cap_sql()}", capped=True)
        all_ts = self._all_timestamp() if self.granularity.is_all and rows else None
        names = [dim.name] + [a.name for a in aggs]
        results: list[dict] = []
        for row in rows:
            if not results or results[-1]["_bucket"] != row[0]:
                results.append({"_bucket": row[0], "timestamp": self._timestamp(row[0], all_ts), "result": []})
            results[-1]["result"].append(dict(zip(names, row[1:], strict=True)))
        for entry in results:
            del entry["_bucket"]
        return results

    def _topn_order(self, spec, dim: _Output, agg_names: set[str], path) -> tuple[str, str]:
        """(ORDER BY text, extra WHERE) for a topN metric spec."""
        if isinstance(spec, str):
            spec = {"type": "numeric", "metric": spec}
        if not isinstance(spec, dict):
            raise BadQuery(f"{path} is required (an aggregator name or a metric spec)")
        kind = type_id(spec, path)
        if kind not in TOPN_METRIC_TYPES:
            raise UnknownType(f"{path}.type", kind, "TopNMetricSpec", TOPN_METRIC_TYPES)
        if kind == "numeric":
            name = require(spec, "metric", path, str)
            if name not in agg_names:
                raise BadQuery(f"{path}.metric {name!r} is not an aggregator of the query")
            return f"{quote(name)} DESC NULLS LAST", "TRUE"
        if kind == "inverted":
            inner, condition = self._topn_order(require(spec, "metric", path), dim, agg_names, f"{path}.metric")
            flipped = inner.replace(" DESC NULLS LAST", " \0").replace(" ASC NULLS FIRST", " DESC NULLS LAST")
            return flipped.replace(" \0", " ASC NULLS FIRST"), condition
        if kind in ("dimension", "lexicographic", "alphaNumeric"):
            ordering = ordering_of({"ordering": spec.get("ordering", "lexicographic") if kind == "dimension"
                                    else kind}, path)
            numeric = ordering == "numeric"
            column = quote(dim.name)
            key = f"TRY_CAST({column} AS DOUBLE)" if numeric and dim.kind not in NUMERIC else (
                f"CAST({column} AS VARCHAR)" if not numeric and dim.kind in NUMERIC else column)
            condition = "TRUE"
            if spec.get("previousStop") is not None:
                if isinstance(spec["previousStop"], (dict, list)):
                    raise BadQuery(f"{path}.previousStop must be a string or a number")
                stop = to_number(spec["previousStop"]) if numeric else str(spec["previousStop"])
                if stop is None:
                    raise BadQuery(f"{path}.previousStop must be a number for numeric ordering")
                condition = f"{key} > {self.params(stop)}"
            return f"{key} ASC NULLS FIRST", condition
        raise Unsupported(f"{path}.type {kind!r} is not supported (numeric, inverted, dimension)")

    def _run_scan(self):
        if self.query.get("legacy"):
            raise Unsupported("legacy scan results are not supported")
        result_format = self.query.get("resultFormat", "list")
        if not isinstance(result_format, str) or result_format not in SCAN_FORMATS:
            raise BadQuery(f"resultFormat {result_format!r} is not a scan result format ({', '.join(sorted(SCAN_FORMATS))})")
        if result_format not in ("list", "compactedList"):
            raise Unsupported(f"resultFormat {result_format!r} is not supported (list, compactedList)")
        filter_sql = self.filter_sql()
        filter_uses_key = self.spec.key_dimension in self.columns.used
        names = self.query.get("columns") or self.columns.all_names()
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadQuery("columns must be a list of column names")
        names = list(dict.fromkeys(name_field(n, f"columns[{i}]") for i, n in enumerate(names)))
        selected = [self.columns.sql(n) for n in names]
        order = str(self.query.get("order") or "none").lower()
        if order not in ("none", "ascending", "descending"):
            raise BadQuery("order must be none, ascending or descending")
        limit = _count(self.query.get("limit"), "limit", maximum=JAVA_LONG_MAX)
        offset = _count(self.query.get("offset"), "offset", maximum=JAVA_LONG_MAX)
        batch = _count(self.query.get("batchSize"), "batchSize", minimum=1) or DEFAULT_SCAN_BATCH
        terms = [_order_term(sql, self.columns.type_of(n), self.columns.type_of(n) in NUMERIC, False)
                 for n, sql in zip(names, selected, strict=True)]
        if order != "none":
            time_col = self.columns.sql("__time")
            terms.insert(0, f"{time_col} {'DESC' if order == 'descending' else 'ASC'}")
        # An order over every selected column makes limit/offset pages consistent across requests.
        order_sql = f" ORDER BY {', '.join(terms)}" if (order != "none" or limit is not None or offset) else ""
        tail = self.cap_sql(limit, offset)
        projection = ", ".join(f"{sql} AS c{i}" for i, sql in enumerate(selected))
        rows = self.fetch(lambda con: self.source_ctes(con, filter_sql, filter_uses_key)
                             + f"SELECT {projection} FROM src WHERE {filter_sql}{order_sql}{tail}", capped=True)
        segment = f"{self.datasource}_embedded_v{self.snapshot.manifest.version}"
        batches = []
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            events = ([dict(zip(names, r, strict=True)) for r in chunk] if result_format == "list"
                      else [list(r) for r in chunk])
            batches.append({"segmentId": segment, "columns": names, "events": events})
        return batches


def _order_term(column: str, kind: str | None, numeric: bool, descending: bool) -> str:
    if numeric:
        key = column if kind in NUMERIC else f"TRY_CAST({column} AS DOUBLE)"
    else:
        key = column if kind in (STRING, None) else f"CAST({column} AS VARCHAR)"
    direction = "DESC NULLS LAST" if descending else "ASC NULLS FIRST"
    if numeric and kind not in NUMERIC:
        # Equal numbers (or non-numbers) still need a total order: their text breaks the tie.
        return f"{key} {direction}, {column} {direction}"
    return f"{key} {direction}"


def _bind(sql: str, values: dict) -> dict:
    """The parameters sql uses (DuckDB rejects unused named parameters)."""
    return {name: values[name] for name in set(_PARAM.findall(sql))}


def _truthy(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def name_field(value, path: str) -> str:
    """A column or output name: a non-empty JSON string (DuckDB has no empty identifier)."""
    if not isinstance(value, str):
        raise BadQuery(f"{path} must be a string, not {type(value).__name__}")
    if not value:
        raise BadQuery(f"{path} must not be empty")
    return value


def _count(value, path: str, minimum: int = 0, maximum: int = JAVA_INT_MAX) -> int | None:
    """An optional integer field within [minimum, maximum] (Druid holds these in Java ints/longs)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise BadQuery(f"{path} must be an integer from {minimum} to {maximum}")
    return value


Plan = _Plan
# Druid's own query types; dialects add theirs with run(..., query_types=...).
DRUID_QUERY_TYPES: dict[str, Callable[[Plan], object]] = {
    "groupBy": _Plan._run_groupBy,
    "timeseries": _Plan._run_timeseries,
    "topN": _Plan._run_topN,
    "scan": _Plan._run_scan,
    "segmentMetadata": _Plan._run_segmentMetadata,
}
