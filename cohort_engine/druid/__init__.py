"""Druid: a native-query executor over the embedded store, and a broker client for real clusters."""

from .embedded import DEFAULT_DATASOURCES, DataSources, DataSourceSpec, execute, run, user_group_uids
from .errors import BadQuery, DruidQueryError, QueryTimeout, Unsupported

__all__ = ["DEFAULT_DATASOURCES", "BadQuery", "DataSourceSpec", "DataSources", "DruidQueryError", "QueryTimeout",
           "Unsupported", "execute", "run", "user_group_uids"]
