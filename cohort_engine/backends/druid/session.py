"""A Session over a Druid cluster: leaf queries sent over HTTP, answers paged, user keys encoded in bulk."""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import requests
from pyroaring import BitMap

from ... import db
from ...bitmaps import to_bitmap
from ...dictionary import UserKeyDictionary
from ...druid.client import DruidClient
from ...druid.protocol import DruidError
from ...errors import EngineError
from ...values import ZERO_WHEN_ABSENT, holds
from .. import UserValues
from .queries import ETERNITY, NUMERIC_TYPES, Catalog, Field, LeafQueries, number_text
from .settings import DruidSettings

log = logging.getLogger(__name__)


class DruidSession:
    """One evaluation's view of a project's Druid datasources (catalog and universe fetched once, when needed)."""

    def __init__(self, project, config, settings: DruidSettings, client: DruidClient | None = None):
        self.project = project
        self.config = config
        self.settings = settings
        if client is None:
            http = requests.Session()
            if settings.username is not None:
                http.auth = (settings.username, settings.password)
            client = DruidClient(settings.brokers, default_timeout_ms=settings.timeout_ms, session=http)
        self.client = client
        self._catalog: Catalog | None = None
        self._universe: BitMap | None = None
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self.cancelled = False
        self.queries_sent = 0

    # -- the Session protocol -------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            events = self._column_types(self.settings.events)
            profiles = self._column_types(self.settings.profiles) if self.settings.profiles else {}
            self._catalog = Catalog(self.settings, events, profiles)
        return self._catalog

    def columns(self) -> dict[str, dict[str, str]]:
        return self.catalog.kinds()

    def snapshot_id(self) -> None:
        """None: nothing names a Druid datasource's contents (docs/store.md "Leaf-result cache")."""
        return None

    def universe(self) -> BitMap:
        """Everyone with an event or a profile row: the distinct user keys of both datasources."""
        if self._universe is None:
            queries = LeafQueries(self.settings, self.catalog, None, None)
            found = self._users(queries.users(self.settings.events))
            if self.settings.profiles:
                found |= self._users(queries.users(self.settings.profiles))
            self._universe = found
        return self._universe

    def profile(self, leaf: dict, ctx) -> BitMap:
        query, complement = self._queries(ctx).profile(leaf)
        hits = BitMap() if query is None else self._users(query)
        return self.universe() - hits if complement else hits

    def event(self, leaf: dict, ctx) -> BitMap:
        queries = self._queries(ctx)
        agg = leaf["agg"]
        zero_passes = agg["fn"] in ZERO_WHEN_ABSENT and holds(0, leaf["cmp"], leaf["values"])
        if agg["fn"] in ("count_distinct", "days"):
            return self._counted(queries.distinct_pairs(leaf), leaf, zero_passes)
        query = queries.event(leaf, complement=zero_passes)
        found = self._users(query)
        # With the complement, the query found the users whose value fails; everyone else has 0 or passes.
        return self.universe() - found if zero_passes else found

    def sequence(self, leaf: dict, ctx) -> BitMap:
        """Steps joined here: each step's first time after the previous step's, per user (greedy, like the SQL)."""
        queries = self._queries(ctx)
        steps, window = leaf["steps"], leaf["window"]
        if len(steps) == 1:
            return self._users(queries.sequence_step(steps[0], window, "min"))
        reached = self._times(queries.sequence_step(steps[0], window, "min"))
        for step in steps[1:-1]:
            if not reached:
                return BitMap()
            reached = self._next_times(queries.sequence_step(step, window, "all", min(reached.values())), reached)
        if not reached:
            return BitMap()
        last = self._times(queries.sequence_step(steps[-1], window, "max", min(reached.values())))
        keys = [k for k, t in last.items() if k in reached and t > reached[k]]
        return to_bitmap(self._encode(keys))

    def user_values(self, spec: dict, ctx) -> UserValues:
        """A metric or first_last tag's value per user (the Session protocol), from native queries paged by key."""
        queries = self._queries(ctx)
        if spec["kind"] == "metric":
            fn = spec["agg"]["fn"]
            if fn in ("count_distinct", "days"):
                keyed = self._by_user(queries.distinct_pairs(spec), 1 if fn == "days" else 0)
                return self._collect("number", ((key, float(len(rows))) for key, rows in keyed))
            query, at = queries.metric(spec)
            # One row per user (the key is the only dimension), so each page is a batch as it stands.
            # A sum over only null values is null in Druid's SQL mode; the event leaf counts it as 0.
            return self._collect_pages("number", (
                ([r[0] for r in rows if r[0] is not None],
                 [0.0 if r[at] is None else float(r[at]) for r in rows if r[0] is not None])
                for rows in self._pages(query)))
        query, f = queries.first_last(spec)
        convert, first = _converter(f), spec["which"] == "first"
        if spec["property"] == "time":
            return self._collect_pages("time", (
                ([r[0] for r in rows if r[0] is not None and r[1] is not None],
                 [convert(r[1]) for r in rows if r[0] is not None and r[1] is not None])
                for rows in self._pages(query)))
        return self._collect_pages(f.kind, _picked(self._pages(query), convert, first))

    def match_profile(self, column: str, values) -> tuple[np.ndarray, np.ndarray]:
        """(index into values, uid) of the profiles whose property equals a value: `in` filters, MATCH_CHUNK values each."""
        f = self.catalog.profiles.get(column)
        if f is None or self.settings.profiles is None:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        queries = LeafQueries(self.settings, self.catalog, None, None)
        if f.kind == "number":
            # Each value read as a number ("7" and "7.0" both match 7), sent in the canonical text Druid parses.
            wanted: dict = {}
            for i, text in enumerate(values):
                number = _decimal(text)
                if number is not None:
                    wanted.setdefault(number, []).append(i)
            texts = [number_text(n) for n in wanted]
            lookup = lambda v: wanted.get(float(v), ())  # noqa: E731
        else:
            wanted = {text: (i,) for i, text in enumerate(values)}
            texts = list(wanted)
            lookup = lambda v: wanted.get(v, ())  # noqa: E731
        index: list[int] = []
        uids: list[np.ndarray] = []
        for start in range(0, len(texts), MATCH_CHUNK):
            query = queries.match_profile(f, texts[start:start + MATCH_CHUNK])
            for rows in self._pages(query):
                keys, found = [], []
                for key, value in rows:
                    if key is None or value is None:
                        continue
                    for i in lookup(value):
                        keys.append(key)
                        found.append(i)
                if keys:
                    uids.append(self._encode(keys))
                    index.extend(found)
        if not uids:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        return np.asarray(index, dtype=np.int64), np.concatenate(uids).astype(np.uint32)

    def register_keys(self, keys) -> None:
        """Encode the keys the events or profiles datasource has (`in` filters on the user key, MATCH_CHUNK a query)."""
        queries = LeafQueries(self.settings, None, None, None)  # users() needs no catalog
        keys = list(dict.fromkeys(keys))
        for datasource in filter(None, (self.settings.events, self.settings.profiles)):
            for start in range(0, len(keys), MATCH_CHUNK):
                wanted = {"type": "in", "dimension": self.settings.user_key, "values": keys[start:start + MATCH_CHUNK]}
                self._users(queries.users(datasource, filter_=wanted))

    def cancel(self) -> None:
        """Stop this session: every running query is cancelled on the broker (DELETE /druid/v2/{queryId})."""
        with self._lock:
            self.cancelled = True
            running = list(self._running)
        for query_id in running:
            try:
                self.client.cancel(query_id)
                log.info("druid backend cancelled query query_id=%s project=%s", query_id, self.project.name)
            except DruidError as exc:
                log.warning("druid backend cancel failed query_id=%s error=%s", query_id, exc)

    def close(self) -> None:
        self.client.close()

    # -- queries and pages ----------------------------------------------------------------------

    def _queries(self, ctx) -> LeafQueries:
        return LeafQueries(self.settings, self.catalog, ctx.tz, ctx.base_time)

    def _column_types(self, datasource: str) -> dict[str, str]:
        query = {"queryType": "segmentMetadata", "dataSource": datasource, "intervals": [ETERNITY], "merge": True,
                 "analysisTypes": [], "lenientAggregatorMerge": True}
        types: dict[str, str] = {}
        for analysis in self._send(query):
            for name, column in (analysis.get("columns") or {}).items():
                types[name] = str(column.get("type") or "STRING").upper()
        if not types:
            raise EngineError("backend_config", f"Druid datasource {datasource!r} has no segments (segmentMetadata "
                                                "answered no columns); check the project's druid backend setting")
        return types

    def _send(self, query: dict, query_id: str | None = None) -> list:
        """One query with context.queryId and context.timeout; DruidError becomes an EngineError to act on."""
        query_id = query_id or f"cohorts-{self.project.id}-{uuid.uuid4().hex}"
        context = dict(query.get("context") or {})
        context.update(queryId=query_id, timeout=self.settings.timeout_ms)
        if query["queryType"] == "groupBy":
            context["resultAsArray"] = True
        query = {**query, "context": context}
        with self._lock:
            if self.cancelled:
                raise EngineError("cancelled", "the job was cancelled on request")
            self._running.add(query_id)
        try:
            self.queries_sent += 1
            return self.client.query(query, query_id)
        except DruidError as exc:
            if self.cancelled:
                raise EngineError("cancelled", "the job was cancelled on request") from None
            raise druid_failure(exc, self.settings, query) from None
        finally:
            with self._lock:
                self._running.discard(query_id)

    def _pages(self, query: dict) -> Iterator[list[list]]:
        """Array rows of a groupBy, page by page (limitSpec limit/offset over a total order of the dimensions)."""
        columns = []
        for dim in query["dimensions"]:
            if isinstance(dim, str):
                columns.append({"dimension": dim, "direction": "ascending", "dimensionOrder": "lexicographic"})
            else:
                numeric = dim.get("outputType") in ("LONG", "DOUBLE", "FLOAT")
                columns.append({"dimension": dim["outputName"], "direction": "ascending",
                                "dimensionOrder": "numeric" if numeric else "lexicographic"})
        page, offset = self.settings.page_size, 0
        query_id = f"cohorts-{self.project.id}-{uuid.uuid4().hex}"
        while True:
            paged = {**query, "limitSpec": {"type": "default", "columns": columns, "limit": page, "offset": offset}}
            rows = self._send(paged, query_id)
            if rows:
                yield rows
            if len(rows) < page:
                return
            offset += page

    def _users(self, query: dict) -> BitMap:
        """The uids of the first dimension (the user key) of every row."""
        found = BitMap()
        for rows in self._pages(query):
            found |= to_bitmap(self._encode([r[0] for r in rows if r[0] is not None]))
        return found

    def _times(self, query: dict) -> dict[str, int]:
        """{user key: value} of a (key, time aggregate) groupBy."""
        found: dict[str, int] = {}
        for rows in self._pages(query):
            found.update((r[0], r[1]) for r in rows if r[0] is not None and r[1] is not None)
        return found

    def _next_times(self, query: dict, after: dict[str, int]) -> dict[str, int]:
        """{key: the first time after after[key]} from (key, time) rows ordered by key, then time."""
        found: dict[str, int] = {}
        for rows in self._pages(query):
            for key, moment in rows:
                threshold = after.get(key)
                if threshold is not None and moment is not None and moment > threshold and key not in found:
                    found[key] = moment
        return found

    def _by_user(self, query: dict, key_at: int = 0) -> Iterator[tuple[str, list[list]]]:
        """(user key, its rows) of a groupBy answering in key order; one page (and one user's rows) in memory."""
        current, group = None, []
        for rows in self._pages(query):
            for row in rows:
                key = row[key_at]
                if key is None:
                    continue
                if key != current:
                    if group:
                        yield current, group
                    current, group = key, []
                group.append(row)  # a user's rows may continue on the next page
        if group:
            yield current, group

    def _counted(self, query: dict, leaf: dict, zero_passes: bool) -> BitMap:
        """count_distinct / days: rows per user counted here (the leaf's users, or its failures with zero_passes)."""
        cmp, values = leaf["cmp"], leaf["values"]
        keyed = self._by_user(query, 1 if leaf["agg"]["fn"] == "days" else 0)
        hits = (key for key, rows in keyed if holds(len(rows), cmp, values) != zero_passes)
        bitmap = BitMap()
        for keys in _batches(hits, self.settings.page_size):
            bitmap |= to_bitmap(self._encode(keys))
        return self.universe() - bitmap if zero_passes else bitmap

    def _collect(self, value_type: str, pairs: Iterator[tuple[str, object]]) -> UserValues:
        """UserValues of (user key, value) pairs (a None value left out), keys encoded page_size at a time."""
        uid_parts, value_parts = [], []
        for batch in _batches(((k, v) for k, v in pairs if v is not None), self.settings.page_size):
            uid_parts.append(self._encode([k for k, _ in batch]))
            value_parts.append(_typed(value_type, [v for _, v in batch]))
        uids = np.concatenate(uid_parts).astype(np.uint32) if uid_parts else np.empty(0, np.uint32)
        values = np.concatenate(value_parts) if value_parts else _typed(value_type, [])
        # Keys arrive in key order, their uids in whatever order the dictionary gave them.
        order = np.argsort(uids, kind="stable")
        return UserValues(value_type, uids[order], values[order])

    def _collect_pages(self, value_type: str, pages: Iterator[tuple[list[str], list]]) -> UserValues:
        """UserValues of (keys, values) batches of distinct keys with non-null values, one encode a batch."""
        uid_parts, value_parts = [], []
        for keys, values in pages:
            if keys:
                uid_parts.append(self._encode(keys))
                value_parts.append(_typed(value_type, values))
        uids = np.concatenate(uid_parts).astype(np.uint32) if uid_parts else np.empty(0, np.uint32)
        values = np.concatenate(value_parts) if value_parts else _typed(value_type, [])
        order = np.argsort(uids, kind="stable")
        return UserValues(value_type, uids[order], values[order])

    def _encode(self, keys: list[str]) -> np.ndarray:
        """uint32 ids of user keys (new keys get ids), in bulk."""
        with db.connection(self.config.database_url) as conn:
            return UserKeyDictionary(conn, self.project.id).encode(keys)


MATCH_CHUNK = 50_000  # values per `in` filter of match_profile: a bounded request, whatever the upload's size
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _decimal(text: str) -> float | None:
    """A value read as a decimal number, or None (not a number, or not finite)."""
    if not _DECIMAL.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def _converter(f: Field):
    """Druid's answer for a property (as output_type asked it) -> the engine's value of its kind."""
    if f.kind == "time":
        return lambda v: int(v) * 1000  # LONG epoch ms -> microseconds
    if f.kind == "number":
        return float
    if f.kind == "boolean":
        if f.druid_type.upper() in NUMERIC_TYPES:
            return lambda v: v != 0
        return lambda v: str(v).lower() == "true"
    return str


def _picked(pages: Iterator[list[list]], convert, first: bool) -> Iterator[tuple[list[str], list]]:
    """(keys, values) a page of first_last rows [key, value, its first/last time] in key order.

    Each user's value is the one of its smallest (first) or largest (last) (time, value) pair, the
    ties rule; a user's rows may continue on the next page, so the last user of a page waits for it.
    """
    current, best_moment, best_value = None, None, None
    for rows in pages:
        keys, values = [], []
        for key, raw, moment in rows:
            if key is None or raw is None or moment is None:
                continue
            value = convert(raw)
            if key != current:
                if current is not None:
                    keys.append(current)
                    values.append(best_value)
                current, best_moment, best_value = key, moment, value
            elif ((moment, value) < (best_moment, best_value)) if first else ((moment, value) > (best_moment, best_value)):
                best_moment, best_value = moment, value
        yield keys, values
    if current is not None:
        yield [current], [best_value]


def _typed(value_type: str, values: list) -> np.ndarray:
    dtype = {"number": np.float64, "time": np.int64, "boolean": bool}.get(value_type, object)
    return np.asarray(values, dtype=dtype) if values else np.empty(0, dtype)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    """Lists of up to size items (itertools.batched, Python 3.12)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def druid_failure(exc: DruidError, settings: DruidSettings, query: dict) -> EngineError:
    """A job error a person can act on, from a failed Druid query (legacy or druidException bodies)."""
    where = f"Druid broker {settings.brokers}"
    detail = f"{exc.error_code}: {exc.message}".strip().rstrip(":")
    if exc.error_class:
        detail += f" ({exc.error_class})"
    datasource = query.get("dataSource")
    if exc.error_code == "Connection failed":
        return EngineError("backend_unavailable", f"cannot reach the {where}: {exc.message}; check that the broker "
                                                  "is up and the project's brokers setting")
    if exc.status == 504 or exc.error_code in ("Query timeout", "Timeout") or "Timeout" in str(exc.error_class):
        return EngineError("backend_timeout", f"a {query.get('queryType')} query on {datasource!r} did not finish "
                                              f"within {settings.timeout_ms} ms ({detail}); narrow the window or "
                                              "raise timeout_ms in the project's druid backend setting")
    if exc.status in (429, 503):
        return EngineError("backend_unavailable", f"the {where} is busy (HTTP {exc.status}, {detail}) and stayed so "
                                                  "after retries; retry the job later")
    if exc.status in (401, 403):
        return EngineError("backend_config", f"the {where} refused the credentials (HTTP {exc.status}, {detail}); "
                                             "set username and password in the project's druid backend setting")
    if exc.status is not None and 400 <= exc.status < 500 or exc.status == 501:
        return EngineError("backend_error", f"the {where} refused a {query.get('queryType')} query on "
                                            f"{datasource!r} (HTTP {exc.status}, {detail}); check the datasource "
                                            "and column names of the project's druid backend setting")
    return EngineError("backend_error", f"the {where} failed a {query.get('queryType')} query on {datasource!r} "
                                        f"(HTTP {exc.status}, {detail}); see the broker's logs")


__all__ = ["DruidSession", "druid_failure"]
