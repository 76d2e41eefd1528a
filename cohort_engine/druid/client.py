"""A client for a real Druid broker (or one speaking its protocol): native JSON queries over HTTP."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import requests

from ..gcpause import gc_paused
from ..http import EndpointsClient, endpoint_urls
from .protocol import DruidError, PagedQueries, RowParser

__all__ = ["DruidClient", "DruidError", "broker_endpoints", "parse_body", "parse_error"]

log = logging.getLogger(__name__)

QUERY_PATH = "/druid/v2/"
RETRY_STATUSES = (429, 503)


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


def parse_body(response: requests.Response):
    """The JSON of a response, or its text when it is not JSON.

    Parsed from the bytes: requests' own .json() first guesses the text encoding of a body with no
    charset by scanning it, which took longer than parsing a 250,000-key answer.
    """
    try:
        with gc_paused():
            return json.loads(response.content)
    except ValueError:  # includes UnicodeDecodeError
        return response.text


def broker_endpoints(broker: str) -> list[str]:
    """Query URLs for a broker given as a URL (query string such as ?pretty kept) or "host:port,host:port"."""
    return endpoint_urls(broker, "broker", _query_path)


def _query_path(path: str) -> str:
    path = path.rstrip("/")
    return (path + "/") if path.endswith("/druid/v2") else (path + QUERY_PATH)


class DruidClient(EndpointsClient, PagedQueries):
    """Pooled, retrying broker client (a protocol.Broker); every query carries a context.queryId so it can be cancelled."""

    def __init__(self, broker: str, *, retries: int = 3, backoff_seconds: float = 0.5, connect_timeout: float = 5.0,
                 default_timeout_ms: int = 300_000, timeout_grace_seconds: float = 1.0, pool_size: int = 8,
                 session: requests.Session | None = None, row_parser: RowParser | None = None):
        super().__init__(broker_endpoints(broker), pool_size=pool_size, session=session)
        if row_parser is not None:
            self.row_parser = row_parser
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.connect_timeout = connect_timeout
        self.default_timeout_ms = default_timeout_ms
        self.timeout_grace_seconds = timeout_grace_seconds

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
        body = parse_body(response)
        if response.status_code != 200:
            raise parse_error(response.status_code, body)
        if isinstance(body, str):
            raise DruidError("Unexpected response", f"broker answered non-JSON: {body[:200]}", 200)
        return body

    def cancel(self, query_id: str) -> bool:
        """Ask the broker to cancel a running query (DELETE /druid/v2/{queryId}); True if it accepted."""
        response = self._send("DELETE", query_id, read_timeout=self.connect_timeout + 5)
        return response.status_code in (200, 202, 204)


def _join(endpoint: str, suffix: str) -> str:
    parts = urlsplit(endpoint)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + suffix, parts.query, ""))
