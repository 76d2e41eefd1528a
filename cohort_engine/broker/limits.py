"""Resource limits of one embedded Druid query, and the checks on a query's JSON before any work.

Limits answer Druid's `Resource limit exceeded` (HTTP 400) and the timeout Druid's `Query timeout`
(504); each is checked as early as it can be known (docs/druid.md "Limits").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .errors import BadQuery, QueryTimeout, ResourceLimitExceeded
from .times import JAVA_LONG_MAX


@dataclass(frozen=True)
class QueryLimits:
    """What one query may cost; None is no limit (the library default, used by jobs)."""

    max_buckets: int | None = 1_000_000  # time buckets a timeseries zero-fills
    max_rows: int | None = None  # result rows (groupBy rows, topN entries, scan events, ids)
    max_response_bytes: int | None = None  # the JSON body
    timeout_ms: int | None = None  # caps context.timeout; also the timeout when the query names none
    max_depth: int = 64  # JSON nesting of the query (arrays and objects)


UNLIMITED = QueryLimits()


def exceeded(what: str, limit: int, setting: str, hint: str) -> ResourceLimitExceeded:
    return ResourceLimitExceeded(f"{what}, more than the limit of {limit} ({setting}); {hint}")


def check_shape(value, max_depth: int) -> None:
    """Refuse nesting deeper than max_depth and strings that cannot be UTF-8 (lone surrogates)."""
    # Iterative, so a 100,000-deep body costs no Python stack.
    stack = [(value, 1, "query")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadQuery(f"{path}: a string holds a lone surrogate (not valid Unicode)") from None
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            where = path if len(path) <= 120 else f"{path[:60]}...{path[-40:]}"
            raise exceeded(f"{where}: the query nests deeper than {max_depth} levels", max_depth,
                           "max_depth, COHORTS_DRUID_MAX_DEPTH", "flatten nested and/or/not filters")
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth + 1, path))
                stack.append((child, depth + 1, f"{path}.{key}"))
        else:
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))


def context_timeout_ms(context: dict, limits: QueryLimits) -> float | None:
    """The query's timeout in ms: context.timeout (0 = none), capped by limits.timeout_ms."""
    raw = context.get("timeout")
    asked = None
    if raw is not None:
        if isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise BadQuery(f"context.timeout {raw!r} is not a number of milliseconds") from None
        if (isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= JAVA_LONG_MAX
                or isinstance(raw, float) and not math.isfinite(raw)):
            raise BadQuery(f"context.timeout must be a number of milliseconds from 0 to {JAVA_LONG_MAX} (a long)")
        asked = raw or None
    cap = limits.timeout_ms
    if cap is None:
        return asked
    return cap if asked is None else min(asked, cap)


class Deadline:
    """When a query must end; checked between the phases DuckDB's interrupt does not cover."""

    def __init__(self, timeout_ms: float | None, query_id=""):
        self.timeout_ms = timeout_ms
        self.query_id = query_id
        self.at = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0

    def remaining(self) -> float | None:
        """Seconds left (at least 0), or None without a timeout."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def check(self) -> None:
        if self.at is not None and time.monotonic() >= self.at:
            raise self.timeout()

    def timeout(self) -> QueryTimeout:
        return QueryTimeout(f"Query [{self.query_id}] timed out after {self.timeout_ms:g} ms.")
