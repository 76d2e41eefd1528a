"""A Session over a Druid cluster: leaf queries sent over HTTP, answers paged, user keys encoded in bulk."""

from __future__ import annotations

import logging
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
from .queries import ETERNITY, Catalog, LeafQueries
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
                numeric = dim.get("outputType") == "LONG"
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

    def _counted(self, query: dict, leaf: dict, zero_passes: bool) -> BitMap:
        """count_distinct / days: rows per user counted here, in key order, one page in memory."""
        key_at = 1 if leaf["agg"]["fn"] == "days" else 0
        cmp, values = leaf["cmp"], leaf["values"]
        picked: list[str] = []
        current, count = None, 0
        bitmap = BitMap()

        def settle(key, n):
            if key is not None and holds(n, cmp, values) != zero_passes:
                picked.append(key)

        for rows in self._pages(query):
            for row in rows:
                key = row[key_at]
                if key != current:
                    settle(current, count)
                    current, count = key, 0
                count += 1
            if picked:
                bitmap |= to_bitmap(self._encode(picked))
                picked.clear()
        settle(current, count)
        if picked:
            bitmap |= to_bitmap(self._encode(picked))
        return self.universe() - bitmap if zero_passes else bitmap

    def _encode(self, keys: list[str]) -> np.ndarray:
        """uint32 ids of user keys (new keys get ids), in bulk."""
        with db.connection(self.config.database_url) as conn:
            return UserKeyDictionary(conn, self.project.id).encode(keys)


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
