"""The broker protocol: what a Druid-compatible broker offers its callers, over HTTP or in-process.

Both the HTTP client (client.DruidClient) and the in-process broker over the embedded store
(cohort_engine.broker.EmbeddedBroker) implement Broker; PagedQueries adds groupBy/scan paging on
top of any `query`. Rows are read by a row parser, so a dialect's row shapes (Sugo tindex's
{"v": ...}: dialects/sugo/broker_queries.py) stay with the dialect.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

DEFAULT_PAGE_SIZE = 50_000

RowParser = Callable[[dict], dict]


class DruidError(Exception):
    """A failed broker query: Druid's error code (legacy `error` or newer `errorCode`) and message."""

    def __init__(self, error_code: str, message: str, status: int | None = None, error_class: str | None = None,
                 category: str | None = None, host: str | None = None, body=None):
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message
        self.status = status
        self.error_class = error_class
        self.category = category
        self.host = host
        self.body = body


class Broker(Protocol):
    """A Druid broker: native queries in, result rows out; a running query can be cancelled by its id."""

    def query(self, query: dict, query_id: str | None = None) -> list: ...

    def cancel(self, query_id: str) -> bool: ...

    def close(self) -> None: ...


def with_query_id(query: dict, query_id: str | None = None) -> tuple[dict, str]:
    """A copy of query whose context carries queryId (the given one, the query's own, or a new one)."""
    query = copy.deepcopy(query)
    context = query.setdefault("context", {})
    if query_id is not None:
        context["queryId"] = query_id
    context.setdefault("queryId", str(uuid.uuid4()))
    return query, context["queryId"]


def row_event(row: dict) -> dict:
    """The event of a Druid groupBy row ({"version": ..., "event": {...}})."""
    if "event" not in row or "version" not in row:
        raise DruidError("Unexpected response", f"groupBy row without version/event: {str(row)[:200]}")
    return row["event"]


class PagedQueries:
    """groupBy and scan results in pages, over the `query` of a Broker."""

    row_parser: RowParser = staticmethod(row_event)
    with_query_id = staticmethod(with_query_id)

    def query(self, query: dict, query_id: str | None = None) -> list:
        raise NotImplementedError

    def iter_group_by(self, query: dict, page_size: int = DEFAULT_PAGE_SIZE,
                      query_id: str | None = None) -> Iterator[list[dict]]:
        """Pages of groupBy events (row["event"]), fetched with limitSpec limit/offset.

        Pages are consistent only under a total order, so the dimensions are appended to the
        limitSpec's ordering columns; the query's own limit and offset still bound the whole.
        """
        query, query_id = self.with_query_id(query, query_id)
        spec = dict(query.get("limitSpec") or {"type": "default"})
        columns = list(spec.get("columns") or [])
        named = {c if isinstance(c, str) else c.get("dimension") for c in columns}
        for dim in query.get("dimensions") or []:
            name = dim if isinstance(dim, str) else (dim.get("outputName") or dim.get("dimension"))
            if name not in named:
                columns.append({"dimension": name})
        total = spec.get("limit")
        offset = spec.get("offset") or 0
        fetched = 0
        while total is None or fetched < total:
            size = page_size if total is None else min(page_size, total - fetched)
            page_query = dict(query, limitSpec=dict(spec, type="default", columns=columns, limit=size,
                                                    offset=offset + fetched))
            rows = self.query(page_query, query_id)
            if rows:
                yield [self.row_parser(r) for r in rows]
            fetched += len(rows)
            if len(rows) < size:
                return

    def iter_scan(self, query: dict, page_size: int = DEFAULT_PAGE_SIZE,
                  query_id: str | None = None) -> Iterator[list]:
        """Pages of scan events, fetched with limit/offset (the query's own limit/offset bound the whole)."""
        query, query_id = self.with_query_id(query, query_id)
        total = query.get("limit")
        offset = query.get("offset") or 0
        fetched = 0
        while total is None or fetched < total:
            size = page_size if total is None else min(page_size, total - fetched)
            batches = self.query(dict(query, limit=size, offset=offset + fetched), query_id)
            events = [e for batch in batches for e in batch.get("events", [])]
            if events:
                yield events
            fetched += len(events)
            if len(events) < size:
                return
