"""Sugo `/ant` user groups and tag batch updates, and the embedded `/druid/v2` broker (docs/dialects/sugo.md)."""

from core.dialects import Dialect

DIALECT = Dialect(name="sugo", blueprint="dialects.sugo.views:bp")
