"""Druid: a native-query executor over the embedded store, and a broker client for real clusters."""

from .embedded import (
           DEFAULT_DATASOURCES,
           DataSources,
           DataSourceSpec,
           encode,
           execute,
           respond,
           respond_query,
           run,
           user_group_uids,
)
from .errors import BadQuery, DruidQueryError, QueryTimeout, ResourceLimitExceeded, UnknownType, Unsupported
from .limits import UNLIMITED, QueryLimits

__all__ = ["DEFAULT_DATASOURCES", "UNLIMITED", "BadQuery", "DataSourceSpec", "DataSources", "DruidQueryError",
           "QueryLimits", "QueryTimeout", "ResourceLimitExceeded", "UnknownType", "Unsupported", "encode", "execute",
           "respond", "respond_query", "run", "user_group_uids"]
