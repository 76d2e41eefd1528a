"""Sugo hproxy batch-update client: writes tag values for many primary keys, 1000 rows a request.

A row is `{"values": {column: value, ..., <primaryColumn>: id}, "appendFlags": {column: bool}}`;
hproxy answers each request `{"success": N, "failed": M, "errors": [...]}`. Column prefixes give
types (i_ l_ f_ p_ d_ s_), and an `m` before them marks a multi-value column, sent comma-joined.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import requests

from cohort_engine.http import EndpointsClient, endpoint_urls

log = logging.getLogger(__name__)

BATCH_ROWS = 1000
BATCH_PATH = "/druid/proxy/batchupdate/"
MULTI_VALUE_PREFIXES = ("mi_", "ml_", "mf_", "mp_", "md_", "ms_")
# Worth another try: the request may not have reached hproxy, or hproxy said it is busy or broken.
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_ERRORS_KEPT = 100
# After this many batches in a row fail, hproxy is taken to be down and the remaining rows are not sent.
MAX_CONSECUTIVE_FAILED_BATCHES = 3


class HproxyError(Exception):
    """A batch hproxy did not take, after its retries."""


def is_multi_value(column: str) -> bool:
    return column.startswith(MULTI_VALUE_PREFIXES)


def cell(column: str, value):
    """A value as hproxy takes it: multi-value columns comma-joined, everything else unchanged."""
    if is_multi_value(column) and isinstance(value, (list, tuple)):
        return ",".join("" if v is None else str(v) for v in value)
    return value


def hproxy_endpoints(target: str, data_source: str) -> list[str]:
    """Batch-update URLs from a full URL or from a comma-separated host:port list (path filled in)."""
    return endpoint_urls(target, "hproxy", lambda path: path if path not in ("", "/") else BATCH_PATH + data_source)


def batches(rows: Iterable[dict], size: int = BATCH_ROWS) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class HproxyClient(EndpointsClient):
    """Posts row batches to hproxy, retrying a failed batch with backoff on the next host."""

    def __init__(self, target: str, data_source: str, *, retries: int = 3, backoff_seconds: float = 0.5,
                 timeout_seconds: float = 120.0, connect_timeout: float = 5.0, session: requests.Session | None = None):
        super().__init__(hproxy_endpoints(target, data_source), pool_size=4, session=session)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout = (connect_timeout, timeout_seconds)

    def post_batch(self, rows: list[dict]) -> tuple[dict, int]:
        """hproxy's answer to one batch and the attempts it took; HproxyError once retries are spent."""
        attempt = 0
        while True:
            url = self.endpoints[self._current % len(self.endpoints)]
            attempt += 1
            try:
                response = self.session.post(url, json=rows, timeout=self.timeout)
            except requests.RequestException as exc:
                self._current += 1
                problem = f"{url}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    answer = _answer(response)
                    if answer is not None:
                        return answer, attempt
                    problem = f"{url}: answered 200 without a success/failed count: {response.text[:200]!r}"
                else:
                    problem = f"{url}: HTTP {response.status_code}: {response.text[:300]}"
                    if response.status_code not in RETRY_STATUSES:
                        raise HproxyError(problem + " (not retried)")
            if attempt > self.retries:
                raise HproxyError(f"{problem} (after {attempt} attempts)")
            log.warning("hproxy batch failed attempt=%d rows=%d problem=%s", attempt, len(rows), problem)
            time.sleep(self.backoff_seconds * 2 ** (attempt - 1))

    def update(self, rows: Iterable[dict], primary_column: str, batch_rows: int = BATCH_ROWS,
               on_batch: Callable[[int], None] | None = None) -> dict:
        """Send rows in batches; hproxy's answers summed, with failed batches reported in errors.

        A batch that still fails after its retries counts all its rows as failed and names them
        (first and last primary key), so the caller knows what was and was not written.
        """
        success = failed = 0
        errors: list = []
        dropped_errors = 0
        failed_in_a_row = 0
        pending = batches(rows, batch_rows)
        for number, batch in enumerate(pending):
            try:
                answer, _attempts = self.post_batch(batch)
            except HproxyError as exc:
                failed_in_a_row += 1
                failed += len(batch)
                errors.append({
                    "batch": number, "rows": len(batch), "written": 0, "notWritten": len(batch),
                    "firstKey": batch[0]["values"].get(primary_column),
                    "lastKey": batch[-1]["values"].get(primary_column),
                    "error": str(exc)})
                if failed_in_a_row >= MAX_CONSECUTIVE_FAILED_BATCHES:
                    rest = sum(len(b) for b in pending)
                    if rest:
                        failed += rest
                        errors.append({"batch": number + 1, "rows": rest, "written": 0, "notWritten": rest,
                                       "error": f"not sent: {failed_in_a_row} batches in a row failed, "
                                                "so hproxy is taken to be down"})
                    break
            else:
                failed_in_a_row = 0
                success += answer["success"]
                failed += answer["failed"]
                for item in answer["errors"]:
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append(item)
                    else:
                        dropped_errors += 1
            if on_batch is not None:
                on_batch(number + 1)
        if dropped_errors:
            errors.append(f"{dropped_errors} more errors reported by hproxy were left out")
        return {"success": success, "failed": failed, "errors": errors}


def _answer(response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    success, failed = body.get("success"), body.get("failed", 0)
    if not isinstance(success, int) or not isinstance(failed, int):
        return None
    errors = body.get("errors") or []
    return {"success": success, "failed": failed, "errors": errors if isinstance(errors, list) else [errors]}
