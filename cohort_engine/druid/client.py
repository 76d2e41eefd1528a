"""A client for a real Druid (or Sugo tindex/uindex) broker: native JSON queries over HTTP."""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import requests

from ..http import EndpointsClient

log = logging.getLogger(__name__)

QUERY_PATH = "/druid/v2/"
RETRY_STATUSES = (429, 503)
DEFAULT_PAGE_SIZE = 50_000


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


def parse_error(status: int, body) -> DruidError:
    """DruidError from an error response body, in either of Druid's error formats."""
    if isinstance(body, dict) and body.get("error") == "druidException" and "errorCode" in body:
        return DruidError(str(body["errorCode"]), str(body.get("errorMessage", "")), status,
                          category=body.get("category"), body=body)
    if isinstance(body, dict) and "error" in body:
        return DruidError(str(body["error"]), str(body.get("errorMessage") or ""), status,
                          error_class=body.get("errorClass"), host=body.get("host"), body=body)
    text = body if isinstance(body, str) else repr(body)
    return DruidError(f"HTTP {status}", text[:2000], status, body=body)


def broker_endpoints(broker: str) -> list[str]:
    """Query URLs for a broker given as a URL (query string such as ?pretty kept) or "host:port,host:port"."""
    if not isinstance(broker, str) or not broker.strip():
        raise ValueError("broker must be a URL or a comma-separated host:port list")
    endpoints = []
    for item in (part.strip() for part in broker.split(",")):
        if not item:
            continue
        if "://" not in item:
            item = "http://" + item
        parts = urlsplit(item)
        if not parts.hostname:
            raise ValueError(f"broker {item!r} has no host")
        path = parts.path.rstrip("/")
        path = (path + "/") if path.endswith("/druid/v2") else (path + QUERY_PATH)
        endpoints.append(urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")))
    if not endpoints:
        raise ValueError("broker must name at least one host")
    return endpoints


def row_event(row: dict) -> dict:
    """The event of a groupBy row, whether it says {"version": ...} (Druid) or {"v": ...} (tindex)."""
    if "event" not in row or not ("version" in row or "v" in row):
        raise DruidError("Unexpected response", f"groupBy row without version/event: {str(row)[:200]}")
    return row["event"]


class DruidClient(EndpointsClient):
    """Pooled, retrying broker client; every query carries a context.queryId so it can be cancelled."""

    def __init__(self, broker: str, *, retries: int = 3, backoff_seconds: float = 0.5, connect_timeout: float = 5.0,
                 default_timeout_ms: int = 300_000, timeout_grace_seconds: float = 1.0, pool_size: int = 8,
                 session: requests.Session | None = None):
        super().__init__(broker_endpoints(broker), pool_size=pool_size, session=session)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.connect_timeout = connect_timeout
        self.default_timeout_ms = default_timeout_ms
        self.timeout_grace_seconds = timeout_grace_seconds

    @staticmethod
    def with_query_id(query: dict, query_id: str | None = None) -> tuple[dict, str]:
        """A copy of query whose context carries queryId (the given one, the query's own, or a new one)."""
        query = copy.deepcopy(query)
        context = query.setdefault("context", {})
        if query_id is not None:
            context["queryId"] = query_id
        context.setdefault("queryId", str(uuid.uuid4()))
        return query, context["queryId"]

    def _read_timeout(self, query: dict) -> float:
        # Druid answers its own 504 at context.timeout; the grace lets that answer arrive first.
        timeout_ms = (query.get("context") or {}).get("timeout") or self.default_timeout_ms
        return float(timeout_ms) / 1000.0 + self.timeout_grace_seconds

    def _send(self, method: str, suffix: str, json_body=None, read_timeout: float = 30.0) -> requests.Response:
        """One request, retried with backoff on connection errors (trying the next host), 429 and 503."""
        attempt = 0
        while True:
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            url = endpoint if not suffix else _join(endpoint, suffix)
            try:
                response = self.session.request(method, url, json=json_body,
                                                timeout=(self.connect_timeout, read_timeout))
            except requests.ConnectionError as exc:  # includes ConnectTimeout, never a read timeout
                self._current += 1
                if attempt >= self.retries:
                    raise DruidError("Connection failed", f"{url}: {exc}") from exc
                log.warning("druid broker connection failed url=%s attempt=%d error=%s", url, attempt + 1, exc)
            except requests.Timeout as exc:
                raise DruidError("Query timeout", f"no answer from {url} within {read_timeout:.1f}s", 504) from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    return response
                log.warning("druid broker busy url=%s status=%d attempt=%d", url, response.status_code, attempt + 1)
            time.sleep(self.backoff_seconds * (2 ** attempt))
            attempt += 1

    def query(self, query: dict, query_id: str | None = None) -> list:
        """The parsed JSON result of one native query; DruidError on any failure."""
        query, query_id = self.with_query_id(query, query_id)
        response = self._send("POST", "", query, self._read_timeout(query))
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code != 200:
            raise parse_error(response.status_code, body)
        if isinstance(body, str):
            raise DruidError("Unexpected response", f"broker answered non-JSON: {body[:200]}", 200)
        return body

    def cancel(self, query_id: str) -> bool:
        """Ask the broker to cancel a running query (DELETE /druid/v2/{queryId}); True if it accepted."""
        response = self._send("DELETE", query_id, read_timeout=self.connect_timeout + 5)
        return response.status_code in (200, 202, 204)

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
                yield [row_event(r) for r in rows]
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


def _join(endpoint: str, suffix: str) -> str:
    parts = urlsplit(endpoint)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + suffix, parts.query, ""))
