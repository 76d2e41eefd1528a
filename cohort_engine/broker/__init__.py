"""A Druid-compatible broker over the embedded store: native queries in, Druid's answers out.

The dataSource names come only from the caller (a DataSources map built from configuration), and
the query types are Druid's own plus whatever a dialect passes as `query_types`. EmbeddedBroker
offers the same Broker protocol as the HTTP client (cohort_engine.druid.protocol), in-process.
"""

from __future__ import annotations

from ..druid.protocol import PagedQueries, RowParser
from .embedded import (
    DRUID_QUERY_TYPES,
    DataSources,
    DataSourceSpec,
    Plan,
    QueryTypes,
    encode,
    execute,
    guarded,
    respond,
    respond_query,
    run,
)
from .errors import BadQuery, DruidQueryError, QueryTimeout, ResourceLimitExceeded, UnknownType, Unsupported
from .limits import UNLIMITED, QueryLimits

__all__ = ["DRUID_QUERY_TYPES", "UNLIMITED", "BadQuery", "DataSourceSpec", "DataSources", "DruidQueryError",
           "EmbeddedBroker", "Plan", "QueryLimits", "QueryTimeout", "QueryTypes", "ResourceLimitExceeded",
           "UnknownType", "Unsupported", "encode", "execute", "guarded", "respond", "respond_query", "run"]


class EmbeddedBroker(PagedQueries):
    """The Broker protocol (query, cancel, paging) answered in-process from the embedded store."""

    def __init__(self, datasources: DataSources, limits: QueryLimits = UNLIMITED,
                 query_types: QueryTypes | None = None, row_parser: RowParser | None = None):
        self.datasources = datasources
        self.limits = limits
        self.query_types = query_types
        if row_parser is not None:
            self.row_parser = row_parser

    def query(self, query: dict, query_id: str | None = None) -> list:
        query, _ = self.with_query_id(query, query_id)
        return run(query, self.datasources, self.limits, self.query_types)

    def cancel(self, query_id: str) -> bool:
        """Nothing to reach: an in-process query is bounded by its context.timeout instead."""
        return False

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
